from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from sweeplab.core import Evaluation
from sweeplab.core.curves import OnsetRule
from sweeplab.trainers.loop import Diverged, fit


class FakeTrainer:
    """Replays a hand-made curve; its 'state' is the epoch it was taken at."""

    def __init__(self, acc: list[float], loss: list[float], train_loss: float = 0.5) -> None:
        self.acc, self.loss, self.train_loss, self.epoch = acc, loss, train_loss, 0
        self.scheduler_calls = 0

    def train_round(self) -> tuple[int, float]:
        self.epoch += 1
        return self.epoch, self.train_loss

    def evaluate(self) -> Evaluation:
        i = self.epoch - 1
        return Evaluation({"val_accuracy": self.acc[i], "val_loss": self.loss[i]}, {"epoch": self.epoch})

    def snapshot(self) -> dict:
        return {"epoch": self.epoch}

    def predict_unlabelled(self) -> list:
        return [("g", self.epoch)]

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        self.scheduler_calls += 1


class Recorder:
    def __init__(self, prune_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.prune_at = prune_at

    def on_start(self, rounds: int) -> None:
        self.rounds = rounds

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.steps.append(step)
        return step == self.prune_at


def test_state_and_outputs_come_from_the_best_epoch_not_the_last() -> None:
    trainer = FakeTrainer([0.5, 0.8, 0.8, 0.6], [1.0, 0.8, 0.7, 0.6])
    result = fit(trainer, 4, Recorder(), "val_accuracy")
    assert result.best == 1 and result.state == {"epoch": 2} and result.outputs == {"epoch": 2}
    assert result.predictions == [("g", 2)]
    assert [p["step"] for p in result.history] == [1, 2, 3, 4] and result.stopped is None
    assert trainer.scheduler_calls == 4


def test_early_stop_at_the_overfitting_onset() -> None:
    trainer = FakeTrainer([0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7], [1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    result = fit(trainer, 7, Recorder(), "val_accuracy", early_stop=OnsetRule(s=3, alpha=None))
    assert result.stopped == "overfit" and len(result.history) == 5


def test_pruning_stops_and_keeps_the_curve() -> None:
    reporter = Recorder(prune_at=2)
    result = fit(FakeTrainer([0.1] * 5, [1.0] * 5), 5, reporter, "val_accuracy")
    assert result.stopped == "pruned" and reporter.steps == [1, 2] and len(result.history) == 2


def test_nan_loss_is_divergence() -> None:
    with pytest.raises(Diverged, match="training loss is nan"):
        fit(FakeTrainer([0.1], [1.0], train_loss=math.nan), 1, Recorder(), "val_accuracy")
    with pytest.raises(Diverged, match="validation loss is inf"):
        fit(FakeTrainer([0.1], [math.inf]), 1, Recorder(), "val_accuracy")


def test_keep_state_false_keeps_no_weights() -> None:
    result = fit(FakeTrainer([0.5, 0.8], [1.0, 0.8]), 2, Recorder(), "val_accuracy", keep_state=False)
    assert result.state is None and result.best == 1


def test_divergence_after_a_good_epoch_keeps_the_best() -> None:
    trainer = FakeTrainer([0.5, 0.8, 0.6], [1.0, 0.8, math.nan])
    result = fit(trainer, 5, Recorder(), "val_accuracy")
    assert result.stopped == "diverged" and result.best == 1 and result.state == {"epoch": 2}
    assert len(result.history) == 2


def test_keep_copy_copies_what_training_would_change_and_keeps_container_types() -> None:
    import collections

    import torch

    from sweeplab.trainers.loop import keep_copy

    model = torch.nn.Linear(2, 1)
    kept = keep_copy(model)  # a model gives its state dict, copied
    assert hasattr(kept, "_metadata") and set(kept) == {"weight", "bias"}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(kept["weight"], model.weight)
    counts = keep_copy(collections.defaultdict(list, a=[torch.zeros(1)]))
    assert isinstance(counts, collections.defaultdict) and counts["b"] == []
    Pair = collections.namedtuple("Pair", "x y")
    assert keep_copy(Pair(1, [2])) == Pair(1, [2])
    assert keep_copy(lambda: {"built": 1}) == {"built": 1}  # built only when kept
