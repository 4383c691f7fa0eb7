"""A real 3-trial sweep on tiny models, read back from the store with MlflowClient only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from tests.conftest import TINY

runner = CliRunner()


def _sweep(tmp_path: Path, data: Path, trials: int, *extra: str) -> None:
    args = ["run", "sentiment", "--trials", str(trials), "--data-dir", str(data), "--store-dir", str(tmp_path / "store"),
            "--pruner", "none", *TINY, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def _runs(tmp_path: Path) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweeplab-sentiment")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sweeplab.role") == "trial"]
    return client, parents, children


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_sentiment_dir

    tmp = tmp_path_factory.mktemp("e2e")
    data = make_sentiment_dir(tmp / "data", train_rows=60, test_rows=8)
    _sweep(tmp, data, 3, "--set", "epochs=4", "--no-early-stop")
    return tmp


def test_one_parent_three_children_with_full_curves(swept: Path) -> None:
    client, parents, children = _runs(swept)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["sweeplab.trial"]) for c in children) == [0, 1, 2]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweeplab.state"] == "complete"
        for key in ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc"):
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3, 4], key
        accuracy = sorted(client.get_metric_history(child.info.run_id, "val_accuracy"), key=lambda m: m.step)
        values = [m.value for m in accuracy]
        assert child.data.metrics["best_epoch"] == accuracy[int(np.argmax(values))].step
        assert child.data.metrics["best_val_accuracy"] == max(values)
        assert child.data.params["overfit_criterion"] == "UP_3 or GL_5"
        assert child.data.tags["sweeplab.overfit"] in ("none", "UP", "GL")
        assert ("overfit_epoch" in child.data.metrics) == (child.data.tags["sweeplab.overfit"] != "none")
        for key in ("batch_size", "lr", "complexity", "epochs", "modality", "text_model"):
            assert key in child.data.params
        assert "sweeplab.command" in child.data.tags and "sweeplab.version.torch" in child.data.tags
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "curves.png", "confusion_matrix.png"} <= names


def test_best_trial_has_checkpoint_and_predictions(swept: Path) -> None:
    client, parents, children = _runs(swept)
    best = max(children, key=lambda r: (r.data.metrics["best_val_accuracy"], -int(r.data.tags["sweeplab.trial"])))
    checkpoint = best.data.tags["sweeplab.checkpoint"]
    assert checkpoint.endswith("checkpoint/model.pt")
    local = Path(client.download_artifacts(best.info.run_id, "checkpoint/model.pt", str(swept / "dl")))
    import torch

    saved = torch.load(local, weights_only=False)
    assert saved["best_step"] == best.data.metrics["best_epoch"] and "head" in saved["state_dict"]
    text = client.download_artifacts(best.info.run_id, "predictions/test_predictions.txt", str(swept / "dl"))
    lines = Path(text).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "guid,tag" and len(lines) == 9
    assert all(line.split(",")[1] in ("positive", "neutral", "negative") for line in lines[1:])
    assert parents[0].data.tags["sweeplab.best_run_id"] == best.info.run_id


def test_sweep_best_json_names_the_top_child(swept: Path) -> None:
    _, _, children = _runs(swept)
    result = runner.invoke(app, ["best", "--task", "sentiment", "--json", "--top", "3", "--store-dir", str(swept / "store")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    values = sorted((c.data.metrics["best_val_accuracy"] for c in children), reverse=True)
    assert [r["value"] for r in rows] == values
    top = max(children, key=lambda r: r.data.metrics["best_val_accuracy"])
    assert rows[0]["value"] == top.data.metrics["best_val_accuracy"]
    assert rows[0]["summary"]["best_epoch"] >= 1 and rows[0]["params"]["text_model"] == "tiny"
    table = runner.invoke(app, ["best", "--task", "sentiment", "--store-dir", str(swept / "store")])
    assert table.exit_code == 0 and rows[0]["run_id"] in table.output.replace("\n", "")
    # the floor beside the figure: the validation split's most frequent class, and the distance to it
    labels = [line.split(",")[1] for line in (swept / "data" / "train.txt").read_text(encoding="utf-8").splitlines()[1:]]
    majority = rows[0]["summary"]["val_majority_accuracy"]
    assert max(labels.count(t) for t in set(labels)) / len(labels) == pytest.approx(majority, abs=0.05)  # stratified split
    gap = 100 * (rows[0]["value"] - majority)
    text = " ".join(table.output.split())
    assert f"majority class {majority:.4f} (always the most frequent class); {abs(gap):.1f} points" in text


def test_rerun_with_other_settings_is_refused(swept: Path) -> None:
    result = runner.invoke(app, ["run", "sentiment", "--trials", "4", "--data-dir", str(swept / "data"), "--store-dir",
                                 str(swept / "store"), "--pruner", "none", "--seed", "7", *TINY, "--set", "epochs=4"])
    assert result.exit_code == 2
    assert "study 'sentiment-tpe' was made with other settings (seed, split_seed differ)" in result.output.replace("\n", "")


def test_rerun_resumes_the_same_study_and_parent(swept: Path) -> None:
    _sweep(swept, swept / "data", 4, "--set", "epochs=4", "--no-early-stop")
    _, parents, children = _runs(swept)
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["trials_complete"] == 4
