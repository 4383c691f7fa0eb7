"""What each hyperparameter of a task accepts, checked before the first trial.

A task declares a :class:`Limit` per parameter (``batch_size`` an integer >= 1, ``dropout`` a
number in [0, 1), ``modality`` one of fusion, text, image). :func:`check_space` holds a search
space to them: its fixed values (``--set`` overrides among them), both ends of each searched range,
each categorical choice and each grid value. A value no trial could run with is then one line
naming the parameter, the value, where it came from and what was expected, before any data is
prepared or anything is written, instead of a sweep whose every trial fails.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.core import Limit
from sweeplab.errors import UsageError

if TYPE_CHECKING:
    from sweeplab.sweeps.space import Param, Space

__all__ = ["LimitError", "check_space"]

Scalar = int | float | str | bool

#: Where the built-in space files live; a message names those by file name alone.
_BUILTIN_SPACES = Path(__file__).resolve().parent / "spaces"


class LimitError(UsageError):
    """A parameter value outside what its task accepts; the message names the parameter, the
    value, where it came from and what was expected."""




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
