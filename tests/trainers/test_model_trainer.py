"""The shared ModelTrainer: its two kinds of schedule, named parts, batches and read-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.trainers.model_trainer import ModelTrainer, class_probabilities, plateau_schedule, warmup_schedule

CONFIG = {"lr": 0.1, "weight_decay": 0.01}


def _env(tmp_path: Path, compile: bool = False) -> TrialEnv:
    return TrialEnv(device=torch.device("cpu"), precision="fp32", cache=PrepCache(tmp_path / "cache"), seed=0, trial_seed=3,
                    early_stop=None, compile=compile)


def _step(trainer: ModelTrainer) -> None:
    """One optimizer step on a squared-output loss of a random batch."""
    trainer.optimise(trainer.model(torch.randn(4, 3)).pow(2).mean())


def test_a_warmup_schedule_follows_the_optimizer_step_not_the_evaluations(tmp_path: Path) -> None:
    trainer = ModelTrainer(nn.Linear(3, 2), CONFIG, _env(tmp_path), warmup_schedule("linear", total_steps=10, warmup_steps=4))
    assert trainer.learning_rate() == 0.0  # warming up from 0
    _step(trainer)
    _step(trainer)
    assert trainer.learning_rate() == pytest.approx(0.1 * 2 / 4)
    trainer.after_evaluation({"val_loss": 5.0})
    trainer.after_evaluation({"val_loss": 6.0})
    assert trainer.learning_rate() == pytest.approx(0.05)


def test_a_plateau_schedule_follows_the_validation_loss_not_the_optimizer_step(tmp_path: Path) -> None:
    trainer = ModelTrainer(nn.Linear(3, 2), CONFIG, _env(tmp_path), plateau_schedule(factor=0.5, patience=1))
    for _ in range(5):
        _step(trainer)
    assert trainer.learning_rate() == 0.1
    lrs = []
    for val_loss in (1.0, 0.9, 0.95, 0.95, 0.95, 0.8):  # not better than 0.9 twice in a row (more than patience): halved once
        trainer.after_evaluation({"val_loss": val_loss})
        lrs.append(trainer.learning_rate())
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05])


class _TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_named_parts_are_compiled_one_by_one_and_snapshot_one_state_per_part(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[type] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self)))
    parts = {"head": nn.Linear(4, 2), "encoder": _TwoParts()}
    trainer = ModelTrainer(parts, CONFIG, _env(tmp_path, compile=True), plateau_schedule(0.5, 1))
    assert compiled == [nn.Linear, _TwoParts]  # not the ModuleDict, which nothing calls
    state = trainer.snapshot()
    assert list(state) == ["head", "encoder"]
    assert set(state["head"]) == {"weight", "bias"} and next(iter(state["encoder"])).startswith("encoder.0.")
    decayed, not_decayed = trainer.optimizer.param_groups  # the default: decay on weight matrices only
    assert decayed["weight_decay"] == 0.01 and all(p.ndim == 2 for p in decayed["params"]) and len(decayed["params"]) == 2
    assert not_decayed["weight_decay"] == 0.0 and all(p.ndim == 1 for p in not_decayed["params"])


def test_close_gives_the_optimizer_state_back(tmp_path: Path) -> None:
    trainer = ModelTrainer(nn.Linear(3, 2), CONFIG, _env(tmp_path), warmup_schedule("cosine", 10, 0))
    _step(trainer)
    assert trainer.optimizer.state
    trainer.close()
    assert not trainer.optimizer.state and next(trainer.model.parameters()).device.type == "cpu"


def test_shuffled_batches_cover_every_row_once_in_a_seeded_order(tmp_path: Path) -> None:
    first = ModelTrainer(nn.Linear(3, 2), CONFIG, _env(tmp_path), plateau_schedule(0.5, 1))
    again = ModelTrainer(nn.Linear(3, 2), CONFIG, _env(tmp_path), plateau_schedule(0.5, 1))
    batches = list(first.shuffled_batches(10, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(batches), torch.cat(list(again.shuffled_batches(10, 4))))  # the trial's seed
    assert not torch.equal(torch.cat(batches), torch.cat(list(first.shuffled_batches(10, 4))))  # a fresh order each epoch


def test_class_probabilities_are_the_softmax_of_each_batch_in_order() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5))
    x = torch.randn(7, 3)
    prob = class_probabilities(model, x.split(3), model, torch.device("cpu"), "fp32")
    assert not model.training  # no dropout at evaluation
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=-1).numpy()
    assert prob.shape == (7, 5) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, expected, rtol=1e-6)
