"""The example trainers in examples/ run end to end and keep a checkpoint that loads; the command-line
example is swept as a command, its printed lines read as its curves."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

import sweeplab
from sweeplab.core import Resumed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_digits_example_is_swept_and_its_checkpoint_loads_into_its_model(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = f"{EXAMPLES / 'digits' / 'digits.py'}:fit"
    outcome = sweeplab.run(spec, trials=3, overrides={"epochs": 4}, pruner="none", plots=False)
    assert outcome.task == "digits-mlp" and outcome.counts["complete"] == 3
    (row,) = sweeplab.best("digits-mlp")
    assert row.metric == "best_val_accuracy" and row.value > 0.5  # ten classes: chance is 0.1
    assert row.checkpoint is not None
    folder = MlflowClient(tracking_uri=outcome.tracking_uri).download_artifacts(row.run_id, "checkpoint", str(tmp_path / "ckpt"))
    saved = torch.load(Path(folder) / "model.pt", weights_only=False)
    from digits import _data, _model  # the example's module, imported by the sweep from its folder

    model = _model(saved["config"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    _, _, x_val, y_val = _data()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    assert accuracy == pytest.approx(row.value, abs=1e-6)  # the checkpoint is the best epoch's model


class _Report:
    """Stands in for sweeplab's ``report``: keeps each evaluation's metrics and the resume state
    handed over last (copied, as sweeplab writes it to a file at once)."""

    def __init__(self, resumed: Resumed | None = None) -> None:
        self.resumed = resumed
        self.points: dict[int, dict[str, float]] = {}
        self.saved: Resumed | None = None

    def __call__(self, step: int, metrics: dict[str, float], state: Any = None, resume: Any = None) -> bool:
        self.points[step] = dict(metrics)
        self.saved = Resumed(step, copy.deepcopy(resume() if callable(resume) else resume))
        return False


def test_the_digits_example_goes_on_from_its_resume_state_as_if_never_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES / "digits"))
    fit = importlib.import_module("digits").fit
    config = {"lr": 3e-3, "batch_size": 64, "hidden": 64, "layers": 2, "dropout": 0.2, "weight_decay": 1e-4, "epochs": 4}
    torch.manual_seed(0)
    whole = _Report()
    fit(config, whole)
    torch.manual_seed(0)
    stopped = _Report()
    fit({**config, "epochs": 2}, stopped)  # the same first two epochs, then its resume state
    torch.manual_seed(1)  # a retry is seeded again: the state carries the random state on
    retry = _Report(resumed=stopped.saved)
    fit(config, retry)
    assert list(retry.points) == [3, 4]
    for epoch in (3, 4):
        assert retry.points[epoch] == pytest.approx(whole.points[epoch], abs=1e-6)


def test_the_command_line_example_is_swept_from_its_printed_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = EXAMPLES / "command_line"
    command = [sys.executable, str(folder / "train.py"), "--lr", "{lr}", "--epochs", "{epochs}", "--batch-size",
               "{batch_size}", "--l2", "{l2}"]
    outcome = sweeplab.run(command, trials=3, space=folder / "train.toml", metric="val_accuracy", plots=False)
    assert outcome.task == "train.py" and outcome.counts["complete"] == 3
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    experiment = client.get_experiment_by_name("sweeplab-train.py").experiment_id
    runs = client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = [point.step for point in curve]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) <= int(run.data.params["epochs"])
        best = max(range(len(curve)), key=lambda i: (curve[i].value, -i))  # the first of the highest
        assert run.data.metrics["best_epoch"] == steps[best] and "best_step" not in run.data.metrics  # it printed epoch=
        assert run.data.metrics["epochs_run"] == len(steps)
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(curve[best].value)
        assert "sweeplab.device" not in run.data.tags  # the program picks its own; the sweep's process opened none
        (log,) = client.list_artifacts(run.info.run_id, "command")
        text = Path(client.download_artifacts(run.info.run_id, log.path, str(tmp_path / run.info.run_id))).read_text()
        assert f"epoch={len(steps)} " in text
    (row,) = sweeplab.best("train.py")
    assert row.value == max(run.data.metrics["best_val_accuracy"] for run in runs)
