"""A user's training function as a task: ``sweep run my_trainer.py:fit`` sweeps it like a built-in.

The function takes a configuration and a ``report`` callable::

    def fit(config, report):
        for epoch in range(1, config["epochs"] + 1):
            ...
            if report(epoch, {"train_loss": ..., "val_loss": ..., "val_accuracy": ...},
                      state=model.state_dict()):
                break

``config`` holds the trial's parameters (the space's searched and fixed values, over the defaults
its author declared). ``report(step, metrics, state=None)`` is
:meth:`~sweeplab.trainers.loop.Progress.report`, the same bookkeeping the built-in trainers go
through: every call is a point of the trial's curves in MLflow and a report to Optuna's pruner;
the state given with the best evaluation becomes the trial's checkpoint. It returns ``True`` when
the trial should stop (pruned, past its overfitting onset, or a loss became non-finite); a
function that ignores the answer is stopped by :class:`~sweeplab.trainers.loop.TrialStopped` at
its next ``report`` (one more epoch trained, none recorded). Whatever the function raises fails
its trial with that reason; the sweep goes on.

Long trials hand over their resume state, so that a trial killed, preempted or stopped by a
signal goes on where it stopped instead of from its first epoch::

    def fit(config, report):
        model, optimizer = build(config)
        start = 1
        if report.resumed is not None:  # a retry of this trial: go on from its saved state
            model.load_state_dict(report.resumed.state["model"])
            optimizer.load_state_dict(report.resumed.state["optimizer"])
            start = int(report.resumed.step) + 1
        for epoch in range(start, config["epochs"] + 1):
            ...
            if report(epoch, metrics, state=model.state_dict,
                      resume=lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()}):
                break

``resume`` (a value, or a callable that builds it) is saved every ``--checkpoint-minutes`` of
training, at the first ``report`` after that is due, and at the first ``report`` after a stop
signal (which then ends the trial as interrupted). A retried attempt finds it in
``report.resumed`` (a :class:`~sweeplab.core.Resumed`: the ``step`` of the last evaluation saved
and the ``state``), with the curve up to that step already recorded; a function that hands over
no resume state is run again from its start, as before. A function that finds the state no
longer fits its model (it was edited since) raises ``sweeplab.StaleResumeState``: the trial
then runs again from its start, with a warning.

Before each call Python's, NumPy's and torch's generators are seeded with the trial's seed, so a
trial runs the same again. A function may declare its name, metric, default space and defaults
with :func:`trainer`; undeclared, the task is named after the file or module and function
(``my_trainer.py:fit``) and judged by ``val_loss``, unless ``sweep run --metric`` names another.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sweeplab.core import Direction, FitResult, Loaded, Reporter, Task, TrialEnv, direction_of, evaluations_per_epoch
from sweeplab.trainers.loop import Progress, TrialStopped, seed_everything

__all__ = ["TRAINER_ATTRIBUTE", "TrainerInfo", "function_task", "trainer"]

#: The attribute :func:`trainer` sets on a function.
TRAINER_ATTRIBUTE = "__sweeplab_trainer__"

#: The metric a function is judged by when neither it nor ``--metric`` names one.
DEFAULT_METRIC = "val_loss"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TrainerInfo:
    """What a training function declares about itself (see :func:`trainer`)."""

    name: str | None = None
    metric: str | None = None
    direction: Direction | None = None
    space: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    x_axis: str = "epoch"

    def __post_init__(self) -> None:
        if self.direction not in (None, "maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {self.direction!r}")
        if self.name is not None and not self.name.strip():
            raise ValueError("a trainer's name must not be empty")
        if not self.x_axis.isidentifier():
            raise ValueError(f"x_axis must name what a step counts, such as 'epoch' or 'step', got {self.x_axis!r}")


def trainer(fn: F | None = None, *, name: str | None = None, metric: str | None = None,
            direction: Direction | None = None, space: str | None = None,
            defaults: Mapping[str, Any] | None = None, x_axis: str = "epoch") -> Any:
    """Declare what sweeplab should know about a training function; usable bare or with arguments::

        @sweeplab.trainer(name="digits-mlp", metric="val_accuracy", space="digits.toml")
        def fit(config, report): ...

    ``name`` is the task name (``sweep best --task digits-mlp``); ``metric`` the validation
    metric that picks each trial's best evaluation and the best trial, ``direction`` whether it
    is maximised (default: :func:`~sweeplab.core.direction_of`); ``space`` the default space file,
    relative to the function's file; ``defaults`` values every trial's config starts from;
    ``x_axis`` what the function's steps count (``"epoch"``, or ``"step"`` for optimizer steps, as
    a transformers Trainer counts): the summary's ``best_{x_axis}`` and the pictures' axis."""
    info = TrainerInfo(name=name, metric=metric, direction=direction, space=space, defaults=dict(defaults or {}),
                       x_axis=x_axis)

    def mark(function: F) -> F:
        setattr(function, TRAINER_ATTRIBUTE, info)
        return function

    return mark(fn) if fn is not None else mark


def _fit(function: Callable[..., Any], loaded: Loaded, config: Mapping[str, Any], env: TrialEnv,
         reporter: Reporter) -> FitResult:
    """One trial: call the function with the config and a ``report`` bound to the trial (the
    :class:`~sweeplab.trainers.loop.Progress` itself, which also tells what it resumes from)."""
    progress = Progress(reporter, env.metric, env.direction, env.early_stop, env.keep_state, env.resume)
    reporter.on_start(evaluations_per_epoch(config) or 0)
    seed_everything(env.trial_seed)
    progress.take_resume_state()
    try:
        function(dict(config), progress)
    except TrialStopped:
        pass  # the function went on after report() said stop; the trial ends where it was told
    except SystemExit as exc:  # sys.exit() in a trainer ends its trial, not the sweep
        raise RuntimeError(f"the training function called sys.exit({exc.code!r})") from None
    if not progress.result.history:
        raise RuntimeError("the training function returned without calling report()")
    return progress.result


def _resolve_space(function: Callable[..., Any], space: str | None) -> str:
    """A declared space file, relative to the function's file; ``""`` when none is declared."""
    if not space:
        return ""
    path = Path(space)
    if not path.is_absolute():
        try:
            path = Path(inspect.getfile(function)).resolve().parent / path
        except (TypeError, OSError):
            pass
    return str(path)


def function_task(function: Callable[..., Any], name: str) -> Task:
    """The task that sweeps ``function`` (see the module docstring); ``name`` unless the function
    declares one."""
    if not callable(function):
        raise TypeError(f"{name}: expected a training function, got {type(function).__name__}")
    info: TrainerInfo = getattr(function, TRAINER_ATTRIBUTE, None) or TrainerInfo()
    metric = info.metric or DEFAULT_METRIC
    task_name = info.name or name
    doc = inspect.getdoc(function) or ""
    return Task(
        name=task_name,
        summary=doc.splitlines()[0] if doc else f"the training function {name}",
        metric=metric,
        direction=info.direction or direction_of(metric),
        defaults=dict(info.defaults),
        default_space=_resolve_space(function, info.space),
        sample_data=None,
        load=lambda data_dir, seed, val_fraction, settings: Loaded(payload=None, reports=(), fingerprint=task_name),
        prepare=lambda loaded, config, env: None,
        fit=partial(_fit, function),
        x_axis=info.x_axis,
        open=True,
    )
