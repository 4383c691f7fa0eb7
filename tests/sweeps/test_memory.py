"""Memory is given back between trials: each trial's run records the memory in use when it
started, and that figure stays flat from trial to trial, failed trials included."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from sweeplab.core import FitResult, Loaded, Reporter, TrialEnv
from sweeplab.trainers.loop import fit
from tests.fake_tasks import Replay, make_task, sweep_task

WEIGHTS_MIB = 128


class _Heavy(Replay):
    """A trainer holding 128 MiB of weights, copied again in each snapshot of its best epoch;
    ``fail`` makes it raise in its second epoch (the traceback then holds it)."""

    def __init__(self, epochs: int, fail: bool) -> None:
        super().__init__(epochs)
        self.weights = torch.ones(WEIGHTS_MIB * 2**20 // 4)
        self.fail = fail

    def train_round(self) -> tuple[int, float]:
        self.weights += 1  # touch every page, so that it is resident
        if self.fail and self.epoch == 1:
            raise RuntimeError("a bug in the trainer")
        return super().train_round()

    def snapshot(self) -> dict:
        return {"weights": self.weights.clone()}


def _fit_heavy(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    return fit(_Heavy(3, fail=env.trial_seed % 3 == 2), 3, reporter, "val_accuracy")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc (Linux)")
def test_resident_memory_does_not_grow_from_trial_to_trial(tmp_path: Path) -> None:
    outcome = sweep_task(make_task("heavy", _fit_heavy), tmp_path, 6, pruner="none", checkpoints="none")
    assert outcome.counts["complete"] == 6 and outcome.counts["failed"] == 2
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("heavy").experiment_id], "tags.`sweeplab.role` = 'trial'")
    start = {int(r.data.tags["sweeplab.trial"]): r.data.metrics["memory_host_mb_start"] for r in runs}
    assert sorted(start) == list(range(8))
    # Each trial peaks at two copies of its weights; kept from one trial to the next, they would
    # add at least WEIGHTS_MIB per trial.
    growth = max(start[n] for n in range(2, 8)) - start[1]
    assert growth < WEIGHTS_MIB / 2, start
