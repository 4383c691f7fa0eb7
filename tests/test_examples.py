"""The example trainers in examples/ run end to end and keep a checkpoint that loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import sweeplab

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
