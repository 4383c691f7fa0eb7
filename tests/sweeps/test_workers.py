"""``--workers K``: worker processes share one study and one MLflow parent run; --trials is a total."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.sweeps.processes import alive
from tests.checks import (
    assert_grid_ran_every_cell_once,
    frozen_in_a_trial,
    has_completed,
    running_trials,
    wait_for,
    worker_pid,
)
from tests.conftest import TINY
from tests.storages import SweepStorage, storages

runner = CliRunner()


def test_two_workers_share_one_study_and_one_parent_run(tmp_path: Path, sentiment_dir: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", "sentiment", "--trials", "6", "--workers", "2", "--sampler", "random",
                                 "--data-dir", str(sentiment_dir), "--store-dir", str(store), "--set", "epochs=3", *TINY])
    assert result.exit_code == 0, result.output
    study = SweepStorage.of_store(store).study("sentiment-random")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 6 <= len(finished) <= 7  # a total across workers (7 only if both asked for the last trial at once)
    assert len(finished) == len(study.trials)  # nothing failed, nothing left running
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(study.trials)  # each its own configuration

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeplab-sentiment").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags["sweeplab.role"] == "sweep"]
    children = [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert study.user_attrs["sweeplab.parent_run_id"] == parents[0].info.run_id
    assert len(children) == len(finished)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(int(c.data.tags["sweeplab.trial"]) for c in children) == sorted(t.number for t in finished)
    assert sorted((store / "workers").glob("worker-*.log")) == [store / "workers" / "worker-0.log", store / "workers" / "worker-1.log"]


@storages("journal", "postgresql")
def test_three_workers_run_every_cell_of_the_24_cell_grid_exactly_once(
        sweep_storage: SweepStorage, tmp_path: Path, sentiment_dir: Path, request: pytest.FixtureRequest) -> None:
    """Three workers share the grid's cells through the storage's atomic queue: every cell runs
    once, and each has one finished MLflow run under the one parent. On the journal file beside a
    local store (the default); on PostgreSQL as on a cluster, where the MLflow tracking server keeps
    its runs in PostgreSQL too and nothing is written to the local store."""
    store = tmp_path / "store"
    if sweep_storage.kind == "journal":  # the store's own journal and tracking database, no flags
        where, tracking = [], f"sqlite:///{store / 'mlflow.db'}"
    else:
        tracking = request.getfixturevalue("mlflow_server")(request.getfixturevalue("postgres_db")())
        where = ["--storage", sweep_storage.spec, "--tracking-uri", tracking]
    result = runner.invoke(app, ["run", "sentiment", "--trials", "24", "--workers", "3", "--sampler", "grid",
                                 "--pruner", "none", "--data-dir", str(sentiment_dir), "--store-dir", str(store),
                                 *where, "--set", "epochs=2", *TINY])
    assert result.exit_code == 0, result.output
    assert_grid_ran_every_cell_once(sweep_storage.study("sentiment-grid"), MlflowClient(tracking), "sweeplab-sentiment", 24)
    if sweep_storage.kind != "journal":
        assert not (store / "optuna.journal").exists() and not (store / "mlflow.db").exists()


def test_a_worker_killed_mid_trial_is_replaced_and_the_total_still_reached(tmp_path: Path, sentiment_dir: Path) -> None:
    """SIGKILL one of two workers while it runs a trial: the other worker fails that trial (its
    process is gone), runs its parameters again, and the sweep ends with the requested total; the
    killed trial's MLflow run is closed as KILLED."""
    store = tmp_path / "store"
    storage = SweepStorage.of_store(store)
    # Trials of 100 epochs (about 3 s on a CPU): stopped in one (SIGSTOP), a worker cannot end it before the kill.
    main = subprocess.Popen(_two_workers(8, sentiment_dir, store, epochs=100), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        victim = wait_for("a worker stopped in a trial after another trial completed", lambda: frozen_in_a_trial(
            storage, "sentiment-random") if has_completed(storage, "sentiment-random") else None, alive=main)
        os.kill(worker_pid(victim), signal.SIGKILL)
        try:
            out, err = main.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            states = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in storage.study("sentiment-random").trials]
            logs = {p.name: p.read_text()[-1500:] for p in (store / "workers").glob("*.log")}
            raise AssertionError(f"the sweep did not end after the kill of trial {victim.number}: {states} {logs}") from None
        assert main.returncode == 0, err.decode()[-3000:]
    finally:
        if main.poll() is None:
            main.kill()
    assert "was killed by SIGKILL" in " ".join(out.decode().split())  # the main process says so
    assert "a replacement was started" in " ".join(out.decode().split())

    study = storage.study("sentiment-random")
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == "killed: its process ended"
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params  # its configuration ran to the end
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) in (8, 9)  # 9 only if both asked at once
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    experiment = client.get_experiment_by_name("sweeplab-sentiment").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


def test_killing_the_main_process_interrupts_its_workers(tmp_path: Path, sentiment_dir: Path) -> None:
    """SIGKILL the main process while both workers run trials: the workers stop at once (they do
    not train on unseen), each closing its trial as interrupted in Optuna and MLflow. The sweep is
    started with SIGINT ignored, as a shell starts `sweep run ... &`, which its workers inherit."""
    store = tmp_path / "store"
    storage = SweepStorage.of_store(store)
    main = subprocess.Popen(_two_workers(6, sentiment_dir, store, epochs=100000), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        running = wait_for("two trials running with their runs", lambda: _both_running(storage), alive=main)
        main.kill()
        main.wait(timeout=30)
        workers = {worker_pid(t) for t in running}
        wait_for("the workers to stop after their main process was killed",
                 lambda: True if not any(alive(pid) for pid in workers) else None, seconds=60,
                 detail=lambda: f"still running: {sorted(pid for pid in workers if alive(pid))}")
    finally:
        if main.poll() is None:
            main.kill()
    study = storage.study("sentiment-random")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for trial in (study.trials[t.number] for t in running):
        logs = [log.read_text()[-2500:] for log in (store / "workers").glob("*.log")]
        assert trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == "interrupted", (trial.user_attrs, logs)
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["sweeplab.state"] == "killed"


def _two_workers(trials: int, data: Path, store: Path, epochs: int) -> list[str]:
    """``sweep run`` with two workers, tiny models and ``epochs`` a trial (long trials to kill)."""
    return [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", str(trials), "--workers", "2", "--sampler",
            "random", "--pruner", "none", "--no-early-stop", "--data-dir", str(data), "--store-dir", str(store),
            "--no-plots", "--set", f"epochs={epochs}", *TINY]


def _both_running(storage: SweepStorage) -> list | None:
    """Two running trials of the sweep (one per worker), once there are; None before."""
    running = running_trials(storage, "sentiment-random")
    return running[:2] if len(running) >= 2 else None
