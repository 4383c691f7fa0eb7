"""The example trainers in examples/ run end to end and keep a checkpoint that loads."""

from __future__ import annotations

import copy
import importlib
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
