"""A real 2-trial retrieval sweep on generated MUGE data with a tiny ChineseCLIP, read back with
MlflowClient only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app

runner = CliRunner()
TINY = ["--set", "hidden_size=32", "--set", "heads=2", "--set", "text_layers=1", "--set", "vision_layers=1",
        "--set", "projection_dim=16", "--set", "image_size=32", "--set", "epochs=3", "--set", "batch_size=32",
        "--set", "warmup_steps=2"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("retrieval")
    made = runner.invoke(app, ["shapes", str(tmp / "data"), "--train", "80", "--valid", "30", "--test", "30",
                               "--image-size", "32"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["run", "retrieval", "--trials", "2", "--data-dir", str(tmp / "data"),
                                 "--store-dir", str(tmp / "store"), "--pruner", "none", "--no-early-stop", *TINY])
    assert result.exit_code == 0, result.output
    assert "test_recall_mean" in result.output
    return tmp


def test_curves_summary_and_test_score_in_mlflow(swept: Path) -> None:
    client = MlflowClient(f"sqlite:///{swept / 'store' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweeplab-retrieval")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags["sweeplab.role"] == "sweep")
    children = [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("val_loss", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_recall_mean", "val_i2t_r1", "train_loss"):
            assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == [1, 2, 3], key
        recall = sorted(client.get_metric_history(child.info.run_id, "val_recall_mean"), key=lambda m: m.step)
        values = [m.value for m in recall]
        assert child.data.metrics["best_epoch"] == recall[int(np.argmax(values))].step
        assert child.data.metrics["best_val_recall_mean"] == max(values)
        assert {"config.json", "curves.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    best = max(children, key=lambda r: (r.data.metrics["best_val_recall_mean"], -int(r.data.tags["sweeplab.trial"])))
    assert best.data.tags["sweeplab.checkpoint"].endswith("/checkpoint")
    assert parent.data.metrics["test_recall_mean"] == best.data.metrics["test_recall_mean"]
    assert 0 <= best.data.metrics["test_t2i_r10"] <= 1


def test_sweep_best_shows_recall(swept: Path) -> None:
    result = runner.invoke(app, ["best", "--task", "retrieval", "--json", "--store-dir", str(swept / "store")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["metric"] == "best_val_recall_mean"
    assert {"best_epoch", "best_val_t2i_r1", "best_val_i2t_r1", "test_recall_mean"} <= set(row["summary"])
    table = runner.invoke(app, ["best", "--task", "retrieval", "--store-dir", str(swept / "store")])
    text = " ".join(table.output.split())
    assert "validation (best epoch) recall_mean" in text and "test (best checkpoint) recall_mean" in text
