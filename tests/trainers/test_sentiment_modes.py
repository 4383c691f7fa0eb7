"""The sentiment trainer's modes, each run for real on tiny models through the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions

TINY = {"text_model": "tiny", "image_model": "tiny", "image_size": "32", "max_length": "32", "epochs": "2"}


def _sweep(tmp_path: Path, data: Path, trials: int = 1, **overrides: str) -> tuple[MlflowClient, list]:
    outcome = run_sweep(SweepOptions.of("sentiment", trials=trials, data_dir=data, store_dir=tmp_path / "store",
                                     pruner="none", early_stop=False, plots=False, overrides={**TINY, **overrides}))
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(outcome.experiment).experiment_id],
                              "tags.`sweeplab.role` = 'trial'")
    return client, runs


@pytest.mark.parametrize("modality", ["text", "image"])
def test_single_modality_variants_train(tmp_path: Path, sentiment_dir: Path, modality: str) -> None:
    client, runs = _sweep(tmp_path, sentiment_dir, modality=modality)
    (run,) = runs
    assert run.data.tags["sweeplab.state"] == "complete" and run.data.params["modality"] == modality
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2


def test_fine_tuning_the_backbones_trains_them(tmp_path: Path, sentiment_dir: Path) -> None:
    client, runs = _sweep(tmp_path, sentiment_dir, freeze_backbones="false", batch_size="16", lr="1e-3")
    (run,) = runs
    assert run.data.tags["sweeplab.state"] == "complete"
    path = client.download_artifacts(run.info.run_id, "checkpoint/model.pt", str(tmp_path))
    import torch

    state = torch.load(path, weights_only=False)["state_dict"]
    assert {"head", "text", "image"} <= set(state)  # backbones are part of the fine-tuned model
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2


def test_data_is_prepared_once_per_sweep_not_per_trial(tmp_path: Path, sentiment_dir: Path) -> None:
    _sweep(tmp_path, sentiment_dir, trials=3)
    cached = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "store" / "cache").glob("*.pt"))
    assert cached == ["sentiment-image-features", "sentiment-pixels", "sentiment-text-features", "sentiment-tokens"]
