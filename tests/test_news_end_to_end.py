"""A real 2-trial news sweep on a few hundred titles with a tiny BERT, read back with MlflowClient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.trainers.news import TASK

runner = CliRunner()
TINY_NEWS = ["--set", "model=scratch", "--set", "hidden_size=32", "--set", "layers=1", "--set", "heads=2", "--set", "eval_every=4",
             "--set", "epochs=2", "--set", "batch_size=64", "--set", "eval_batch_size=100"]
STEPS = [4, 8, 10]  # 300 titles / 64 = 5 steps an epoch, 10 in all, evaluated every 4


def _titles(root: Path) -> Path:
    """300 / 100 / 100 titles of the packaged sample in the THUCNews layout."""
    root.mkdir(parents=True)
    for name, n in (("train.txt", 300), ("dev.txt", 100), ("test.txt", 100)):
        lines = (TASK.sample_data / name).read_text(encoding="utf-8").splitlines()
        (root / name).write_text("\n".join(lines[:: len(lines) // n][:n]) + "\n", encoding="utf-8")
    (root / "class.txt").write_bytes((TASK.sample_data / "class.txt").read_bytes())
    return root


def _run(tmp: Path) -> None:
    args = ["run", "news", "--trials", "2", "--data-dir", str(tmp / "data"), "--store-dir", str(tmp / "store"),
            "--pruner", "none", "--no-early-stop", *TINY_NEWS]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test split, best trial's checkpoint: test_accuracy" in result.output


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("news")
    _titles(tmp / "data")
    _run(tmp)
    return tmp


def _runs(tmp: Path, study: str = "news-tpe") -> tuple[MlflowClient, object, list]:
    """The parent run and the child runs of one study."""
    client = MlflowClient(f"sqlite:///{tmp / 'store' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweeplab-news")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=100) if r.data.tags["sweeplab.study"] == study]
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    assert len(parents) == 1
    return client, parents[0], [r for r in runs if r.data.tags.get("sweeplab.role") == "trial"]


def test_curves_are_indexed_by_optimizer_step_and_best_step_is_the_argmax(swept: Path) -> None:
    client, parent, children = _runs(swept)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweeplab.state"] == "complete"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc"):
            assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == STEPS, key
        accuracy = sorted(client.get_metric_history(child.info.run_id, "val_accuracy"), key=lambda m: m.step)
        values = [m.value for m in accuracy]
        assert child.data.metrics["best_step"] == accuracy[int(np.argmax(values))].step
        assert child.data.metrics["best_val_accuracy"] == max(values)
        assert child.data.metrics["steps_run"] == len(STEPS) and "best_epoch" not in child.data.metrics
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "curves.png", "confusion_matrix.png", "classification_report.json",
                "classification_report.txt"} <= names
        report = json.loads(Path(client.download_artifacts(child.info.run_id, "classification_report.json",
                                                           str(swept / child.info.run_id))).read_text(encoding="utf-8"))
        assert report["accuracy"] == pytest.approx(child.data.metrics["best_val_accuracy"])
        assert set(report) >= {"finance", "sports", "macro avg"}


def test_best_trial_checkpoint_is_scored_once_on_the_test_split(swept: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    client, parent, children = _runs(swept)
    best = max(children, key=lambda r: (r.data.metrics["best_val_accuracy"], -int(r.data.tags["sweeplab.trial"])))
    other = next(c for c in children if c.info.run_id != best.info.run_id)
    assert best.data.tags["sweeplab.checkpoint"].endswith("/checkpoint")
    assert "test_accuracy" in best.data.metrics and "test_accuracy" not in other.data.metrics
    assert parent.data.metrics["test_accuracy"] == best.data.metrics["test_accuracy"]
    assert parent.data.tags["sweeplab.test_trial"] == best.data.tags["sweeplab.trial"]
    names = {a.path for a in client.list_artifacts(best.info.run_id)}
    assert {"test_classification_report.json", "test_confusion_matrix.png"} <= names
    report = json.loads(Path(client.download_artifacts(best.info.run_id, "test_classification_report.json",
                                                       str(swept / "dl"))).read_text(encoding="utf-8"))
    assert report["accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    assert report["macro avg"]["support"] == 100
    folder = client.download_artifacts(best.info.run_id, "checkpoint", str(swept / "dl"))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 10 and model.config.id2label[0] == "finance"

    _run(swept)  # the same command again: nothing to run, and the test split is not scored again
    client, parent, children = _runs(swept)
    assert len(children) == 2
    assert len(client.get_metric_history(best.info.run_id, "test_accuracy")) == 1


def test_sweep_best_shows_test_beside_validation(swept: Path) -> None:
    result = runner.invoke(app, ["best", "--task", "news", "--json", "--store-dir", str(swept / "store")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert {"best_step", "best_val_accuracy", "test_accuracy", "test_f1_macro"} <= set(row["summary"])
    table = runner.invoke(app, ["best", "--task", "news", "--store-dir", str(swept / "store")])
    assert table.exit_code == 0
    text = " ".join(table.output.split())
    assert "best step" in text and "test (best checkpoint) accuracy" in text
    assert f"accuracy {row['summary']['test_accuracy']:.4g}" in text


def test_metric_flag_picks_the_best_step_by_another_metric(swept: Path) -> None:
    args = ["run", "news", "--trials", "1", "--data-dir", str(swept / "data"), "--store-dir", str(swept / "store"),
            "--pruner", "none", "--no-early-stop", *TINY_NEWS]
    refused = runner.invoke(app, [*args, "--metric", "val_loss"])
    assert refused.exit_code == 2 and "metric differs" in refused.output, refused.output
    result = runner.invoke(app, [*args, "--metric", "val_loss", "--study", "by-loss"])
    assert result.exit_code == 0, result.output
    client, _, children = _runs(swept, "by-loss")
    child = children[0]
    losses = sorted(client.get_metric_history(child.info.run_id, "val_loss"), key=lambda m: m.step)
    values = [m.value for m in losses]
    assert child.data.metrics["best_step"] == losses[int(np.argmin(values))].step
    assert child.data.metrics["best_val_loss"] == min(values)
    assert len(list((swept / "store" / "cache").glob("news-tokens-*.pt"))) == 1  # tokenised once, shared


def test_an_unknown_metric_stops_the_sweep_with_one_line(swept: Path) -> None:
    args = ["run", "news", "--trials", "1", "--data-dir", str(swept / "data"), "--store-dir", str(swept / "store"),
            "--study", "typo", "--metric", "val_acc", *TINY_NEWS]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "--metric val_acc: the news task reports val_accuracy, val_f1_macro, val_roc_auc, val_loss; did you mean val_accuracy?" in said
    assert "trial 0" not in said  # refused before the task was loaded: no trial began


FAMILIES_GRID = """
task = "news"

[search.model]
choices = ["textcnn", "fasttext"]

[search.filters]
when = { model = "textcnn" }
choices = [8]

[search.kernel_sizes]
when = { model = "textcnn" }
choices = ["1,2"]

[search.ngrams]
when = { model = "fasttext" }
choices = [2]

[search.buckets]
when = { model = "fasttext" }
choices = [500]

[fixed]
embedding_dim = 16
lr = 0.01
epochs = 2
batch_size = 32
max_length = 32
"""


def test_textcnn_and_fasttext_trials_run_end_to_end_and_their_checkpoints_score_the_test_split(swept: Path) -> None:
    """One grid over the two families: each trial holds its own family's parameters only, the
    same curves as every news trial, and the best one's checkpoint is scored on the test split."""
    import torch

    from sweeplab.trainers.text_models import load_text_model

    space = swept / "families.toml"
    space.write_text(FAMILIES_GRID, encoding="utf-8")
    result = runner.invoke(app, ["run", "news", "--trials", "2", "--space", str(space), "--sampler", "grid", "--study", "families",
                                 "--data-dir", str(swept / "data"), "--store-dir", str(swept / "store"), "--no-early-stop",
                                 "--pruner", "none"])
    assert result.exit_code == 0, result.output
    client, parent, children = _runs(swept, "families")
    labels = [line.rsplit("\t", 1)[1] for line in (swept / "data" / "dev.txt").read_text(encoding="utf-8").splitlines()]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    by_family = {c.data.params["model"]: c for c in children}
    assert set(by_family) == {"textcnn", "fasttext"}
    assert by_family["textcnn"].data.params["kernel_sizes"] == "1,2" and "ngrams" not in by_family["textcnn"].data.params
    assert by_family["fasttext"].data.params["buckets"] == "500" and "filters" not in by_family["fasttext"].data.params
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweeplab.state"] == "complete"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [10, 20]  # 300 / 32 a epoch
        assert child.data.metrics["val_majority_accuracy"] == pytest.approx(majority)
    best = max(children, key=lambda r: (r.data.metrics["best_val_accuracy"], -int(r.data.tags["sweeplab.trial"])))
    assert parent.data.metrics["test_accuracy"] == best.data.metrics["test_accuracy"]
    folder = Path(client.download_artifacts(best.info.run_id, "checkpoint", str(swept / "families-dl")))
    from transformers import AutoTokenizer

    assert (folder / "model.pt").is_file() and len(AutoTokenizer.from_pretrained(folder)) == 21128
    model = load_text_model(folder)
    assert type(model).__name__.lower() == best.data.params["model"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[101, 2769, 102]]), attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
    assert logits.shape == (1, 10)
