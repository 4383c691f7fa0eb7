"""Assertions several tests make about a finished sweep's records, and waiting for a sweep in
another process to reach a moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from mlflow import MlflowClient


def assert_grid_ran_every_cell_once(study: optuna.Study, client: MlflowClient, experiment: str, cells: int) -> None:
    """``cells`` distinct complete trials and nothing else in Optuna; one parent run with exactly
    one FINISHED complete child run per trial in MLflow."""
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * cells  # no errors, none left over
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == cells  # every cell, none twice
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2  # the work was shared

    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags["sweeplab.role"] == "sweep"]
    children = [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(c.data.tags["sweeplab.trial"]) for c in children) == sorted(t.number for t in study.trials)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" and c.data.tags["sweeplab.state"] == "complete" for c in children)


def wait_for(what: str, probe: Callable[[], Any], seconds: float = 180) -> Any:
    """The first value of ``probe()`` that is not None, polled every 0.2 s (a moment in another
    process: a trial running, a server answering); an AssertionError naming ``what`` after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
