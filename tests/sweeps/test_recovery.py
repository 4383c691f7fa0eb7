"""Trials whose process was killed are found (by pid, including zombies), failed once, their MLflow
run closed as KILLED, and their parameters run again once without the dead worker's attributes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeplab.sweeps.recovery import (KilledTrials, _alive, close_runs_of_ended_trials, fail_dead_local_trials,
                                      requeue_killed_grid_cells)
from sweeplab.tracker.runs import SweepRecorder

_DIST = optuna.distributions.CategoricalDistribution([1, 2, 3, 4])


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_zombie_counts_as_dead_and_a_live_process_as_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _alive(process.pid)
        process.kill()
        # Not reaped yet: the process is a zombie, which os.kill(pid, 0) alone takes for alive.
        deadline = time.monotonic() + 10
        while _alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(process.pid)
        assert process.poll() is not None  # and it was a zombie until now
    finally:
        process.kill()
        process.wait()
    assert not _alive(_dead_pid())


def _running_trial(study: optuna.Study, value: int, user_attrs: dict) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with one parameter, one reported value and the given attributes."""
    study.enqueue_trial({"b": value})
    trial = study.ask()
    trial.suggest_categorical("b", _DIST.choices)
    trial.report(0.5, 1)
    for key, attr in user_attrs.items():
        trial.set_user_attr(key, attr)
    return study._storage.get_trial(trial._trial_id)


def test_a_dead_local_trial_is_failed_once_its_run_closed_and_its_parameters_queued_again(tmp_path: Path) -> None:
    client_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SweepRecorder.open(client_uri, "exp", (tmp_path / "artifacts").as_uri(), "s", {}, {})
    run = recorder.start_trial(0, {"b": 2}, {})
    run.log_point(1, {"val_accuracy": 0.5})
    run.flush()
    study = optuna.create_study(study_name="s")
    host = socket.gethostname()
    dead = _running_trial(study, 2, {"worker": f"{host}:{_dead_pid()}", "mlflow_run_id": run.run_id, "note": "kept"})
    alive = _running_trial(study, 3, {"worker": f"{host}:{os.getpid()}"})
    elsewhere = _running_trial(study, 4, {"worker": f"another-host:{_dead_pid()}"})
    killed = KilledTrials(heartbeat=60)
    killed.recorder = recorder

    assert fail_dead_local_trials(study, killed) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[elsewhere.number] == TrialState.RUNNING  # other hosts: heartbeats' job
    assert study.trials[dead.number].user_attrs["fail_reason"] == "killed: its process ended"

    stored = MlflowClient(client_uri).get_run(run.run_id)
    assert stored.info.status == "KILLED" and stored.data.tags["sweeplab.fail_reason"] == "killed: its process ended"
    assert [m.value for m in MlflowClient(client_uri).get_metric_history(run.run_id, "val_accuracy")] == [0.5]

    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == {"b": 2} and retry.system_attrs["failed_trial"] == dead.number
    assert retry.intermediate_values == {1: 0.5}  # the partial curve Optuna had
    assert retry.user_attrs == {"note": "kept"}  # not the dead worker, its run or its reason

    assert fail_dead_local_trials(study, killed) == 0  # already handled: nothing twice
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_trial_that_never_got_a_worker_is_failed_only_after_the_orphan_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study()
    _running_trial(study, 1, {})
    assert fail_dead_local_trials(study) == 0  # just asked for: its process is about to record itself
    monkeypatch.setattr("sweeplab.sweeps.recovery.ORPHAN_SECONDS", -1)  # as if the delay had passed
    assert fail_dead_local_trials(study) == 1
    assert study.trials[0].user_attrs["fail_reason"] == "killed: its process ended before the trial began"


def test_killed_grid_cells_are_queued_again_but_failed_ones_are_not() -> None:
    study = optuna.create_study()
    for value, state, reason in ((1, "COMPLETE", None), (2, "FAIL", "killed: its process ended"),
                                 (3, "FAIL", "Diverged: nan"), (4, "FAIL", "interrupted")):
        trial = optuna.trial.create_trial(params={"b": value}, distributions={"b": _DIST},
                                          state=TrialState[state], value=1.0 if state == "COMPLETE" else None,
                                          user_attrs={"fail_reason": reason} if reason else {})
        study.add_trial(trial)
    assert requeue_killed_grid_cells(study) == 2
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["fixed_params"]["b"] for t in waiting) == [2, 4]
    assert requeue_killed_grid_cells(study) == 0  # already queued


def test_only_runs_of_ended_trials_are_closed(tmp_path: Path) -> None:
    """A run left RUNNING by a trial that has ended is closed as KILLED; the run of a live trial,
    and a run its own process closed meanwhile, are left as they are."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SweepRecorder.open(uri, "exp", (tmp_path / "artifacts").as_uri(), "s", {}, {})
    study = optuna.create_study(study_name="s")
    live = _running_trial(study, 1, {})
    ended = _running_trial(study, 2, {})
    done = _running_trial(study, 3, {})
    runs = {t.number: recorder.start_trial(t.number, {"b": t.number}, {}) for t in (live, ended, done)}
    study._storage.set_trial_state_values(ended._trial_id, state=TrialState.FAIL)
    runs[done.number].close("complete")
    study.tell(done.number, 1.0)

    assert close_runs_of_ended_trials(study, recorder) == 1
    client = MlflowClient(uri)
    status = {n: client.get_run(r.run_id).info.status for n, r in runs.items()}
    assert status == {live.number: "RUNNING", ended.number: "KILLED", done.number: "FINISHED"}
    assert close_runs_of_ended_trials(study, recorder) == 0
