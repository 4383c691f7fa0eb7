"""Sweeps on PostgreSQL: Optuna's RDB storage and an MLflow tracking server whose backend store is
PostgreSQL, both on a real server (``SWEEPLAB_TEST_POSTGRES``; .ci/run starts one). Without one,
these tests skip and say why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.errors import UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.storage import open_optuna_storage
from tests.checks import assert_grid_ran_every_cell_once, wait_for
from tests.conftest import TINY

runner = CliRunner()


def test_three_workers_run_the_24_cell_grid_once_on_postgres_and_a_server(
    postgres_db: Callable[[], str], mlflow_server: Callable[..., str], tmp_path: Path, sentiment_dir: Path
) -> None:
    storage = postgres_db()
    server = mlflow_server(postgres_db())  # the server's runs in a database of their own
    result = runner.invoke(app, ["run", "sentiment", "--trials", "24", "--workers", "3", "--sampler", "grid",
                                 "--pruner", "none", "--data-dir", str(sentiment_dir), "--storage", storage,
                                 "--tracking-uri", server, "--store-dir", str(tmp_path / "local"),
                                 "--set", "epochs=2", *TINY])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="sentiment-grid", storage=storage.replace("postgresql://", "postgresql+psycopg://"))
    assert_grid_ran_every_cell_once(study, MlflowClient(server), "sweeplab-sentiment", 24)
    assert not (tmp_path / "local" / "optuna.journal").exists() and not (tmp_path / "local" / "mlflow.db").exists()


def _running_trial_of(study_name: str, storage: str, pid: int) -> optuna.trial.FrozenTrial | None:
    """The RUNNING trial of process ``pid`` once its MLflow run exists, else None."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if str(trial.user_attrs.get("worker", "")).endswith(f":{pid}") and "mlflow_run_id" in trial.user_attrs:
            return trial
    return None


def _frozen_in_a_trial(pid: int, study_name: str, storage: str) -> optuna.trial.FrozenTrial | None:
    """Stop process ``pid`` (SIGSTOP) while it runs a trial and return that trial, which then
    cannot end before the test is done with it; None (the process resumed) if it runs none."""
    if _running_trial_of(study_name, storage, pid) is None:
        return None
    os.kill(pid, signal.SIGSTOP)
    trial = _running_trial_of(study_name, storage, pid)
    if trial is None:  # it finished its trial just before it was stopped
        os.kill(pid, signal.SIGCONT)
    return trial



def test_a_worker_killed_on_another_machine_is_failed_by_heartbeat_and_its_trial_run_again(
    postgres_db: Callable[[], str], tmp_path: Path, sentiment_dir: Path
) -> None:
    """Two `sweep run` commands join one study on PostgreSQL, as on two machines. One is killed
    with SIGKILL mid-trial; the other, already past its start-up recovery, finds the silent trial
    by its missing heartbeats, closes its MLflow run as KILLED and runs its parameters again."""
    storage = postgres_db()
    optuna_uri = storage.replace("postgresql://", "postgresql+psycopg://")
    store = tmp_path / "store"
    command = [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", "80", "--sampler", "random",
               "--pruner", "none", "--storage", storage, "--heartbeat", "1", "--store-dir", str(store),
               "--data-dir", str(sentiment_dir), "--set", "epochs=6", "--no-plots", *TINY]
    env = {**os.environ, "SWEEPLAB_THREADS": "1"}
    survivor = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    victim = None
    try:
        wait_for("a first finished trial", lambda: next(iter(optuna.load_study(
            study_name="sentiment-random", storage=optuna_uri).get_trials(states=(TrialState.COMPLETE,))), None)
            if _study_exists(optuna_uri) else None)
        victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        killed = wait_for("a running trial of the second process, frozen",
                           lambda: _frozen_in_a_trial(victim.pid, "sentiment-random", optuna_uri))
        # As if it ran on another machine: the survivor cannot look its process up, only miss its heartbeats.
        study = optuna.load_study(study_name="sentiment-random", storage=optuna_uri)
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

    study = optuna.load_study(study_name="sentiment-random", storage=optuna_uri)
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


def _study_exists(storage: str) -> bool:
    return any(s.study_name == "sentiment-random" for s in optuna.get_all_study_summaries(storage))


def test_processes_opening_a_new_database_at_the_same_moment_all_get_the_storage(postgres_db: Callable[[], str]) -> None:
    """Machines started together on a fresh database each create Optuna's tables; PostgreSQL
    refuses all but one (optuna#1092), and the others open it again once the tables exist."""
    storage = postgres_db()
    barrier = threading.Barrier(6)
    errors: list[str] = []

    def open_at_once() -> None:
        barrier.wait()
        try:
            open_optuna_storage(storage)
        except UsageError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=open_at_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
