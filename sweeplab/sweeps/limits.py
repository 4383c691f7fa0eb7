"""What each hyperparameter of a task accepts, checked before the first trial.

A task declares a :class:`Limit` per parameter (``batch_size`` an integer >= 1, ``dropout`` a
number in [0, 1), ``modality`` one of fusion, text, image). :func:`check_space` holds a search
space to them: its fixed values (``--set`` overrides among them), both ends of each searched range,
each categorical choice and each grid value. A value no trial could run with is then one line
naming the parameter, the value, where it came from and what was expected, before any data is
prepared or anything is written, instead of a sweep whose every trial fails.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.errors import SweeplabError

if TYPE_CHECKING:
    from sweeplab.sweeps.space import Param, Space

__all__ = [
    "BOOLEAN",
    "FRACTION",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "Limit",
    "LimitError",
    "check_space",
]

Scalar = int | float | str | bool

#: Where the built-in space files live; a message names those by file name alone.
_BUILTIN_SPACES = Path(__file__).resolve().parent / "spaces"


class LimitError(SweeplabError):
    """A parameter value outside what its task accepts; the message names the parameter, the
    value, where it came from and what was expected."""


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


def _space_label(space: Space) -> str:
    """``space sentiment.toml`` for a built-in space, else the file as the user gave it."""
    path = Path(space.path)
    builtin = path.resolve().parent == _BUILTIN_SPACES
    return f"space {path.name if builtin else path}"


def _fixed_values(space: Space, overrides: Collection[str]) -> Iterator[tuple[str, Any, str]]:
    """``(name, value, source)`` of every fixed value: ``--set`` overrides first (the user's
    latest word), then the file's ``[fixed]`` table."""
    label = _space_label(space)
    for name, value in space.fixed.items():
        if name in overrides:
            yield name, value, f"--set {name}={value}"
    for name, value in space.fixed.items():
        if name not in overrides:
            yield name, value, f"{label}: fixed.{name} {value!r}"


def _searched_values(space: Space) -> Iterator[tuple[str, Any, str]]:
    """``(name, value, source)`` of every value a searched parameter names: each choice, both
    ends of a range, each grid value, in file order."""
    label = _space_label(space)
    for name, param in space.params.items():
        if param.kind == "categorical":
            for choice in param.choices:
                yield name, choice, f"{label}: search.{name} choice {choice!r}"
        else:
            yield name, param.low, f"{label}: search.{name} low {param.low!r}"
            yield name, param.high, f"{label}: search.{name} high {param.high!r}"
        for value in param.grid:
            yield name, value, f"{label}: grid value {value!r} of {name}"


def _samples_integers(param: Param) -> bool:
    """Whether every value Optuna draws for ``param`` is a whole number: an integer range, a
    categorical (its choices are checked one by one), or a float range on whole steps."""
    if param.kind != "float":
        return True
    step = param.step
    return step is not None and float(step).is_integer() and float(param.low).is_integer()


def _problems(space: Space, limits: Mapping[str, Limit], overrides: Collection[str]) -> Iterator[str]:
    """One line per value of ``space`` that its parameter's limit refuses, in the order
    :func:`check_space` reports them."""
    for name, value, source in (*_fixed_values(space, overrides), *_searched_values(space)):
        limit = limits.get(name)
        if limit is not None and not limit.accepts(value):
            yield f"{source}: expected {limit.describe()}"
    for name, param in space.params.items():
        limit = limits.get(name)
        if limit is not None and limit.integer and not _samples_integers(param):
            yield (f"{_space_label(space)}: search.{name} low {param.low!r} high {param.high!r} samples fractions: "
                   f"expected {limit.describe()} (write both bounds as integers)")


def check_space(space: Space, limits: Mapping[str, Limit], overrides: Collection[str] = ()) -> None:
    """Raise :class:`LimitError` for the first value of ``space`` its task does not accept.

    Checked: every fixed value (those named in ``overrides``, the ``--set`` keys, are reported as
    ``--set name=value``), both ends of each searched range (and that an integer parameter's
    range draws whole numbers), each categorical choice and each grid value. A parameter without
    a limit is not checked. Call it on the space as loaded with its overrides applied, before
    :meth:`~sweeplab.sweeps.space.Space.widened_to_grid` (whose widened ends are grid values,
    reported as such)."""
    problem = next(_problems(space, limits, overrides), None)
    if problem is not None:
        raise LimitError(problem)
