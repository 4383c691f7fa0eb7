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
  best evaluation, since a trial's value is its best epoch, not its last;
* once the sweep's time budget is spent (the reporter's ``out_of_time``) the trial stops at its
  evaluation (``stopped = "time budget"``) and keeps its best evaluation;
* the trial's resume state (``env.resume``, :mod:`sweeplab.core.resume`) is saved at the first
  evaluation after it is due, and at a stop asked for by a signal (:mod:`sweeplab.core.stopping`),
  which the built-in trainers answer before their next batch; an attempt that finds a saved state
  goes on from it, with the curve so far, the best evaluation and its kept state, the trainer's
  model, optimizer, scheduler, scaler, generators and its place in the data.

The seam passes plain values (floats, dicts, numpy arrays), so the loop knows nothing of Optuna
or MLflow.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import random
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from sweeplab.boundary import engine_code, refuse, task_code
from sweeplab.core import Direction, FitResult, Reporter, Resumed, Resumption, RoundTrainer, TrialEnv, stopping
from sweeplab.core.curves import OnsetRule, best_index, overfit_onset
from sweeplab.errors import UsageError

__all__ = ["Diverged", "Progress", "StaleResumeState", "TrialStopped", "fit", "fit_and_close", "keep_copy", "random_states",
           "seed_everything", "set_random_states"]

#: ``FitResult.stopped`` of a trial stopped because the sweep's time budget was spent.
TIME_BUDGET = "time budget"


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot go on."""


class StaleResumeState(RuntimeError):
    """The trial's saved resume state no longer loads into its trainer (the model changed since it
    was saved): the attempt is run again from the start."""


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
                 early_stop: OnsetRule | None = None, keep_state: bool = True, resume: Resumption | None = None,
                 point: Callable[[], float] | None = None) -> None:
        self.reporter, self.metric, self.direction = reporter, metric, direction
        self.early_stop, self.keep_state, self.resumption = early_stop, keep_state, resume
        self.point = point  # where training stands (a trainer's resume_point); else the last evaluation's step
        self.result = FitResult(history=[], best=None)
        self.resumed: Resumed | None = None
        self._held = -math.inf  # the last step a restored curve holds: a report of it again is skipped
        self.saved_at_stop = False  # a stop signal was answered at an evaluation, its resume state saved
        self.reported_again = False  # a resumed function reported a step its restored curve holds

    def __call__(self, step: int | float, metrics: Mapping[str, float], state: Any = None,
                 outputs: Mapping[str, Any] | None = None, predictions: Any = None, resume: Any = None) -> bool:
        """:meth:`report`: a user's training function is handed the progress itself as its
        ``report``, so that it can also read :attr:`resumed`."""
        return self.report(step, metrics, state, outputs, predictions, resume)

    def take_resume_state(self) -> Any | None:
        """Go on from the resume state an earlier attempt saved, if there is one
        (:meth:`restore`); returns the trainer's state in it, ``None`` when there is none."""
        if self.resumption is None:
            return None
        with engine_code():  # reading where the state is kept is sweeplab's
            saved = self.resumption.take()
        if saved is None:
            return None
        self.restore(saved)
        return saved["trainer"]

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Go on from ``saved``, a resume state: the curve so far, the best evaluation and what
        was kept there are restored, the reporter hears the evaluations made, and
        :attr:`resumed` holds the step and the trainer's state."""
        progress = saved["progress"]
        self.result = FitResult(history=list(progress["history"]), best=progress["best"], state=progress["state"],
                                outputs=dict(progress["outputs"]), predictions=progress["predictions"])
        self.resumed = Resumed(step=saved["at"], state=saved["trainer"])
        self._held = self.result.history[-1]["step"] if self.result.history else -math.inf
        on_resume = getattr(self.reporter, "on_resume", None)
        if on_resume is not None:
            with engine_code():
                on_resume(self.result.history, saved["at"])

    def resume_due(self) -> bool:
        """Whether :meth:`report` would now save the resume state handed to it (a save is due, or
        a stop was asked for): a trainer whose state is a checkpoint its framework writes only
        after the evaluation (a transformers ``Trainer``'s) asks first, and has it written then."""
        return self.resumption is not None and (stopping.requested() is not None or self.resumption.due())

    def save_resume_state(self, trainer_state: Any, at: float | None = None) -> None:
        """Save the resume state: this fit's curve, best evaluation and kept state, with
        ``trainer_state`` (a value, or a callable that builds it: the trainer's), saved at ``at``
        (default: where :attr:`point` says training stands, else the last evaluation's step; a
        trainer saving between two evaluations, at a stop, says where it is). A state that
        cannot be written is logged and training goes on: the trial loses only its resumability."""
        if self.resumption is None:
            return
        built = task_code(trainer_state) if callable(trainer_state) else trainer_state
        result = self.result
        if at is None:
            at = self.point() if self.point is not None else result.history[-1]["step"] if result.history else 0
        saved = {"progress": {"history": result.history, "best": result.best, "state": result.state,
                              "outputs": result.outputs, "predictions": result.predictions},
                 "trainer": built, "at": at}
        try:
            self.resumption.save(saved)
        except Exception as exc:  # a full disk or a lost mount: the trial can still finish
            logging.getLogger(__name__).warning("could not save the trial's resume state: %s", exc)

    @property
    def stopped(self) -> bool:
        return self.result.stopped is not None

    def report(self, step: int | float, metrics: Mapping[str, float], state: Any = None,
               outputs: Mapping[str, Any] | None = None, predictions: Any = None, resume: Any = None) -> bool:
        """Hear one evaluation at ``step`` (the epoch, or the optimizer step): ``metrics`` by name,
        ``state`` to keep if it is the best so far (a value, or a callable that builds it),
        ``outputs`` for the tracker's artifacts (``y_true``, ``y_pred``...), ``predictions`` on
        the unlabelled split, ``resume`` the trainer's resume state (a value, or a callable that
        builds it), saved when due and at a stop signal. Returns whether to stop: pruned, past
        the overfitting onset, out of the sweep's time, or a loss that became non-finite (the
        trial keeps its best evaluation). A stop signal raises
        :class:`~sweeplab.core.stopping.StoppedAtStep` once the resume state is saved."""
        if step <= self._held:  # a resumed function that started over: the curve holds this step already
            if not self.reported_again:
                logging.getLogger(__name__).warning(
                    "step %g was reported again after the trial resumed from step %g: the training function ignores "
                    "report.resumed; reports up to that step are skipped", step, self._held)
            self.reported_again = True
            return False
        stopped = self._hear(step, metrics, state, outputs, predictions)
        if stopped:
            return True
        if stopping.requested() is not None:
            stopping.answer()  # stopping here: the save that follows is not cut short
        if resume is not None and self.resumption is not None:
            if stopping.requested() is not None or self.resumption.due():
                self.save_resume_state(resume)
        if stopping.requested() is not None:
            self.saved_at_stop = resume is not None
            stopping.check()
        return False

    def _hear(self, step: int | float, metrics: Mapping[str, float], state: Any, outputs: Mapping[str, Any] | None,
              predictions: Any) -> bool:
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
        if not self.stopped and _out_of_time(self.reporter):
            self.result.stopped, self.result.stop_reason = TIME_BUDGET, "stopped: time budget"
        return self.stopped


def _out_of_time(reporter: Reporter) -> bool:
    """Whether the sweep's time budget is spent, for a reporter that knows one."""
    out_of_time = getattr(reporter, "out_of_time", None)
    if out_of_time is None:
        return False
    with engine_code():
        return bool(out_of_time())


def fit(
    trainer: RoundTrainer,
    rounds: int,
    reporter: Reporter,
    metric: str,
    direction: Direction = "maximize",
    early_stop: OnsetRule | None = None,
    keep_state: bool = True,
    resume: Resumption | None = None,
) -> FitResult:
    """Train ``rounds`` rounds, evaluating after each; see the module docstring for the rules."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    progress = Progress(reporter, metric, direction, early_stop, keep_state, resume, getattr(trainer, "resume_point", None))
    reporter.on_start(rounds)
    resume_state = getattr(trainer, "resume_state", None)  # a trainer without one is not resumable
    if resume_state is not None:
        _go_on(trainer, progress)
    try:
        for _ in range(rounds - len(progress.result.history)):
            step, train_loss = trainer.train_round()
            if not math.isfinite(train_loss):
                if progress.report(step, {"train_loss": train_loss}):
                    break
            evaluation = trainer.evaluate()
            metrics = {"train_loss": train_loss, **evaluation.metrics}
            if math.isfinite(metrics.get("val_loss", 0.0)):
                trainer.after_evaluation(evaluation.metrics)
            if progress.report(step, metrics, trainer.snapshot, evaluation.outputs, trainer.predict_unlabelled,
                               resume_state):
                break
    except stopping.StoppedAtStep:
        if resume_state is not None and not progress.saved_at_stop:  # raised between two batches
            progress.save_resume_state(resume_state)
        raise
    return progress.result


def _go_on(trainer: RoundTrainer, progress: Progress) -> None:
    """Put ``trainer`` where the trial's saved resume state left it (if there is one); a state
    it cannot take is :class:`StaleResumeState`."""
    if progress.resumption is None:
        return
    with engine_code():  # reading where the state is kept is sweeplab's
        saved = progress.resumption.take()
    if saved is None:
        return
    try:
        trainer.load_resume_state(saved["trainer"])  # type: ignore[attr-defined]
    except Exception as exc:
        raise StaleResumeState(f"the saved resume state no longer loads: {exc}") from exc
    progress.restore(saved)


def random_states() -> dict[str, Any]:
    """The state of Python's generator, and NumPy's and torch's (CPU and every CUDA device) when
    they are loaded: what a resumed trial needs to draw the same dropout masks and augmentations
    as one never interrupted."""
    states: dict[str, Any] = {"python": random.getstate()}
    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        states["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Mapping[str, Any]) -> None:
    """Put back the generators' states :func:`random_states` took."""
    random.setstate(states["python"])
    if "numpy" in states:
        import numpy

        numpy.random.set_state(states["numpy"])
    if "torch" in states:
        import torch

        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


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
                   early_stop=env.early_stop, keep_state=env.keep_state, resume=env.resume)
    finally:
        close = getattr(trainer, "close", None)
        if close is not None:
            close()
