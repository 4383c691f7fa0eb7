"""Assertions several tests make about a finished sweep's records, and waiting for a sweep in
another process to reach a moment (a trial running, and its process stopped there)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tests/conftest.py imports this module in every session: no MLflow or Optuna for it
    import optuna
    from mlflow import MlflowClient

    from tests.storages import SweepStorage


def assert_grid_ran_every_cell_once(study: optuna.Study, client: MlflowClient, experiment: str, cells: int) -> None:
    """``cells`` distinct complete trials and nothing else in Optuna; one parent run with exactly
    one FINISHED complete child run per trial in MLflow."""
    import optuna

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


def wait_for(what: str, probe: Callable[[], Any], seconds: float = 180, every: float = 0.2,
             alive: subprocess.Popen | None = None, detail: Callable[[], str] | None = None) -> Any:
    """The first value of ``probe()`` that is not None, polled every ``every`` seconds (a moment
    in another process: a trial running, a server answering); an AssertionError naming ``what``
    after ``seconds``, or as soon as the process ``alive`` has ended without the moment coming
    (a sweep that crashed is not waited on for minutes). ``detail()`` (a log's tail) is added to
    the error."""
    deadline = time.monotonic() + seconds
    while True:
        if (found := probe()) is not None:
            return found
        if alive is not None and alive.poll() is not None:
            why = f"the process ended (exit {alive.returncode}) before {what}"
        elif time.monotonic() >= deadline:
            why = f"timed out waiting for {what}"
        else:
            time.sleep(every)
            continue
        raise AssertionError(f"{why}\n{detail()}" if detail else why)


def running_trials(storage: SweepStorage, study: str) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials of ``study`` whose process has opened their MLflow run (the trial is
    under way, not just asked for); none before the sweep has made the study."""
    from optuna.trial import TrialState

    if not storage.has_study(study):
        return []
    return [t for t in storage.study(study).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "mlflow_run_id" in t.user_attrs]


def has_completed(storage: SweepStorage, study: str) -> bool:
    """Whether a trial of ``study`` has completed (false before the sweep has made the study)."""
    from optuna.trial import TrialState

    return storage.has_study(study) and bool(storage.study(study).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    """The pid of the process that runs ``trial`` (its ``worker`` attribute is ``host:pid``)."""
    return int(str(trial.user_attrs["worker"]).rpartition(":")[2])


def frozen_in_a_trial(storage: SweepStorage, study: str, pid: int | None = None) -> optuna.trial.FrozenTrial | None:
    """Stop (SIGSTOP) the process of a running trial of ``study`` (of process ``pid``, or any) and
    return that trial, which then cannot end before the test is done with it; None, every process
    resumed, when none runs one or each finished its trial just before it was stopped (for
    :func:`wait_for`)."""
    from optuna.trial import TrialState

    for trial in running_trials(storage, study):
        if pid is not None and worker_pid(trial) != pid:
            continue
        os.kill(worker_pid(trial), signal.SIGSTOP)
        if storage.study(study).trials[trial.number].state == TrialState.RUNNING:
            return trial
        os.kill(worker_pid(trial), signal.SIGCONT)
    return None


class MemoryStore:
    """A trial's resume store in memory, each save a serialised copy (as the store's file holds)."""

    def __init__(self) -> None:
        self.saved: bytes | None = None
        self.saves = 0

    def load(self) -> Any:
        import torch

        return None if self.saved is None else torch.load(io.BytesIO(self.saved), weights_only=False)

    def save(self, state: Any) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.saved, self.saves = buffer.getvalue(), self.saves + 1
