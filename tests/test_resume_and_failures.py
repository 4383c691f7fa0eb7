"""Never lose data: a killed sweep resumes; a failing trial is recorded and the sweep goes on."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.sweeps import optuna_private
from sweeplab.trainers.loop import fit
from tests.checks import wait_for
from tests.conftest import TINY
from tests.fake_tasks import Replay, make_task, sweep_task
from tests.storages import SweepStorage

runner = CliRunner()


def _children(store: Path, experiment: str = "sweeplab-sentiment") -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`sweeplab.role` = 'trial'", max_results=100)


def _progress(db: Path) -> tuple[int, int]:
    """(finished runs, running runs with at least one curve point), read straight from the SQLite
    file, read-only (an MlflowClient would try to create the schema while the sweep process is
    creating it)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            finished = con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
            running = con.execute(
                "select count(distinct r.run_uuid) from runs r join metrics m on m.run_uuid = r.run_uuid "
                "where r.status = 'RUNNING' and m.key = 'val_accuracy'"
            ).fetchone()[0]
            return finished, running
    except sqlite3.Error:
        return 0, 0


def test_sigkill_mid_trial_then_rerun_completes_and_loses_nothing(tmp_path: Path, sentiment_dir: Path) -> None:
    store = tmp_path / "store"
    # Trials of 100 epochs (about 3 s on a CPU): the second and third give the kill a window of seconds.
    command = [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", "3", "--data-dir", str(sentiment_dir),
               "--store-dir", str(store), "--pruner", "none", "--no-early-stop", "--set", "epochs=100", *TINY]
    log = tmp_path / "first-run.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("a finished and a running trial at once", lambda: True if min(_progress(store / "mlflow.db")) >= 1
                 else None, 240, alive=process, detail=lambda: log.read_text()[-3000:])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    finished_before = {r.info.run_id for r in _children(store) if r.info.status == "FINISHED"}
    during = _status(store)
    assert during["status"] == "RUNNING" and during["counts"]["running"] >= 1 and during["counts"]["complete"] >= 1

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    runs = _children(store)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert finished_before <= {r.info.run_id for r in runs}  # nothing completed was lost
    states = sorted(r.data.tags["sweeplab.state"] for r in runs)
    assert states.count("complete") == 3 and states.count("killed") == 1
    killed = next(r for r in runs if r.data.tags["sweeplab.state"] == "killed")
    assert killed.info.status == "KILLED" and len(MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_metric_history(
        killed.info.run_id, "val_accuracy")) >= 1  # its partial curve is kept
    study = SweepStorage.of_store(store).study("sentiment-tpe")
    counts = {s: sum(1 for t in study.trials if t.state == s) for s in optuna.trial.TrialState}
    assert counts[optuna.trial.TrialState.COMPLETE] == 3 and counts[optuna.trial.TrialState.FAIL] == 1
    assert counts[optuna.trial.TrialState.RUNNING] == 0
    killed_trial = int(killed.data.tags["sweeplab.trial"])
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == study.trials[killed_trial].params
    after = _status(store)
    assert after["status"] == "FINISHED" and after["target"] == 3
    assert after["counts"] == {"complete": 3, "pruned": 0, "failed": 0, "killed": 0, "running": 0}  # the killed one, retried
    assert study.user_attrs["sweeplab.parent_run_id"] == after["run_id"]  # later workers join this parent


def _status(store: Path) -> dict:
    """``sweep status --json`` of the store's one sweep."""
    result = CliRunner().invoke(app, ["status", "--json", "--store-dir", str(store)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    return rows[0]


class _NanAt(Replay):
    """A rising curve whose training loss becomes NaN at epoch ``at``."""

    def __init__(self, epochs: int, at: int) -> None:
        super().__init__(epochs)
        self.at = at

    def train_round(self) -> tuple[int, float]:
        epoch, loss = super().train_round()
        return epoch, float("nan") if epoch >= self.at else loss


class _HostOom(Replay):
    """Asks the CPU allocator for a petabyte in its first round."""

    def train_round(self) -> tuple[int, float]:
        __import__("torch").empty(2**50, dtype=__import__("torch").uint8)
        return super().train_round()


def _flaky_task() -> Task:
    """Trial 1's loss is NaN from the start, trial 2 runs out of host memory, trial 3 out of GPU
    memory, and trial 4's loss becomes NaN after two good epochs; the others replay a rising curve."""

    def fit_flaky(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        number = env.trial_seed  # seed 0: the trial number
        if number == 3:
            raise __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        trainer = {1: _NanAt(3, at=1), 2: _HostOom(3), 4: _NanAt(3, at=3)}.get(number, Replay(3))
        return fit(trainer, 3, reporter, "val_accuracy")

    return make_task("flaky", fit_flaky)


def test_failed_trials_carry_their_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    outcome = sweep_task(_flaky_task(), tmp_path, 4, pruner="none")
    assert outcome.counts["complete"] == 4 and outcome.counts["failed"] == 3
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name("flaky")
    runs = {int(r.data.tags["sweeplab.trial"]): r for r in client.search_runs([exp.experiment_id], "tags.`sweeplab.role` = 'trial'")}
    reasons = {n: r.data.tags.get("sweeplab.fail_reason") for n, r in runs.items()}
    assert reasons[1] == "Diverged: training loss is nan at step 1"
    assert reasons[2].startswith("out of memory: RuntimeError") and "can't allocate memory" in reasons[2]
    assert reasons[3].startswith("out of memory: OutOfMemoryError: CUDA out of memory")
    assert {runs[n].info.status for n in (1, 2, 3)} == {"FAILED"}
    # NaN after good epochs: the trial keeps its best epoch and says why it stopped
    assert runs[4].info.status == "FINISHED" and runs[4].data.tags["sweeplab.stopped"] == "diverged"
    assert runs[4].data.tags["sweeplab.stop_reason"] == "training loss is nan at step 3"
    assert runs[4].data.metrics["best_epoch"] == 2
    assert len(runs) == 7


def test_a_missing_model_stops_the_sweep_with_exit_2(tmp_path: Path, sentiment_dir: Path) -> None:
    result = runner.invoke(app, ["run", "sentiment", "--data-dir", str(sentiment_dir), "--store-dir", str(tmp_path / "s"),
                                 "--set", "text_model=/no/such/model", "--set", "image_model=tiny", "--trials", "4"])
    assert result.exit_code == 2
    assert "text model '/no/such/model' cannot be loaded offline" in result.output.replace("\n", "")
    assert len(_children(tmp_path / "s")) == 1  # stopped after the first trial, not four


def test_grid_sampler_walks_every_cell_once(tmp_path: Path, sentiment_dir: Path) -> None:
    result = runner.invoke(app, ["run", "sentiment", "--space", "sentiment-refine", "--sampler", "grid", "--trials", "9",
                                 "--data-dir", str(sentiment_dir), "--store-dir", str(tmp_path / "s"), "--pruner", "none",
                                 "--set", "epochs=1", "--set", "batch_size=16", *TINY])
    assert result.exit_code == 0, result.output
    lrs = sorted(float(r.data.params["lr"]) for r in _children(tmp_path / "s"))
    assert lrs == [8e-6, 9e-6, 1e-5, 1.1e-5, 1.2e-5]  # 5 cells: the grid ends the sweep early


def _lagging_task() -> Task:
    """Trials 0-2 climb to 0.9; later trials stay at 0.05, far behind the median."""

    class Lagging(Replay):
        def __init__(self, epochs: int, scale: float) -> None:
            super().__init__(epochs)
            self.scale = scale

        def evaluate(self) -> Evaluation:
            return Evaluation({"val_loss": 1.0 / self.epoch, "val_accuracy": self.scale * self.epoch / 10})

    def fit_lagging(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        return fit(Lagging(9, 1.0 if env.trial_seed < 3 else 0.05), 9, reporter, "val_accuracy")

    return make_task("lagging", fit_lagging)


def test_a_trial_far_behind_is_pruned_and_keeps_its_curve(tmp_path: Path) -> None:
    outcome = sweep_task(_lagging_task(), tmp_path, 4, pruner="median")
    assert outcome.counts["complete"] == 3 and outcome.counts["pruned"] == 1
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("lagging").experiment_id], "tags.`sweeplab.trial` = '3'")
    (pruned,) = runs
    assert pruned.data.tags["sweeplab.state"] == "pruned" and pruned.info.status == "FINISHED"
    assert pruned.data.tags["sweeplab.stopped"] == "pruned"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert pruned.data.metrics["best_epoch"] == 3.0


_GRID = "[search.x]\nlow = 0.0\nhigh = 1.0\ngrid = [0.0, 0.25, 0.5, 0.75, 1]\n"


def test_a_grid_resumed_after_ctrl_c_runs_the_interrupted_cell_and_every_other_once(tmp_path: Path) -> None:
    """The fourth of five cells is interrupted (Ctrl-C) in the first run; the rerun runs it and the
    last, each cell once (Optuna's own grid sampler fails on such a re-queued cell when one cell is
    left)."""
    interrupt = {"armed": True}

    def fit_interruptible(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        if env.trial_seed == 3 and interrupt["armed"]:
            raise KeyboardInterrupt
        return fit(Replay(2), 2, reporter, "val_accuracy")

    task = make_task("interruptible-grid", fit_interruptible)
    with pytest.raises(KeyboardInterrupt):
        sweep_task(task, tmp_path, 5, space_text=_GRID, sampler="grid", pruner="none")
    interrupt["armed"] = False
    outcome = sweep_task(task, tmp_path, 5, space_text=_GRID, sampler="grid", pruner="none")
    assert outcome.counts["complete"] == 5 and outcome.counts["killed"] == 0 and outcome.counts["queued"] == 0  # one trial with its retry
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("interruptible-grid").experiment_id],
                              "tags.`sweeplab.role` = 'trial'")
    complete = sorted(float(r.data.params["x"]) for r in runs if r.data.tags["sweeplab.state"] == "complete")
    assert complete == [0.0, 0.25, 0.5, 0.75, 1.0]
    (interrupted,) = [r for r in runs if r.data.tags["sweeplab.state"] == "killed"]
    assert interrupted.data.tags["sweeplab.fail_reason"] == "interrupted" and interrupted.info.status == "KILLED"
    assert interrupted.data.tags["sweeplab.retried_by"] in {r.info.run_id for r in runs}


def test_a_trial_another_process_failed_is_dropped_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """While trial 1 runs, another process fails it (as for lost heartbeats: that process closes its
    run and queues its retry). Trial 1's process neither crashes nor records the trial as complete,
    with or without reports to Optuna after the failure."""

    def fit_failed_meanwhile(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        if env.trial_seed in (1, 2):
            trial = reporter.trial
            storage = optuna_private.storage_of(trial.study)
            storage.set_trial_state_values(optuna_private.trial_id(trial), state=optuna.trial.TrialState.FAIL)
        return fit(Replay(3), 3, reporter, "val_accuracy")

    for pruner in ("median", "none"):  # with reports to Optuna after the failure, and without
        folder = tmp_path / pruner
        folder.mkdir()
        outcome = sweep_task(make_task(f"failed-meanwhile-{pruner}", fit_failed_meanwhile), folder, 4, pruner=pruner)
        assert outcome.counts["complete"] == 4 and outcome.counts["killed"] == 2
        client = MlflowClient(outcome.tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name(f"failed-meanwhile-{pruner}").experiment_id],
                                  "tags.`sweeplab.role` = 'trial'")
        dropped = [r for r in runs if r.data.tags["sweeplab.trial"] in ("1", "2")]
        # Closed as killed, not as complete; the other process (simulated here without a reason) would have closed it.
        assert [(r.info.status, r.data.tags["sweeplab.state"]) for r in dropped] == [("KILLED", "killed")] * 2


def test_sigkill_during_the_first_start_leaves_a_store_the_same_command_completes(tmp_path: Path) -> None:
    """The first `sweep run` on a fresh store is killed while it builds the MLflow schema (which
    takes seconds); the same command then runs the sweep to its end. Other moments of the build
    are killed in tests/tracker/test_embedded_store.py."""
    store = tmp_path / "store"
    # A training function with no data to prepare: the first start reaches the store at once.
    (tmp_path / "quick.py").write_text("def fit(config, report):\n    report(1, {'val_loss': config['x']})\n", encoding="utf-8")
    (tmp_path / "quick.toml").write_text("[search.x]\nlow = 0.0\nhigh = 1.0\n", encoding="utf-8")
    command = [sys.executable, "-m", "sweeplab", "run", f"{tmp_path / 'quick.py'}:fit", "--space", str(tmp_path / "quick.toml"),
               "--trials", "1", "--store-dir", str(store), "--no-plots"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the database being built", lambda: True if any(store.glob("mlflow.db.building-*")) else None, 120,
                 every=0.005, alive=process)
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = _children(store, "sweeplab-quick.py:fit")
    assert [r.data.tags["sweeplab.state"] for r in runs] == ["complete"]
