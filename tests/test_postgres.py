"""Sweeps on PostgreSQL, as on several machines: heartbeats between processes that cannot see each
other, and machines started together on a fresh database. They need a real server
(``SWEEPLAB_TEST_POSTGRES``; .ci/run starts one); without one, they skip and say why. Scenarios
that run on every storage (the 24-cell grid under three workers, with an MLflow tracking server on
PostgreSQL too) are parametrised over the storages where they live (tests/sweeps/test_workers.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeplab.errors import UsageError
from sweeplab.sweeps import optuna_private
from tests.checks import frozen_in_a_trial, has_completed, wait_for
from tests.conftest import TINY
from tests.storages import SweepStorage, storages


@storages("postgresql")  # heartbeats between machines: an RDB storage on a server both can reach
def test_a_worker_killed_on_another_machine_is_failed_by_heartbeat_and_its_trial_run_again(
    sweep_storage: SweepStorage, tmp_path: Path, sentiment_dir: Path
) -> None:
    """Two `sweep run` commands join one study on PostgreSQL, as on two machines. One is killed
    with SIGKILL mid-trial; the other, already past its start-up recovery, finds the silent trial
    by its missing heartbeats, closes its MLflow run as KILLED and runs its parameters again."""
    store = tmp_path / "store"
    command = [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", "80", "--sampler", "random",
               "--pruner", "none", "--storage", sweep_storage.spec, "--heartbeat", "1", "--store-dir", str(store),
               "--data-dir", str(sentiment_dir), "--set", "epochs=6", "--no-plots", *TINY]
    env = {**os.environ, "SWEEPLAB_THREADS": "1"}
    survivor = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    victim = None
    try:
        wait_for("a first finished trial", lambda: True if has_completed(sweep_storage, "sentiment-random") else None,
                 alive=survivor)
        victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        killed = wait_for("a running trial of the second process, frozen",
                          lambda: frozen_in_a_trial(sweep_storage, "sentiment-random", victim.pid), alive=victim)
        # As if it ran on another machine: the survivor cannot look its process up, only miss its heartbeats.
        study = sweep_storage.study("sentiment-random")
        optuna_private.storage_of(study).set_trial_user_attr(optuna_private.trial_id(killed), "worker",
                                                             f"another-machine:{victim.pid}")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        _, err = survivor.communicate(timeout=300)
        assert survivor.returncode == 0, err.decode()[-3000:]
    finally:
        for process in (survivor, victim):
            if process is not None and process.poll() is None:
                process.kill()

    study = sweep_storage.study("sentiment-random")
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 80
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "no heartbeat" in run.data.tags["sweeplab.fail_reason"]
    experiment = client.get_experiment_by_name("sweeplab-sentiment").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


@storages("postgresql")  # optuna#1092: PostgreSQL's catalog refuses tables made at the same moment
def test_processes_opening_a_new_database_at_the_same_moment_all_get_the_storage(sweep_storage: SweepStorage) -> None:
    """Machines started together on a fresh database each create Optuna's tables; PostgreSQL
    refuses all but one (optuna#1092), and the others open it again once the tables exist."""
    barrier = threading.Barrier(6)
    errors: list[str] = []

    def open_at_once() -> None:
        barrier.wait()
        try:
            sweep_storage.open()
        except UsageError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=open_at_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
