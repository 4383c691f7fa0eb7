"""The task registry: one :class:`Task` object per task, found by name.

A task names everything the sweep engine needs and nothing more: how to load its data (cheap,
validated before anything is written to a store), how to prepare it once per sweep (decoding,
tokenising, features, all cached), how to fit one configuration, the metric a trial
is judged by, every hyperparameter it accepts with its default, its default search space and its
packaged sample data. Adding a task is one new module that defines ``TASK`` and one line in
:data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweeplab.datasets.cache import PrepCache
from sweeplab.datasets.report import ReadReport
from sweeplab.errors import SweeplabError
from sweeplab.sweeps.limits import Limit
from sweeplab.tracker.curves import Direction, OnsetRule
from sweeplab.trainers.loop import Evaluation, FitResult, Reporter

__all__ = ["REGISTRY", "Loaded", "Task", "TrialEnv", "get_task", "register", "task_names"]

#: task name -> "module:attribute" of its Task object (imported on first use: torch and
#: transformers are slow to import, and a typo in the task name should fail fast).
REGISTRY: dict[str, str] = {
    "news": "sweeplab.trainers.news:TASK",
    "retrieval": "sweeplab.trainers.retrieval:TASK",
    "sentiment": "sweeplab.trainers.sentiment:TASK",
}


@dataclass(frozen=True)
class Loaded:
    """A task's data after reading: the task-specific payload and what the readers skipped.

    ``majority`` is the validation accuracy of always answering the validation split's most
    frequent class (its share of the split), the floor a classifier must clear to have learnt
    anything; ``None`` for tasks that are not classification."""

    payload: Any
    reports: tuple[ReadReport, ...]
    fingerprint: str
    class_names: tuple[str, ...] = ()
    majority: float | None = None


@dataclass(frozen=True)
class TrialEnv:
    """Where and how a trial runs; plain values shared by every trial of a sweep. ``metric`` and
    ``direction`` pick a trial's best evaluation (the task's, unless ``sweep run --metric``)."""

    device: torch.device
    precision: str
    cache: PrepCache
    seed: int
    trial_seed: int
    early_stop: OnsetRule | None
    keep_state: bool = True
    metric: str = "val_accuracy"
    direction: Direction = "maximize"


@dataclass(frozen=True)
class Task:
    """Everything the sweep engine needs to know about a task.

    ``load(data_dir, seed, val_fraction, settings)`` reads and validates the data (``settings``
    are the defaults with the space's fixed values, e.g. a ``layout``); ``x_axis`` names the
    curves' step (``epoch``, or ``step`` for tasks evaluated every N optimizer steps).
    ``save_checkpoint(loaded, config, state, folder)`` writes the best state in the task's own
    format (default: ``model.pt`` holding the state dict); ``evaluate_test(loaded, config,
    folder, env)`` scores such a folder on the held-out test split, once, after the search.
    ``limits`` says what each hyperparameter accepts (:class:`~sweeplab.sweeps.limits.Limit`);
    a sweep checks its space against them before any data is prepared, so that a value no trial
    can run with is one clear error rather than a sweep of failed trials. A parameter without a
    limit is not checked.
    """

    name: str
    summary: str
    metric: str
    direction: Direction
    defaults: Mapping[str, Any]
    default_space: str
    sample_data: Path | None
    load: Callable[[Path, int, float, Mapping[str, Any]], Loaded]
    prepare: Callable[[Loaded, Mapping[str, Any], TrialEnv], None]
    fit: Callable[[Loaded, Mapping[str, Any], TrialEnv, Reporter], FitResult]
    format_predictions: Callable[[Any], str] | None = None
    x_axis: str = "epoch"
    save_checkpoint: Callable[[Loaded, Mapping[str, Any], Mapping[str, Any], Path], None] | None = None
    evaluate_test: Callable[[Loaded, Mapping[str, Any], Path, TrialEnv], Evaluation | None] | None = None
    limits: Mapping[str, Limit] = field(default_factory=dict)

    @property
    def best_metric(self) -> str:
        """The summary metric holding the trial's value, e.g. ``best_val_accuracy``."""
        return f"best_{self.metric}"


_REGISTERED: dict[str, Task] = {}


def register(task: Task) -> None:
    """Make a task object defined outside sweeplab (a plug-in, a benchmark) runnable by name."""
    if task.name in REGISTRY or task.name in _REGISTERED:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _REGISTERED[task.name] = task


def task_names() -> list[str]:
    """Every registered task name."""
    return sorted({*REGISTRY, *_REGISTERED})


def get_task(name: str) -> Task:
    """The registered task called ``name``; a clear error naming the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in REGISTRY:
        raise SweeplabError(f"unknown task {name!r} (expected one of: {', '.join(task_names())})")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)
