"""``--workers K``: worker processes share one study and one MLflow parent run; --trials is a total."""

from __future__ import annotations

from pathlib import Path

import optuna
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from tests.checks import assert_grid_ran_every_cell_once
from tests.conftest import TINY

runner = CliRunner()


def test_two_workers_share_one_study_and_one_parent_run(tmp_path: Path, sentiment_dir: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", "sentiment", "--trials", "6", "--workers", "2", "--sampler", "random",
                                 "--data-dir", str(sentiment_dir), "--store-dir", str(store), "--set", "epochs=3", *TINY])
    assert result.exit_code == 0, result.output
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(store / "optuna.journal")))
    study = optuna.load_study(study_name="sentiment-random", storage=storage)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert 6 <= len(finished) <= 7  # a total across workers; a trial in flight at the end still finishes
    assert len(finished) == len(study.trials)  # nothing failed, nothing left running
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials

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


def test_three_workers_run_every_cell_of_the_24_cell_grid_exactly_once(tmp_path: Path, sentiment_dir: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", "sentiment", "--trials", "24", "--workers", "3", "--sampler", "grid",
                                 "--pruner", "none", "--data-dir", str(sentiment_dir), "--store-dir", str(store),
                                 "--set", "epochs=2", *TINY])
    assert result.exit_code == 0, result.output
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(store / "optuna.journal")))
    study = optuna.load_study(study_name="sentiment-grid", storage=storage)
    assert_grid_ran_every_cell_once(study, MlflowClient(f"sqlite:///{store / 'mlflow.db'}"), "sweeplab-sentiment", 24)
