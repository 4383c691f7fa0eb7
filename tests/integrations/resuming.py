"""What the two integrations' resume tests share (with :class:`tests.checks.MemoryStore`, a resume
store in memory): a reporter that hears every evaluation, and a one-trial sweep interrupted (as
Ctrl-C does) and run again."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import sweeplab


class Heard:
    """Stands in for the sweep behind sweeplab's ``report`` (a :class:`~sweeplab.trainers.loop.Progress`):
    hears each evaluation, prunes none."""

    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        return False


def interrupted_and_retried(fit: Callable[..., Any], tmp_path: Path) -> tuple[MlflowClient, Any]:
    """Sweep ``fit`` (one trial, its resume state saved at every evaluation): its first attempt
    raises ``KeyboardInterrupt`` (Ctrl-C), and the same sweep run again retries it. Returns the
    store's client and the retry's run."""
    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.005]\n", encoding="utf-8")
    options: dict[str, Any] = {"space": tmp_path / "space.toml", "trials": 1, "sampler": "grid", "pruner": "none",
                               "early_stop": False, "plots": False, "checkpoint_minutes": 1e-12}
    with pytest.raises(KeyboardInterrupt):
        sweeplab.run(fit, **options)
    outcome = sweeplab.run(fit, **options)
    assert outcome.counts["complete"] == 1
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    experiment = client.get_experiment_by_name(outcome.experiment)
    interrupted, retry = client.search_runs([experiment.experiment_id], "tags.`sweeplab.role` = 'trial'",
                                            order_by=["attributes.start_time"])
    assert interrupted.data.tags["sweeplab.fail_reason"] == "interrupted"
    assert retry.data.tags["sweeplab.retry_of"] == interrupted.info.run_id
    return client, retry
