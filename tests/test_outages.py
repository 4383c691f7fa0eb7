"""Outages ridden out: the PostgreSQL server behind the Optuna storage is stopped or restarted
while a trial runs, and the tracking server is killed for 20 s; the sweep completes without a
rerun, the trial that was running is COMPLETE, and no MLflow run is left RUNNING. An outage longer
than ``--outage-limit`` stops the sweep with one line (exit 75), and the same command resumes it.

The PostgreSQL tests need the server ``.ci/run`` starts (``SWEEPLAB_TEST_POSTGRES`` and
``SWEEPLAB_TEST_POSTGRES_CTL``, its pg_ctl); without it they skip and say why."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeplab.core import FitResult, Loaded, Reporter, TrialEnv
from sweeplab.errors import Unreachable
from sweeplab.trainers.loop import fit
from tests.checks import wait_for
from tests.conftest import TINY, answers, free_port
from tests.fake_tasks import Replay, make_task, sweep_task
from tests.storages import SweepStorage, storages

CTL_ENV = "SWEEPLAB_TEST_POSTGRES_CTL"


@pytest.fixture()
def pg_ctl(postgres_db: Callable[[], str]) -> Iterator[Callable[[str], None]]:
    """``pg_ctl`` of the test server (``"-m fast restart"``, ``"-m fast stop"``, ``"start"``);
    the server is started again after the test whatever happened."""
    command = os.environ.get(CTL_ENV)
    if not command:
        pytest.skip(f"{CTL_ENV} is not set: the test cannot stop and start the PostgreSQL server (.ci/run sets it)")

    def ctl(action: str) -> None:
        subprocess.run([*shlex.split(command), *action.split()], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    try:
        yield ctl
    finally:
        subprocess.run([*shlex.split(command), "start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class _Heard(logging.Handler):
    """Sets an event when sweeplab says a store is unreachable (so the test awaits the retrying)."""

    def __init__(self) -> None:
        super().__init__()
        self.retrying = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "unreachable" in record.getMessage():
            self.retrying.set()



def _no_running_runs(tracking_uri: str, experiment: str) -> None:
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'")


@storages("postgresql")
def test_a_database_outage_mid_trial_is_ridden_out_and_the_trial_completes(
        sweep_storage: SweepStorage, pg_ctl: Callable[[str], None], tmp_path: Path) -> None:
    """One process. While trial 1 trains, PostgreSQL stops; the trial's next report to Optuna
    waits (the test hears sweeplab say so), the server starts again, and the sweep goes on: all
    three trials COMPLETE, none failed or run twice, no run left RUNNING."""
    paused, resume = threading.Event(), threading.Event()

    def fit_with_outage(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        class Paused(Replay):
            def train_round(self) -> tuple[int, float]:
                if env.trial_seed == 1 and self.epoch == 2 and not paused.is_set():
                    paused.set()
                    assert resume.wait(120)
                return super().train_round()

        return fit(Paused(5), 5, reporter, "val_accuracy")

    heard = _Heard()
    logging.getLogger("sweeplab").addHandler(heard)
    outcome: dict[str, Any] = {}
    sweep = threading.Thread(target=lambda: outcome.update(result=sweep_task(
        make_task("db-outage", fit_with_outage), tmp_path, 3, storage=sweep_storage.spec, pruner="median", heartbeat=60)))
    try:
        sweep.start()
        assert paused.wait(120), "trial 1 never reached its second epoch"
        pg_ctl("-m fast stop")
        resume.set()
        assert heard.retrying.wait(60), "sweeplab never said the storage was unreachable"
        pg_ctl("start")
        sweep.join(180)
    finally:
        resume.set()
        logging.getLogger("sweeplab").removeHandler(heard)
    assert not sweep.is_alive() and "result" in outcome
    assert outcome["result"].counts["complete"] == 3 and outcome["result"].counts["failed"] == 0
    study = sweep_storage.study(outcome["result"].study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len(study.trials[1].intermediate_values) == 4  # every report but the last evaluation's (see _Reporter)
    _no_running_runs(outcome["result"].tracking_uri, "db-outage")


def _sentiment(store: Path, storage: str | None, data: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", str(trials), "--sampler", "random",
            "--pruner", "none", "--no-early-stop", "--store-dir", str(store), "--data-dir", str(data), "--no-plots",
            *(["--storage", storage] if storage else []), "--set", "epochs=12", *TINY, *extra]


def _running_trials(storage: SweepStorage) -> list[optuna.trial.FrozenTrial] | None:
    """The sweep's running trials once there are some and every one has opened its MLflow run."""
    study = storage.study("sentiment-random") if storage.has_study("sentiment-random") else None
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []
    return running if running and all("mlflow_run_id" in t.user_attrs for t in running) else None


@storages("postgresql")
def test_a_database_restart_under_two_workers_is_ridden_out(
        sweep_storage: SweepStorage, pg_ctl: Callable[[str], None], tmp_path: Path, sentiment_dir: Path) -> None:
    """`--workers 2` on PostgreSQL; the server restarts (``pg_ctl restart -m fast``) while trials
    run. The main process's progress loop and both workers reconnect: exit 0 with no rerun, the
    trials that were running are COMPLETE, nothing failed, no run RUNNING."""
    store = tmp_path / "store"
    process = subprocess.Popen(_sentiment(store, sweep_storage.spec, sentiment_dir, 4, "--workers", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        running = wait_for("trials running with their runs", lambda: _running_trials(sweep_storage), alive=process)
        pg_ctl("-m fast restart")
        _, err = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err.decode()[-3000:]
    study = sweep_storage.study("sentiment-random")
    states = {t.number: t.state for t in study.trials}
    assert all(states[t.number] == TrialState.COMPLETE for t in running)
    assert TrialState.FAIL not in states.values() and TrialState.RUNNING not in states.values()
    _no_running_runs(f"sqlite:///{store / 'mlflow.db'}", "sweeplab-sentiment")


@storages("postgresql")
def test_an_outage_longer_than_the_limit_stops_with_one_line_and_the_same_command_resumes(
        sweep_storage: SweepStorage, pg_ctl: Callable[[str], None], tmp_path: Path, sentiment_dir: Path) -> None:
    """PostgreSQL stops mid-trial and stays away past ``--outage-limit 3``: the sweep exits 75 with
    one line naming the Optuna storage and leaves no run RUNNING; once the server is back the same
    command completes the sweep."""
    store = tmp_path / "store"
    command = _sentiment(store, sweep_storage.spec, sentiment_dir, 3, "--outage-limit", "3")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("a running trial", lambda: _running_trials(sweep_storage), alive=process)
        pg_ctl("-m fast stop")
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    pg_ctl("start")  # not in the finally: after a failure the pg_ctl fixture starts it, and a second start would hide why
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("sweeplab:")]
    assert process.returncode == 75, err[-3000:]
    assert len(lines) == 1 and "Optuna storage" in lines[0] and "stayed unreachable" in lines[0], err[-3000:]
    _no_running_runs(f"sqlite:///{store / 'mlflow.db'}", "sweeplab-sentiment")
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = sweep_storage.study("sentiment-random")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    _no_running_runs(f"sqlite:///{store / 'mlflow.db'}", "sweeplab-sentiment")


def test_a_tracking_server_killed_for_20_seconds_mid_sweep_is_ridden_out(tmp_path: Path, sentiment_dir: Path) -> None:
    """The MLflow tracking server is killed while a trial runs and started again on the same port
    20 s later: the sweep exits 0 without a rerun, every trial is COMPLETE and no run is RUNNING."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "sweeplab", "server", "--store-dir", str(tmp_path / "server"), "--port", str(port)]

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for("the tracking server", lambda: True if answers(uri) else None, 120, alive=server)
        return server

    server = start_server()
    process = None
    try:
        process = subprocess.Popen(_sentiment(tmp_path / "local", None, sentiment_dir, 3, "--tracking-uri", uri),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(uri)
        wait_for("a running trial's run", lambda: _a_running_child(client), alive=process)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        time.sleep(20)  # the outage itself: its length is what the test is about
        server = start_server()
        _, err = process.communicate(timeout=400)
        assert process.returncode == 0, err[-3000:]
        experiment = client.get_experiment_by_name("sweeplab-sentiment").experiment_id
        children = client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'")
        assert len(children) == 3 and all(r.data.tags["sweeplab.state"] == "complete" for r in children)
        assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        os.killpg(server.pid, signal.SIGKILL)


def _a_running_child(client: MlflowClient) -> bool | None:
    experiment = client.get_experiment_by_name("sweeplab-sentiment")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.`sweeplab.role` = 'trial' and attributes.status = 'RUNNING'")
    return True if runs else None


@storages("postgresql")
def test_a_trial_that_finished_training_during_a_long_outage_is_kept_not_run_again(
        sweep_storage: SweepStorage, pg_ctl: Callable[[str], None], tmp_path: Path) -> None:
    """PostgreSQL stops just as trial 0 finishes training and stays away past ``--outage-limit``:
    the sweep stops with Unreachable, the trial's run is closed complete with the value Optuna
    could not take, and the rerun tells Optuna that value instead of training the trial again."""
    def fit_then_outage(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        result = fit(Replay(3), 3, reporter, "val_accuracy")
        if env.trial_seed == 0 and not stopped:
            stopped.append(True)
            pg_ctl("-m fast stop")
        return result

    stopped: list[bool] = []
    task = make_task("untold", fit_then_outage)
    with pytest.raises(Unreachable, match="the Optuna storage .* stayed unreachable"):
        sweep_task(task, tmp_path, 2, storage=sweep_storage.spec, pruner="none", outage_limit=2)
    pg_ctl("start")
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("untold").experiment_id
    [run] = client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'")
    assert run.info.status == "FINISHED" and run.data.tags["sweeplab.state"] == "complete"
    assert float(run.data.tags["sweeplab.untold_value"]) == run.data.metrics["best_val_accuracy"]

    outcome = sweep_task(task, tmp_path, 2, storage=sweep_storage.spec, pruner="none")
    study = sweep_storage.study(outcome.study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # trial 0 told from its run, not failed and rerun
    assert study.trials[0].value == run.data.metrics["best_val_accuracy"]
    assert len(client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'")) == 2
    _no_running_runs(outcome.tracking_uri, "untold")
