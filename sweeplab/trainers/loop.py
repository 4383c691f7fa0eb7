"""The training loop every task shares: train a round, evaluate, report, keep the best.

A task supplies a :class:`~sweeplab.core.RoundTrainer` (what one round of training and one evaluation mean for
its model and data); :func:`fit` runs it for a number of rounds (epochs, or blocks of optimizer
steps) and owns what must be the same for every task:

* the best evaluation is the best value of the task's metric, ties to the earliest
  (:func:`sweeplab.core.curves.best_index`), and the model state and outputs are kept from
  that evaluation, not the last;
* after each evaluation the :class:`~sweeplab.core.Reporter` hears the point (it logs the curve and may say
  "prune": the trial is far behind others);
* the trial stops early once the validation loss shows an overfitting onset
  (:func:`sweeplab.core.curves.overfit_onset`), when an ``early_stop`` rule is given;
* a non-finite training or validation loss ends the trial: with :class:`Diverged` when no
  evaluation was finite yet, else as a stopped trial (``stopped = "diverged"``) that keeps its
  best evaluation, since a trial's value is its best epoch, not its last.

The seam passes plain values (floats, dicts, numpy arrays), so the loop knows nothing of Optuna
or MLflow.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import random
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from sweeplab.boundary import engine_code, refuse, task_code
from sweeplab.core import Direction, FitResult, Reporter, RoundTrainer, TrialEnv
from sweeplab.core.curves import OnsetRule, best_index, overfit_onset
from sweeplab.errors import UsageError

__all__ = ["Diverged", "Progress", "TrialStopped", "fit", "fit_and_close", "keep_copy", "seed_everything"]


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot go on."""


class TrialStopped(Exception):
    """Raised by :meth:`Progress.report` when it is called again after it answered "stop": a
    trainer that ignores the answer ends there, as pruned or stopped at its overfitting onset, and
    keeps its best evaluation."""


def keep_copy(state: Any) -> Any:
    """A copy of ``state`` that later training cannot change: tensors detached and copied to the
    CPU (a copy on the GPU per new best would double its memory), containers copied item by item
    (their type and attributes kept: a state dict's ``_metadata``), anything else deep-copied.
    A function or method is called first, so that the state is built only when it is kept; an
    object with a ``state_dict()`` (a model, an optimizer) gives that."""
    if inspect.isfunction(state) or inspect.ismethod(state) or isinstance(state, functools.partial):
        state = task_code(state)
    elif not isinstance(state, Mapping) and callable(getattr(state, "state_dict", None)):
        state = task_code(state.state_dict)
    return _copied(state)


def _copied(state: Any) -> Any:
    if hasattr(state, "detach") and hasattr(state, "to"):  # a torch tensor, without importing torch here
        return state.detach().to("cpu", copy=True)
    if isinstance(state, MutableMapping):
        out = copy.copy(state)
        for key in list(out):
            out[key] = _copied(state[key])
        return out
    if isinstance(state, Mapping):
        return {key: _copied(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_copied(value) for value in state]
    if isinstance(state, tuple):
        items = [_copied(value) for value in state]
        return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)
    return copy.deepcopy(state)


class Progress:
    """The bookkeeping of one fit, fed one evaluation at a time (see the module docstring for the
    rules): the built-in loop (:func:`fit`) and a user's training function (its ``report``) both
    feed it, so both keep the best evaluation, its state and outputs, prune, stop at the onset and
    end on a non-finite loss in the same way.

    :meth:`report` returns ``True`` when the trainer should stop; called again after that, it
    raises :class:`TrialStopped`. :attr:`result` is the fit so far."""

    def __init__(self, reporter: Reporter, metric: str, direction: Direction = "maximize",
                 early_stop: OnsetRule | None = None, keep_state: bool = True) -> None:
        self.reporter, self.metric, self.direction = reporter, metric, direction
        self.early_stop, self.keep_state = early_stop, keep_state
        self.result = FitResult(history=[], best=None)

    @property
    def stopped(self) -> bool:
        return self.result.stopped is not None

    def report(self, step: int | float, metrics: Mapping[str, float], state: Any = None,
               outputs: Mapping[str, Any] | None = None, predictions: Any = None) -> bool:
        """Hear one evaluation at ``step`` (the epoch, or the optimizer step): ``metrics`` by name,
        ``state`` to keep if it is the best so far (a value, or a callable that builds it),
        ``outputs`` for the tracker's artifacts (``y_true``, ``y_pred``...), ``predictions`` on
        the unlabelled split. Returns whether to stop: pruned, past the overfitting onset, or a
        loss that became non-finite (the trial keeps its best evaluation)."""
        if self.stopped:
            raise TrialStopped(self.result.stopped)
        values = {str(k): float(v) for k, v in metrics.items()}
        bad = next((k for k in ("train_loss", "val_loss") if k in values and not math.isfinite(values[k])), None)
        if bad is not None:
            problem = f"{'training' if bad == 'train_loss' else 'validation'} loss is {values[bad]} at step {step:g}"
            if self.result.best is None:
                raise Diverged(problem)
            self.result.stopped, self.result.stop_reason = "diverged", problem
            return True
        if self.metric not in values:
            refuse(UsageError(f"metric {self.metric!r} is not one this task reports ({', '.join(sorted(values))}); "
                             "every evaluation must report the metric that --metric names"))
        point = {"step": float(step), **values}
        history = self.result.history
        with engine_code():
            history.append(point)
            best = best_index([p[self.metric] for p in history], self.direction)
            new_best = best == len(history) - 1 and best != self.result.best
        if new_best:
            self.result.best = best
            self.result.outputs = dict(outputs or {})
            self.result.predictions = task_code(predictions) if callable(predictions) else predictions
            if self.keep_state and state is not None:  # the trainer's state: what cannot be copied is the trainer's
                self.result.state = task_code(keep_copy, state)
        if self.reporter.on_eval(int(step), point):
            self.result.stopped = "pruned"
        elif self.early_stop is not None and "val_loss" in values:
            with engine_code():
                if overfit_onset([p["val_loss"] for p in history], self.early_stop) is not None:
                    self.result.stopped = "overfit"
        return self.stopped


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
    progress = Progress(reporter, metric, direction, early_stop, keep_state)
    reporter.on_start(rounds)
    for _ in range(rounds):
        step, train_loss = trainer.train_round()
        if not math.isfinite(train_loss):
            if progress.report(step, {"train_loss": train_loss}):
                break
        evaluation = trainer.evaluate()
        metrics = {"train_loss": train_loss, **evaluation.metrics}
        if math.isfinite(metrics.get("val_loss", 0.0)):
            trainer.after_evaluation(evaluation.metrics)
        if progress.report(step, metrics, trainer.snapshot, evaluation.outputs, trainer.predict_unlabelled):
            break
    return progress.result


def seed_everything(seed: int) -> None:
    """Seed Python's generator, and NumPy's and torch's (all devices) when they are loaded: every
    built-in trainer has both, and a user's training function that uses neither need not pay for
    importing torch."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def fit_and_close(trainer: RoundTrainer, rounds: int, reporter: Reporter, env: TrialEnv) -> FitResult:
    """:func:`fit` with the sweep's metric and rules (``env``), then the trainer's ``close()``
    (when it has one: give the trial's memory back), however the fit ended."""
    try:
        return fit(trainer, rounds=rounds, reporter=reporter, metric=env.metric, direction=env.direction,
                   early_stop=env.early_stop, keep_state=env.keep_state)
    finally:
        close = getattr(trainer, "close", None)
        if close is not None:
            close()
