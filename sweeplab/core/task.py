"""What a task is, in types: the contract between the sweep engine (``sweeps``), the trainers
(``trainers``), the tracker and a user's own trainer.

* :class:`Task` -- everything the engine needs to know about a task: how to read and prepare its
  data, how to fit one configuration, the metric a trial is judged by and its direction, every
  hyperparameter it accepts (its default and its :class:`Limit`), its default space.
* :class:`TrialEnv` -- where and how one trial runs (device, precision, seeds, early stop), and
  :class:`DataCache`, what a trial needs of the prepared-data cache.
* :class:`Evaluation`, :class:`FitResult` -- what a fit reports and returns.
* :class:`Reporter` -- what hears each evaluation (the engine: curves to MLflow, pruning by Optuna).

The module imports nothing of sweeplab outside :mod:`sweeplab.core`. The one outside type it
names, torch's device, is imported for type checkers alone, so importing it costs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sweeplab.core.curves import OnsetRule
from sweeplab.core.data_report import ReadReport
from sweeplab.core.direction import Direction
from sweeplab.core.resume import Resumption

if TYPE_CHECKING:
    import torch

__all__ = [
    "BOOLEAN",
    "FRACTION",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "DataCache",
    "Evaluation",
    "FitResult",
    "Limit",
    "Loaded",
    "Reporter",
    "RoundTrainer",
    "Scalar",
    "Task",
    "TrialEnv",
    "evaluations_per_epoch",
]

Scalar = int | float | str | bool
T = TypeVar("T")


@dataclass(frozen=True)
class Limit:
    """The values one hyperparameter accepts: a set of ``choices``, or numbers between optional
    bounds (``low_open`` / ``high_open`` exclude a bound: ``> 0``, ``[0, 1)``), integers only
    when ``integer``. With ``listed`` the value is a comma-separated list (``"2,3,4"``, also an
    int or a sequence) whose every item meets the bounds.

    The combination is validated on construction, so a task cannot declare a limit no value
    meets."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[Scalar, ...] | None = None
    listed: bool = False

    def __post_init__(self) -> None:
        if self.choices is not None:
            self._validate_choices()
        else:
            self._validate_bounds()

    def _validate_choices(self) -> None:
        if not self.choices:
            raise ValueError("a Limit's choices must not be empty")
        numeric = self.low is not None or self.high is not None or self.low_open or self.high_open
        if numeric or self.integer or self.listed:
            raise ValueError("a Limit has either choices or numeric bounds, not both")

    def _validate_bounds(self) -> None:
        if (self.low_open and self.low is None) or (self.high_open and self.high is None):
            raise ValueError("an open bound needs that bound")
        if self.low is not None and self.high is not None:
            empty = self.low > self.high or (self.low == self.high and (self.low_open or self.high_open))
            if empty:
                raise ValueError(f"a Limit from {self.low} to {self.high} accepts no value")

    @classmethod
    def one_of(cls, *choices: Scalar) -> Limit:
        """A limit to the given values (``Limit.one_of("high", "low")``)."""
        return cls(choices=tuple(choices))

    def describe(self) -> str:
        """The expectation in words: ``an integer >= 1``, ``a number in [0, 1)``,
        ``one of high, low``, ``a comma-separated list of integers >= 1``."""
        if self.choices is not None:
            return "one of " + ", ".join(_choice_text(c) for c in self.choices)
        noun = "integer" if self.integer else "number"
        bounds = self._bounds_text()
        if self.listed:
            return f"a comma-separated list of {noun}s{bounds}"
        return f"{'an' if self.integer else 'a'} {noun}{bounds}"

    def _bounds_text(self) -> str:
        """`` in [0, 1)``, `` >= 1``, `` < 5``, or nothing when unbounded."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take."""
        if self.choices is not None:
            return any(_same(value, choice) for choice in self.choices)
        if self.listed:
            items = _list_items(value)
            return bool(items) and all(self._accepts_number(item) for item in items)
        return self._accepts_number(value)

    def _accepts_number(self, value: Any) -> bool:
        """A finite number (not a bool) within the bounds; a whole number when ``integer``
        (``3.0`` counts: the trainers read it with ``int()``)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


#: Counts: batch sizes, epochs, layers, widths.
POSITIVE_INT = Limit(low=1, integer=True)
#: Counts where 0 means "none" or "the default": warm-up steps, evaluation interval, patience.
NON_NEGATIVE_INT = Limit(low=0, integer=True)
#: Learning rates and other strictly positive scales.
POSITIVE = Limit(low=0, low_open=True)
#: Weight decay, clipping norms (0 turns clipping off), rotation angles.
NON_NEGATIVE = Limit(low=0)
#: Dropout and warm-up shares: a probability below 1.
FRACTION = Limit(low=0, high=1, high_open=True)
#: Switches, which a space file must write as ``true`` / ``false`` (a string ``"false"`` is truthy).
BOOLEAN = Limit.one_of(True, False)


def _same(value: Any, choice: Scalar) -> bool:
    """Equal, without ``True`` standing for ``1`` (or ``0`` for ``False``)."""
    return isinstance(value, bool) == isinstance(choice, bool) and value == choice


def _choice_text(choice: Scalar) -> str:
    """A choice as a space file writes it (``true``, not ``True``)."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _list_items(value: Any) -> tuple[Any, ...]:
    """The items of a listed value: ``"2,3,4"`` -> ``(2, 3, 4)``, ``3`` -> ``(3,)``, a list as
    it is; ``()`` when it has none or an item is not a number."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        numbers = [_parse_number(part) for part in parts]
        return () if None in numbers else tuple(numbers)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _parse_number(text: str) -> int | float | None:
    """``"2"`` -> ``2``, ``"2.5"`` -> ``2.5``, anything else -> ``None``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


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
        """The model state to keep if this evaluation is the best; :func:`fit` keeps a copy on the
        CPU (:func:`keep_copy`), so this may return live tensors (``model.state_dict()``)."""

    def predict_unlabelled(self) -> Any:
        """Predictions for the unlabelled split (``None`` if there is none), taken at the best
        evaluation."""

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        """Hook for schedulers that follow a validation metric (e.g. ReduceLROnPlateau)."""


class Reporter(Protocol):
    """Hears the plan (how many rounds) and every evaluation; ``on_eval`` returns ``True`` when
    the trial should be pruned, ``out_of_time`` whether the sweep's time budget is spent (the
    trial stops and keeps its best evaluation). ``on_resume`` hears the evaluations an earlier
    attempt of the trial made and the step it goes on from, when this attempt resumes."""

    def on_start(self, rounds: int) -> None: ...

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool: ...

    def on_resume(self, history: list[dict[str, float]], step: float) -> None: ...

    def out_of_time(self) -> bool: ...


@dataclass
class FitResult:
    """A finished (or stopped) fit: the curve, where it was best and what was kept there."""

    history: list[dict[str, float]]
    best: int | None
    state: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    predictions: Any = None
    stopped: str | None = None  # "pruned", "overfit", "diverged", "time budget" or None (ran every round)
    stop_reason: str | None = None  # for "diverged": which loss became non-finite, and where
    x_axis: str | None = None  # the curve's axis as the trainer named it (a command's printed epoch=); None: the task's


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


class DataCache(Protocol):
    """What a trial needs of the prepared-data cache (:class:`sweeplab.datasets.cache.PrepCache`):
    data prepared once per sweep by the settings it depends on, and a count of the items a
    preparation has done (the console's progress bar)."""

    def get(self, kind: str, key: Mapping[str, Any], build: Callable[[], T], label: str | None = None,
            total: int | None = None) -> T:
        """The object prepared for ``key``: kept, or built by ``build()`` (shown as ``label`` of
        ``total`` items) and kept."""

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items of the preparation under way."""


@dataclass(frozen=True)
class TrialEnv:
    """Where and how a trial runs; plain values shared by every trial of a sweep. ``metric`` and
    ``direction`` pick a trial's best evaluation (the task's, unless ``sweep run --metric``)."""

    device: torch.device
    precision: str
    cache: DataCache
    seed: int
    trial_seed: int
    early_stop: OnsetRule | None
    keep_state: bool = True
    metric: str = "val_accuracy"
    direction: Direction = "maximize"
    compile: bool = False  # torch.compile the trial's model (``sweep run --compile``)
    resume: Resumption | None = None  # the trial's resume state: taken back at the start, saved as it trains


def evaluations_per_epoch(config: Mapping[str, Any]) -> int | None:
    """The evaluations a trial of ``config`` makes when it evaluates once per epoch: its
    ``epochs`` (a whole number); ``None`` when the config does not say, or when it evaluates
    every ``eval_every`` optimizer steps instead (a count the config alone does not give: it
    depends on the data's size and the batch size). A task that counts otherwise declares its
    own (:attr:`Task.evaluations`)."""
    epochs = config.get("epochs")
    if config.get("eval_every") or isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs):
        return None
    return int(epochs) if epochs == int(epochs) and epochs > 0 else None


@dataclass(frozen=True)
class Task:
    """Everything the sweep engine needs to know about a task.

    ``load(data_dir, seed, val_fraction, settings)`` reads and validates the data (``settings``
    are the defaults with the space's fixed values, e.g. a ``layout``); ``x_axis`` names the
    curves' step (``epoch``, or ``step`` for tasks evaluated every N optimizer steps).
    ``save_checkpoint(loaded, config, state, folder)`` writes the best state in the task's own
    format (default: ``model.pt`` holding the state dict); ``evaluate_test(loaded, config,
    folder, env)`` scores such a folder on the held-out test split, once, after the search.
    ``evaluations(config)`` is how many evaluations a trial of ``config`` makes (``None``: not
    known from the config): what Hyperband's budget and the progress bar count.
    ``limits`` says what each hyperparameter accepts (:class:`Limit`); a sweep checks its space
    against them before any data is prepared, so that a value no trial can run with is one clear
    error rather than a sweep of failed trials. A parameter without a limit is not checked.

    An ``open`` task (a user's training function, see :mod:`sweeplab.trainers.function`) accepts
    any parameter its space names and any metric its trainer reports: ``defaults`` then holds
    only what its author declared. ``needs`` names the values every trial's config must hold (the
    ``{name}`` fields of a command, :mod:`sweeplab.trainers.command`): a space and defaults that
    lack one are refused before any trial. An ``own_process`` task's trials train in a process of
    their own (a command): the sweep's process then uses the CPU, so that it opens no GPU context
    beside the program's (hundreds of MB, or the whole card in exclusive mode) and measures no
    memory that is not the trial's.
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
    open: bool = False
    evaluations: Callable[[Mapping[str, Any]], int | None] = evaluations_per_epoch
    needs: frozenset[str] = frozenset()
    own_process: bool = False  # the trial trains in a process of its own (a command): the sweep's opens no GPU

    @property
    def best_metric(self) -> str:
        """The summary metric holding the trial's value, e.g. ``best_val_accuracy``."""
        return f"best_{self.metric}"
