"""Search spaces: readable TOML files, one per task (and per stage), that a user can copy and edit.

A space file has a ``task`` key, a ``[search.NAME]`` table per searched hyperparameter and a
``[fixed]`` table of constants::

    task = "sentiment"

    [search.batch_size]
    choices = [16, 32, 64, 128]

    [search.lr]
    low = 1e-6
    high = 1e-4
    log = true
    grid = [1e-4, 1e-5, 1e-6]   # the cells ``--sampler grid`` walks

    [fixed]
    epochs = 10

A searched parameter is categorical (``choices``) or numeric (``low``/``high``, with optional
``log`` and ``step``; integers when both bounds are integers). ``grid`` lists the values the grid
sampler uses for a numeric parameter; categorical parameters use their choices.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import optuna

from sweeplab.errors import SweeplabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Param", "Space", "SpaceError", "builtin_spaces", "cell_key", "load_space", "resolve_space_path"]

Scalar = int | float | str | bool


class SpaceError(SweeplabError):
    """A space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter."""

    name: str
    kind: Literal["categorical", "int", "float"]
    choices: tuple[Scalar, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    grid: tuple[Scalar, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Scalar:
        """Ask Optuna for a value of this parameter."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> tuple[Scalar, ...]:
        """The values ``--sampler grid`` walks: ``grid`` if given, else the choices, else every
        step of an integer range."""
        if self.grid:
            return self.grid
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return ()


@dataclass(frozen=True)
class Space:
    """A loaded, validated search space."""

    name: str
    path: Path
    task: str
    params: Mapping[str, Param]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's configuration: the fixed values plus one suggestion per searched parameter."""
        config = dict(self.fixed)
        for name, param in self.params.items():
            config[name] = param.suggest(trial)
        return config

    def grid(self) -> dict[str, list[Scalar]]:
        """The values ``--sampler grid`` walks, per parameter; raises if a float has no ``grid`` list."""
        out: dict[str, list[Scalar]] = {}
        for name, param in self.params.items():
            values = param.grid_values()
            if not values:
                raise SpaceError(
                    f"{self.path}: [search.{name}] is a continuous range; add grid = [...] "
                    "to use --sampler grid"
                )
            out[name] = list(values)
        return out

    def grid_cells(self) -> list[dict[str, Scalar]]:
        """Every cell of the grid, in a stable order."""
        grid = self.grid()
        names = list(grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]

    def with_overrides(self, overrides: Mapping[str, Any]) -> Space:
        """A copy where each overridden name becomes a fixed value (and is no longer searched)."""
        params = {k: v for k, v in self.params.items() if k not in overrides}
        return Space(self.name, self.path, self.task, params, {**self.fixed, **overrides})


def cell_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A grid cell's identity: its parameters sorted by name, numbers as floats, so that a cell
    queued as ``{"lr": 1}`` and the trial that ran it (Optuna stores ``1.0`` for a float
    parameter) are the same cell."""
    def canonical(value: Any) -> Any:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    return tuple(sorted((name, canonical(value)) for name, value in params.items()))


def builtin_spaces() -> dict[str, Path]:
    """The space files that ship with sweeplab, by name (file stem)."""
    folder = resources.files("sweeplab.sweeps") / "spaces"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_space_path(spec: str) -> Path:
    """A space given as a file path or as the name of a built-in space (``sentiment-refine``)."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpaceError(f"{spec}: space file not found")
        return path
    spaces = builtin_spaces()
    if spec not in spaces:
        raise SpaceError(
            f"{spec}: not a space file and not a built-in space (built-in: {', '.join(sorted(spaces))})"
        )
    return spaces[spec]


def _number(path: Path, where: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{path}: {where} must be a finite number, got {value!r}")
    return value


def _parse_param(path: Path, name: str, table: Any) -> Param:
    where = f"[search.{name}]"
    if not isinstance(table, dict):
        raise SpaceError(f"{path}: {where} must be a table with choices = [...] or low/high")
    allowed = {"choices", "low", "high", "log", "step", "grid"}
    unknown = set(table) - allowed
    if unknown:
        raise SpaceError(f"{path}: {where} has unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if "choices" in table:
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{path}: {where} choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{path}: {where} choices repeat a value: {choices}")
        return Param(name, "categorical", choices=tuple(choices))
    if "low" not in table or "high" not in table:
        raise SpaceError(f"{path}: {where} needs choices = [...] or both low and high")
    low = _number(path, f"{where} low", table["low"])
    high = _number(path, f"{where} high", table["high"])
    if not low < high:
        raise SpaceError(f"{path}: {where} is an empty range: low={low!r} must be below high={high!r}")
    log = bool(table.get("log", False))
    if log and low <= 0:
        raise SpaceError(f"{path}: {where} log = true needs low > 0, got low={low!r}")
    step = table.get("step")
    if step is not None and not _number(path, f"{where} step", step) > 0:
        raise SpaceError(f"{path}: {where} step must be > 0, got {step!r}")
    if step is not None and log:
        raise SpaceError(f"{path}: {where} cannot have both step and log = true (Optuna allows one)")
    kind: Literal["int", "float"] = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    grid = table.get("grid", [])
    if not isinstance(grid, list):
        raise SpaceError(f"{path}: {where} grid must be a list")
    for value in grid:
        if not low <= _number(path, f"{where} grid value", value) <= high:
            raise SpaceError(f"{path}: {where} grid value {value!r} is outside [{low!r}, {high!r}]")
    return Param(name, kind, low=low, high=high, log=log, step=step, grid=tuple(grid))


def load_space(spec: str | Path, known: Mapping[str, Any], task: str | None = None) -> Space:
    """Read and validate a space file.

    ``known`` maps every hyperparameter the task accepts to its default; a key outside it is an
    error, as is an empty range, a grid value outside its range, or a ``task`` that differs from
    ``task``.
    """
    path = resolve_space_path(str(spec))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: not valid TOML ({exc})") from None
    unknown_top = set(data) - {"task", "search", "fixed"}
    if unknown_top:
        raise SpaceError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r} (expected task, search, fixed)")
    file_task = data.get("task")
    if task is not None and file_task is not None and file_task != task:
        raise SpaceError(f"{path}: this space is for task {file_task!r}, not {task!r}")
    search = data.get("search", {})
    fixed = data.get("fixed", {})
    if not isinstance(search, dict) or not isinstance(fixed, dict):
        raise SpaceError(f"{path}: [search] and [fixed] must be tables")
    for section, names in (("search", search), ("fixed", fixed)):
        for name in names:
            if name not in known:
                raise SpaceError(
                    f"{path}: unknown parameter [{section}.{name}] (known: {', '.join(sorted(known))})"
                )
    both = set(search) & set(fixed)
    if both:
        raise SpaceError(f"{path}: {sorted(both)[0]!r} is both searched and fixed")
    params = {name: _parse_param(path, name, table) for name, table in search.items()}
    return Space(
        name=path.stem,
        path=path,
        task=str(file_task or task or ""),
        params=params,
        fixed=dict(fixed),
    )
