"""The sentiment trainer on the shared ModelTrainer, built directly on tiny backbones and data:
every modality trains, frozen or fine-tuned; a snapshot restores the model exactly; a round
reads its loss back once; every batch reaches the model through the shared host-to-device copy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from sweeplab.core import Loaded, TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.trainers import sentiment, transfer
from sweeplab.trainers.loop import keep_copy
from sweeplab.trainers.sentiment import TASK, _SentimentTrainer
from tests.conftest import make_sentiment_dir
from tests.trainers.test_step_syncs import Watched

TINY = {"text_model": "tiny", "image_model": "tiny", "image_size": 32, "max_length": 32, "lr": 1e-3}
FINE_TUNED = {"freeze_backbones": False, "batch_size": 16}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Loaded, PrepCache]:
    """The data read once, and one cache of its pixels, tokens and features for every test here."""
    root = tmp_path_factory.mktemp("sentiment")
    return TASK.load(make_sentiment_dir(root / "data"), 0, 0.2, TASK.defaults), PrepCache(root / "cache")


def _trainer(prepared: tuple[Loaded, PrepCache], trial_seed: int = 0, device: str = "cpu", precision: str = "fp32",
             **overrides: Any) -> _SentimentTrainer:
    loaded, cache = prepared
    env = TrialEnv(device=torch.device(device), precision=precision, cache=cache, seed=0, trial_seed=trial_seed,
                   early_stop=None)
    return _SentimentTrainer(loaded, {**TASK.defaults, **TINY, **overrides}, env)


def _states(trainer: _SentimentTrainer) -> dict[str, Any]:
    return keep_copy(trainer.snapshot)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
@pytest.mark.parametrize("modality", ["fusion", "text", "image"])
def test_every_modality_trains_frozen_or_fine_tuned(prepared: tuple[Loaded, PrepCache], modality: str, frozen: bool) -> None:
    trainer = _trainer(prepared, modality=modality, **({} if frozen else FINE_TUNED))
    before = _states(trainer)
    losses = [trainer.train_round()[1] for _ in range(3)]
    after = _states(trainer)
    assert losses[-1] < losses[0], losses
    backbones = [] if frozen else [m for m in ("text", "image") if modality in ("fusion", m)]
    assert list(after) == ["head", *backbones]  # the checkpoint's parts
    for part in after:  # the backbones train with the heads when fine-tuned
        assert any(not torch.equal(before[part][k], after[part][k]) for k in after[part]), part
    head = trainer.model["head"]
    assert (head.text_proj is not None, head.image_proj is not None) == (modality != "image", modality != "text")
    metrics = trainer.evaluate().metrics
    assert {"val_loss", "val_accuracy", "lr"} <= set(metrics) and metrics["lr"] == 1e-3


def test_a_snapshot_loaded_into_a_fresh_trial_predicts_the_same(prepared: tuple[Loaded, PrepCache]) -> None:
    trained = _trainer(prepared, **FINE_TUNED)
    trained.train_round()
    state, expected = _states(trained), trained._probabilities(trained.val)
    fresh = _trainer(prepared, trial_seed=1, **FINE_TUNED)
    assert not np.allclose(fresh._probabilities(fresh.val), expected)  # another seed, other weights
    for name, part in fresh.model.items():
        part.load_state_dict(state[name])
    np.testing.assert_array_equal(fresh._probabilities(fresh.val), expected)
    assert fresh.predict_unlabelled() == trained.predict_unlabelled()


def test_adamw_decays_every_parameter_as_the_report_did(prepared: tuple[Loaded, PrepCache]) -> None:
    trainer = _trainer(prepared, weight_decay=0.02, **FINE_TUNED)
    (group,) = trainer.optimizer.param_groups
    assert group["weight_decay"] == 0.02
    assert {id(p) for p in group["params"]} == {id(p) for p in trainer.model.parameters()}  # biases and norms too


def test_the_learning_rate_falls_when_the_validation_loss_stops_improving(prepared: tuple[Loaded, PrepCache]) -> None:
    trainer = _trainer(prepared, plateau_factor=0.5, plateau_patience=0)
    trainer.train_round()
    for val_loss in (1.0, 1.0):  # no improvement: halved, as ReduceLROnPlateau with patience 0
        trainer.after_evaluation({"val_loss": val_loss})
    assert trainer.learning_rate() == pytest.approx(5e-4)
    trainer.train_round()  # a training round does not step the schedule
    assert trainer.learning_rate() == pytest.approx(5e-4)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
def test_a_round_reads_its_loss_back_once(prepared: tuple[Loaded, PrepCache], frozen: bool) -> None:
    trainer = _trainer(prepared, **({} if frozen else FINE_TUNED))
    trainer.model["head"].register_forward_hook(lambda _module, _inputs, out: out.as_subclass(Watched))
    Watched.reads = []
    trainer.train_round()
    assert Watched.reads == ["__float__"]  # the round's mean, read once: none per step


class Moved(torch.Tensor):
    """A tensor put on the device by :func:`sweeplab.trainers.transfer.to_device` (what is computed
    from it is one too)."""


def _all_moved(values: Any) -> bool:
    return all(isinstance(v, Moved) for v in values if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
def test_every_batch_reaches_the_model_through_the_shared_device_copy(prepared: tuple[Loaded, PrepCache], frozen: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, ``transfer.to_device`` copies from pinned memory without a wait (the news and
    retrieval trainers' path); here every tensor a part of the model receives must come from it."""
    real = transfer.to_device
    monkeypatch.setattr(transfer, "to_device", lambda tensor, device: real(tensor, device).as_subclass(Moved))
    monkeypatch.setattr(sentiment, "to_device", transfer.to_device)
    trainer = _trainer(prepared, **({} if frozen else FINE_TUNED))
    seen: list[bool] = []

    def check(_module: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> None:
        seen.append(_all_moved(args) and _all_moved(kwargs.values()))

    for part in trainer.model.values():
        part.register_forward_pre_hook(check, with_kwargs=True)
    trainer.train_round()
    trainer.evaluate()
    assert seen and all(seen)
    steps = math.ceil(len(trainer.train.rows) / trainer.batch_size)
    assert len(seen) == (1 if frozen else 3) * (steps + 1)  # each part, on each training batch and the one validation batch


def test_a_text_batch_is_cut_to_its_longest_text() -> None:
    ids = torch.tensor([[101, 5, 6, 102, 0, 0], [101, 7, 102, 0, 0, 0]])
    ids_out, mask_out = transfer.trimmed_to_device(ids, (ids > 0).long(), torch.device("cpu"))
    assert ids_out.tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]] and mask_out.sum(1).tolist() == [4, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the pinned, non-blocking copies need one")
def test_fine_tuning_trains_on_a_gpu_in_fp16(prepared: tuple[Loaded, PrepCache]) -> None:
    trainer = _trainer(prepared, device="cuda", precision="fp16", **FINE_TUNED)
    assert trainer.scaler.is_enabled()
    losses = [trainer.train_round()[1] for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(t.device.type == "cpu" for part in _states(trainer).values() for t in part.values())
    trainer.close()
    assert next(trainer.model.parameters()).device.type == "cpu"


def test_a_trials_heads_start_the_same_whether_its_features_were_built_or_read_from_the_cache(tmp_path: Any) -> None:
    """Building frozen features (a cold cache) seeds the backbone with the sweep's seed; the heads
    built after must still start from the trial's own seed, or a rerun's first trial differs."""
    loaded = TASK.load(make_sentiment_dir(tmp_path / "data", train_rows=20, test_rows=2), 0, 0.2, TASK.defaults)
    cache = PrepCache(tmp_path / "cache")
    cold = _states(_trainer((loaded, cache), trial_seed=5))["head"]
    warm = _states(_trainer((loaded, cache), trial_seed=5))["head"]
    assert cache.builds and all(torch.equal(cold[k], warm[k]) for k in cold)
