"""Trials whose process was killed are found (by process, zombies and reused pids included, or by
heartbeat), failed once, their MLflow run closed as KILLED, and their parameters run again once
without the dead attempt's attributes; grid cells are queued again within bounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.grid_cells import is_duplicate_cell, requeue_killed_grid_cells
from sweeplab.sweeps.heartbeats import trial_heartbeat
from sweeplab.sweeps.processes import alive, worker_attrs
from sweeplab.sweeps.recovery import KilledTrials, close_runs_of_ended_trials, fail_dead_trials
from sweeplab.tracker.runs import SweepRecorder
from tests.checks import wait_for
from tests.storages import SweepStorage, storages

_DIST = optuna.distributions.CategoricalDistribution([1, 2, 3, 4])


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _attrs_of(pid: int, started: str | None = None, machine: str | None = None) -> dict[str, str]:
    """The worker attributes a trial of process ``pid`` records: of this host, boot and pid
    namespace unless ``machine`` says otherwise, started when this process did unless ``started``."""
    own_machine, _, own_start = worker_attrs()["worker_process"].rpartition(" ")
    process = f"{own_machine if machine is None else machine} {own_start if started is None else started}"
    return {"worker": f"{socket.gethostname()}:{pid}", "worker_process": process}


def _running_trial(study: optuna.Study, value: int, user_attrs: dict) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with one parameter, one reported value and the given attributes."""
    study.enqueue_trial({"b": value})
    trial = study.ask()
    trial.suggest_categorical("b", _DIST.choices)
    trial.report(0.5, 1)
    for key, attr in user_attrs.items():
        trial.set_user_attr(key, attr)
    return optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial))


def _set_user_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: object) -> None:
    """Write a trial's attribute as its (other) process would, straight to the storage."""
    optuna_private.storage_of(study).set_trial_user_attr(optuna_private.trial_id(trial), key, value)


def test_a_zombie_counts_as_dead_and_a_live_process_as_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert alive(process.pid)
        process.kill()
        # Not reaped yet: the process is a zombie, which os.kill(pid, 0) alone takes for alive.
        wait_for("the killed process to count as dead", lambda: True if not alive(process.pid) else None,
                 seconds=10, every=0.05)
        assert process.poll() is not None  # and it was a zombie until now
    finally:
        process.kill()
        process.wait()
    assert not alive(_dead_pid())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times are read from /proc (Linux)")
def test_a_new_process_that_reuses_a_pid_is_not_taken_for_the_dead_one() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def start_time() -> str | None:
            """Its start time, once the process has its own /proc entry (not the parent's, copied at fork)."""
            started = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[19]
            return started if alive(process.pid, started) else None

        started = wait_for("the process's own start time", start_time, seconds=10, every=0.01)
        assert not alive(process.pid, str(int(started) - 1))  # the pid now belongs to another process
    finally:
        process.kill()
        process.wait()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the RDB storage: the test asks outside optimize
@storages("journal", "sqlite")  # fail_dead_trials judges the journal (sweeplab's heartbeats) and an RDB storage apart
def test_a_dead_local_trial_is_failed_once_its_run_closed_and_its_parameters_queued_again(
        tmp_path: Path, sweep_storage: SweepStorage) -> None:
    client_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SweepRecorder.open(client_uri, "exp", (tmp_path / "artifacts").as_uri(), "s", {}, {})
    run = recorder.start_trial(0, {"b": 2}, {})
    run.log_point(1, {"val_accuracy": 0.5})
    run.flush()
    study = optuna.create_study(study_name="s", storage=sweep_storage.open())
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _running_trial(study, 2, {**_attrs_of(_dead_pid()), "mlflow_run_id": run.run_id, "note": "kept"})
        alive = _running_trial(study, 3, _attrs_of(helper.pid, started=""))  # no start time: the pid alone decides
        mine = _running_trial(study, 4, _attrs_of(os.getpid()))  # this process runs no trial between trials
        # Same host name and pid namespace number, another machine (containers with one --hostname):
        # its pids mean nothing here.
        elsewhere = _running_trial(study, 1, _attrs_of(_dead_pid(), machine=f"another-boot {worker_attrs()['worker_process'].split(' ')[1]}"))
        killed = KilledTrials(heartbeat=60)
        killed.recorder = recorder

        assert fail_dead_trials(study, killed) == 2
        assert fail_dead_trials(study, killed) == 0  # already handled: nothing twice
    finally:
        helper.kill()
        helper.wait()
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == states[mine.number] == TrialState.FAIL
    assert states[alive.number] == states[elsewhere.number] == TrialState.RUNNING  # alive; heartbeating elsewhere
    assert study.trials[dead.number].user_attrs["fail_reason"] == "killed: its process ended"

    stored = MlflowClient(client_uri).get_run(run.run_id)
    assert stored.info.status == "KILLED" and stored.data.tags["sweeplab.fail_reason"] == "killed: its process ended"
    assert [m.value for m in MlflowClient(client_uri).get_metric_history(run.run_id, "val_accuracy")] == [0.5]

    retries = {t.system_attrs["failed_trial"]: t for t in study.get_trials(states=(TrialState.WAITING,))}
    assert sorted(retries) == sorted([dead.number, mine.number])
    retry = retries[dead.number]
    assert retry.params == {"b": 2}
    assert retry.intermediate_values == {1: 0.5}  # one trial to the pruner: it goes on from the dead attempt's state
    assert retry.user_attrs == {"note": "kept", "previous_run": run.run_id}  # not the dead worker, its run or its reason
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2


@storages("journal")  # an RDB storage keeps its own heartbeats (Optuna judges them)
def test_a_trial_of_another_machine_on_the_journal_is_failed_once_its_heartbeat_stands_still_for_twice_its_interval(
        sweep_storage: SweepStorage) -> None:
    study = optuna.create_study(storage=sweep_storage.open())
    beating = _running_trial(study, 1, {"worker": "another-host:7", "heartbeat": 0, "heartbeat_seconds": 0.05})
    silent = _running_trial(study, 2, {"worker": "another-host:8", "heartbeat": 5, "heartbeat_seconds": 0.05})
    slow = _running_trial(study, 3, {"worker": "another-host:9", "heartbeat": 5, "heartbeat_seconds": 60})
    never = _running_trial(study, 4, {})  # killed before it recorded its process: judged by this reader's interval
    killed = KilledTrials(heartbeat=10)
    assert fail_dead_trials(study, killed) == 0  # the first look only notes each beat: no clocks are compared
    time.sleep(0.2)  # no event to await: the time passing is what is judged
    _set_user_attr(study, beating, "heartbeat", 1)
    assert fail_dead_trials(study, killed) == 1
    running = {t.number for t in study.get_trials(states=(TrialState.RUNNING,))}
    assert running == {beating.number, slow.number, never.number}  # each judged by its own interval
    assert study.trials[silent.number].user_attrs["fail_reason"] == "killed: no heartbeat from its worker for 0.1 s"


@storages("journal")  # sweeplab's own heartbeats are for the journal file
def test_trial_heartbeat_counts_on_the_journal_while_the_block_runs_and_stops_after(sweep_storage: SweepStorage) -> None:
    study = optuna.create_study(storage=sweep_storage.open())
    trial = _running_trial(study, 1, {})

    def beat() -> object:
        return _attrs_now(study, trial).get("heartbeat")

    with trial_heartbeat(study, optuna_private.trial_id(trial), 0.02):
        wait_for("three heartbeats", lambda: True if (beat() or 0) >= 3 else None, seconds=10, every=0.01)
    assert _attrs_now(study, trial)["heartbeat_seconds"] == 0.02
    stopped = beat()
    time.sleep(0.1)  # five intervals without a beat: that nothing comes has no event to await
    assert beat() == stopped


def _attrs_now(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    """The trial's user attributes as the storage holds them now."""
    return optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)).user_attrs


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the test asks outside optimize
@storages("sqlite", "postgresql")  # the orphan rule is for RDB storages; each database keeps the trial's start its own way
def test_on_an_rdb_storage_a_trial_that_never_recorded_its_process_is_failed_after_the_orphan_delay(
    sweep_storage: SweepStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = optuna.create_study(storage=sweep_storage.open())
    _running_trial(study, 1, {})
    killed = KilledTrials(heartbeat=60)
    assert fail_dead_trials(study, killed) == 0  # just asked for: its process is about to record itself
    monkeypatch.setattr("sweeplab.sweeps.recovery.ORPHAN_SECONDS", -1)  # as if the delay had passed
    assert fail_dead_trials(study, killed) == 1
    assert study.trials[0].user_attrs["fail_reason"] == "killed: its process ended before the trial began"


def _add(study: optuna.Study, value: float, state: str, reason: str | None = None) -> None:
    dist = optuna.distributions.FloatDistribution(0.0, 10.0)
    study.add_trial(optuna.trial.create_trial(params={"lr": value}, distributions={"lr": dist},
                                              state=TrialState[state], value=1.0 if state == "COMPLETE" else None,
                                              user_attrs={"fail_reason": reason} if reason else {}))


def test_killed_or_interrupted_grid_cells_are_queued_again_at_start_up_and_failed_ones_are_not() -> None:
    study = optuna.create_study()
    _add(study, 1, "COMPLETE")
    _add(study, 2, "FAIL", "killed: its process ended")
    _add(study, 3, "FAIL", "Diverged: nan")
    _add(study, 4, "FAIL", "interrupted")
    _add(study, 5, "FAIL", "killed: its process ended")
    _add(study, 5, "FAIL", None)  # its retry, failed by Optuna for want of heartbeats
    _add(study, 6, "FAIL", "interrupted")
    _add(study, 6, "FAIL", "out of memory: OutOfMemoryError")  # then it failed on its own
    _add(study, 7, "FAIL", "killed: its process ended")
    study.enqueue_trial({"lr": 7})  # its retry, already queued
    assert requeue_killed_grid_cells(study) == 3
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["fixed_params"]["lr"] for t in waiting) == [2, 4, 5, 7]
    assert requeue_killed_grid_cells(study) == 0  # already queued


def test_of_two_copies_of_a_queued_cell_taken_at_once_only_the_lower_numbered_runs() -> None:
    study = optuna.create_study()
    _add(study, 1, "COMPLETE")
    _add(study, 2, "FAIL", "killed: its process ended")
    study.enqueue_trial({"lr": 1})  # as an int: the same cell as the float 1.0 that ran
    study.enqueue_trial({"lr": 3})
    study.enqueue_trial({"lr": 3})  # queued twice by two processes that started at once
    study.enqueue_trial({"lr": 2})  # the retry of a killed cell: not a duplicate
    ids = [optuna_private.pop_waiting_trial_id(study) for _ in range(4)]  # every copy taken, as by four workers
    assert [is_duplicate_cell(study, i) for i in ids] == [True, False, True, False]


def test_only_runs_of_ended_trials_are_closed(tmp_path: Path) -> None:
    """A run left RUNNING by a trial that has ended is closed as KILLED; the run of a live trial,
    and a run its own process closed meanwhile, are left as they are."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SweepRecorder.open(uri, "exp", (tmp_path / "artifacts").as_uri(), "s", {}, {})
    study = optuna.create_study(study_name="s")
    live = _running_trial(study, 1, {})
    ended = _running_trial(study, 2, {})
    done = _running_trial(study, 3, {})
    closed_by_owner = _running_trial(study, 4, {})
    trials = (live, ended, done, closed_by_owner)
    runs = {t.number: recorder.start_trial(t.number, {"b": t.number}, {}) for t in trials}
    optuna_private.storage_of(study).set_trial_state_values(optuna_private.trial_id(ended), state=TrialState.FAIL)
    study.tell(done.number, 1.0)  # its process told Optuna, then was killed before closing the run
    runs[closed_by_owner.number].close("complete")
    study.tell(closed_by_owner.number, 1.0)

    assert close_runs_of_ended_trials(study, recorder) == 2
    client = MlflowClient(uri)
    stored = {n: client.get_run(r.run_id) for n, r in runs.items()}
    assert {n: r.info.status for n, r in stored.items()} == {
        live.number: "RUNNING", ended.number: "KILLED", done.number: "FINISHED", closed_by_owner.number: "FINISHED"}
    assert stored[done.number].data.tags["sweeplab.state"] == "complete"  # the state Optuna recorded
    assert close_runs_of_ended_trials(study, recorder) == 0


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_killed_trial_is_run_again_up_to_max_retries_times(max_retries: int) -> None:
    study = optuna.create_study()
    killed = KilledTrials(heartbeat=60, max_retries=max_retries)
    trial = study.ask({"b": optuna.distributions.IntDistribution(1, 3)})
    while True:  # every attempt is killed
        storage = optuna_private.storage_of(study)
        storage.set_trial_state_values(optuna_private.trial_id(trial), state=TrialState.FAIL)
        killed(study, storage.get_trial(optuna_private.trial_id(trial)))
        if not study.get_trials(states=(TrialState.WAITING,)):
            break
        trial = study.ask()
        assert trial.params == study.trials[0].params
    assert len(study.trials) == 1 + max_retries  # --max-retries 0: a killed trial stays killed
