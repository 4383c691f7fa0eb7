"""The training loop every task shares: train a round, evaluate, report, keep the best.

A task supplies a :class:`RoundTrainer` (what one round of training and one evaluation mean for
its model and data); :func:`fit` runs it for a number of rounds (epochs, or blocks of optimizer
steps) and owns what must be the same for every task:

* the best evaluation is the best value of the task's metric, ties to the earliest
  (:func:`sweeplab.tracker.curves.best_index`), and the model state and outputs are kept from
  that evaluation, not the last;
* after each evaluation the :class:`Reporter` hears the point (it logs the curve and may say
  "prune": the trial is far behind others);
* the trial stops early once the validation loss shows an overfitting onset
  (:func:`sweeplab.tracker.curves.overfit_onset`), when an ``early_stop`` rule is given;
* a non-finite training or validation loss ends the trial: with :class:`Diverged` when no
  evaluation was finite yet, else as a stopped trial (``stopped = "diverged"``) that keeps its
  best evaluation, since a trial's value is its best epoch, not its last.

The seam passes plain values (floats, dicts, numpy arrays), so the loop knows nothing of Optuna
or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sweeplab.errors import SweeplabError
from sweeplab.tracker.curves import Direction, OnsetRule, best_index, overfit_onset

__all__ = ["Diverged", "Evaluation", "FitResult", "Reporter", "RoundTrainer", "fit"]


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot go on."""


@dataclass
class Evaluation:
    """One evaluation: metrics by name (``val_loss``, ``val_accuracy``, ...) and the raw outputs
    the tracker may turn into artifacts (``y_true``, ``y_prob`` ...)."""

    metrics: dict[str, float]
    outputs: dict[str, Any] = field(default_factory=dict)


class RoundTrainer(Protocol):
    """What a task implements to be trained by :func:`fit`."""

    def train_round(self) -> tuple[int, float]:
        """Train until the next evaluation; return ``(step, mean training loss)``, where step is
        the epoch number or the optimizer step, the x axis of the curves."""

    def evaluate(self) -> Evaluation:
        """Evaluate on the validation split."""

    def snapshot(self) -> dict[str, Any]:
        """The model state (on the CPU) to keep if this evaluation is the best."""

    def predict_unlabelled(self) -> Any:
        """Predictions for the unlabelled split (``None`` if there is none), taken at the best
        evaluation."""

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        """Hook for schedulers that follow a validation metric (e.g. ReduceLROnPlateau)."""


class Reporter(Protocol):
    """Hears the plan (how many rounds) and every evaluation; ``on_eval`` returns ``True`` when
    the trial should be pruned."""

    def on_start(self, rounds: int) -> None: ...

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool: ...


@dataclass
class FitResult:
    """A finished (or stopped) fit: the curve, where it was best and what was kept there."""

    history: list[dict[str, float]]
    best: int | None
    state: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    predictions: Any = None
    stopped: str | None = None  # "pruned", "overfit", "diverged" or None (ran every round)
    stop_reason: str | None = None  # for "diverged": which loss became non-finite, and where


def fit(
    trainer: RoundTrainer,
    rounds: int,
    reporter: Reporter,
    metric: str,
    direction: Direction = "maximize",
    early_stop: OnsetRule | None = None,
    keep_state: bool = True,
) -> FitResult:
    """Train ``rounds`` rounds, evaluating after each; see the module docstring for the rules."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    result = FitResult(history=[], best=None)
    reporter.on_start(rounds)
    for _ in range(rounds):
        step, train_loss = trainer.train_round()
        problem = None if math.isfinite(train_loss) else f"training loss is {train_loss} at step {step}"
        evaluation = None if problem else trainer.evaluate()
        val_loss = evaluation.metrics.get("val_loss", 0.0) if evaluation else 0.0
        if not problem and not math.isfinite(val_loss):
            problem = f"validation loss is {val_loss} at step {step}"
        if problem:
            if result.best is None:
                raise Diverged(problem)
            result.stopped, result.stop_reason = "diverged", problem
            break
        if metric not in evaluation.metrics:
            raise SweeplabError(f"metric {metric!r} is not one this task reports ({', '.join(sorted(evaluation.metrics))})")
        point = {"step": float(step), "train_loss": float(train_loss), **evaluation.metrics}
        result.history.append(point)
        trainer.after_evaluation(evaluation.metrics)
        best = best_index([p[metric] for p in result.history], direction)
        if best == len(result.history) - 1 and best != result.best:
            result.best = best
            result.outputs = evaluation.outputs
            result.predictions = trainer.predict_unlabelled()
            if keep_state:
                result.state = trainer.snapshot()
        if reporter.on_eval(step, point):
            result.stopped = "pruned"
            break
        if early_stop is not None and "val_loss" in evaluation.metrics:
            if overfit_onset([p["val_loss"] for p in result.history], early_stop) is not None:
                result.stopped = "overfit"
                break
    return result
