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
sampler uses (categorical parameters default to their choices); they are the documented cells of
a report and need not lie inside the range that TPE and random search sample, which is chosen
for where the model learns.

A parameter that applies to one model family only is *conditional*: ``when`` names earlier
parameters (searched or fixed) and the values under which it is sampled::

    [search.model]
    choices = ["textcnn", "fasttext"]

    [search.cnn_filters]
    when = { model = "textcnn" }        # or a list: { model = ["textcnn", "rcnn"] }
    choices = [128, 256]

A trial of another family never samples it (Optuna records no value, so TPE learns each family's
parameters from that family's trials only), and the grid has its values only in the cells of that
family.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import optuna

from sweeplab.errors import UsageError
from sweeplab.tasks import SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Param", "Space", "SpaceError", "builtin_spaces", "cell_key", "load_space", "resolve_space_path"]

Scalar = int | float | str | bool


class SpaceError(UsageError):
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
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = field(default=(), repr=False)

    def signature(self) -> str:
        """What makes two versions of this parameter the same search (a resumed study compares
        it): its repr, with its conditions when it has any (an unconditional parameter reads as
        it did before conditions existed, so older studies still resume)."""
        return repr(self) + (f" when {self.when!r}" if self.when else "")

    def applies(self, config: Mapping[str, Any]) -> bool:
        """Whether this parameter is sampled for a trial whose other values are ``config``: every
        ``when`` condition names a value ``config`` has (compared as numbers, see :func:`cell_key`)."""
        return all(_canonical(config.get(name)) in {_canonical(v) for v in values} for name, values in self.when)

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
            if param.applies(config):
                config[name] = param.suggest(trial)
        return config

    def inactive(self, config: Mapping[str, Any]) -> set[str]:
        """The parameters that do not apply to ``config`` (another family's), which a trial
        neither samples nor records: the space's conditional parameters whose condition
        ``config`` does not meet, and the fixed and default values that a built-in task's trainer
        reads for another model family only (its ``USED_WHEN``, see
        :mod:`sweeplab.trainers.settings`: a TextCNN trial does not record the BERT's ``heads``).
        A parameter the space searches without a condition is the space's own: it is kept."""
        dropped = {name for name, param in self.params.items() if param.when and not param.applies(config)}
        for name, when in _used_when(self.task).items():
            if name in config and name not in self.params and not _meets(config, when):
                dropped.add(name)
        return dropped

    @property
    def conditional(self) -> bool:
        """Whether any parameter is sampled only under a condition (see the module docstring)."""
        return any(param.when for param in self.params.values())

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
        """Every cell of the grid, in a stable order: the product of every parameter's grid
        values, where a conditional parameter multiplies only the cells whose values meet its
        condition (a TextCNN's kernel widths are not crossed with a fastText's cells)."""
        cells: list[dict[str, Scalar]] = [{}]
        for name, values in self.grid().items():
            param, grown = self.params[name], []
            for cell in cells:
                if param.applies({**self.fixed, **cell}):
                    grown.extend({**cell, name: value} for value in values)
                else:
                    grown.append(cell)
            cells = grown
        return cells

    def widened_to_grid(self) -> Space:
        """A copy whose numeric ranges also hold their grid values, for ``--sampler grid``: the
        report's cells may lie outside the range TPE samples (``lr`` 1e-6 below 1e-5), and Optuna
        records a queued value with a distribution that should contain it."""
        params = {
            name: replace(p, low=min(p.low, *p.grid), high=max(p.high, *p.grid)) if p.kind != "categorical" and p.grid else p
            for name, p in self.params.items()
        }
        return Space(self.name, self.path, self.task, params, self.fixed)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Space:
        """A copy where each overridden name becomes a fixed value (and is no longer searched)."""
        params = {k: v for k, v in self.params.items() if k not in overrides}
        return Space(self.name, self.path, self.task, params, {**self.fixed, **overrides})


def _used_when(task: str) -> Mapping[str, Mapping[str, tuple[Scalar, ...]]]:
    """A built-in task's ``USED_WHEN`` (:mod:`sweeplab.trainers.settings`, torch-free); nothing
    for another task (a user's function declares no families: its space's ``when`` does)."""
    if task not in SETTINGS:
        return {}
    return getattr(importlib.import_module(SETTINGS[task]), "USED_WHEN", {})


def _meets(config: Mapping[str, Any], when: Mapping[str, tuple[Scalar, ...]]) -> bool:
    """Whether ``config`` has one of the listed values of each parameter ``when`` names (one it
    does not hold is not judged), compared as :meth:`Param.applies` compares them."""
    return all(_canonical(config[name]) in {_canonical(v) for v in values} for name, values in when.items() if name in config)


def _canonical(value: Any) -> Any:
    """Numbers as floats (``1`` equals ``1.0``), everything else as it is."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def cell_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A grid cell's identity: its parameters sorted by name, numbers as floats, so that a cell
    queued as ``{"lr": 1}`` and the trial that ran it (Optuna stores ``1.0`` for a float
    parameter) are the same cell."""
    return tuple(sorted((name, _canonical(value)) for name, value in params.items()))


def builtin_spaces() -> dict[str, Path]:
    """The space files that ship with sweeplab, by name (file stem)."""
    folder = resources.files("sweeplab.sweeps") / "spaces"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_space_path(spec: str) -> Path:
    """A space given as a file path or as the name of a built-in space (``sentiment-refine``).

    A spec is a path when it names a file or ends in ``.toml``; any other spec is a built-in
    name, so that a folder called ``news/`` in the working directory (one's data) does not hide
    the built-in ``news`` space."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix == ".toml":
        raise SpaceError(f"{spec}: space file not found")
    spaces = builtin_spaces()
    if spec not in spaces:
        what = "a folder, not a space file," if path.is_dir() else "not a space file"
        raise SpaceError(f"{spec}: {what} and not a built-in space (built-in: {', '.join(sorted(spaces))})")
    return spaces[spec]


def _number(path: Path, where: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{path}: {where} must be a finite number, got {value!r}")
    return value


def _parse_when(path: Path, where: str, table: Any, earlier: Mapping[str, Param], fixed: Mapping[str, Any]
                ) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    """The conditions of ``when = { name = value | [values] }``: each name is a parameter searched
    above this one or a fixed value, and each value one that parameter can take."""
    if not isinstance(table, dict) or not table:
        raise SpaceError(f"{path}: {where} when must be a table such as when = {{ model = \"textcnn\" }}")
    conditions = []
    for name, wanted in table.items():
        values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
        if not values:
            raise SpaceError(f"{path}: {where} when.{name} is an empty list")
        if name in earlier:
            parent = earlier[name]
            possible = parent.choices or parent.grid
            if parent.kind == "categorical":
                bad = [v for v in values if _canonical(v) not in {_canonical(c) for c in possible}]
                if bad:
                    raise SpaceError(f"{path}: {where} when.{name} = {bad[0]!r} is not one of its choices {list(possible)}")
        elif name in fixed:
            pass  # a condition on a fixed value: true or false for every trial, which a copied space may want
        else:
            raise SpaceError(f"{path}: {where} when names {name!r}, which is neither searched above it nor fixed")
        conditions.append((name, values))
    return tuple(conditions)


def _parse_param(path: Path, name: str, table: Any, earlier: Mapping[str, Param] | None = None,
                 fixed: Mapping[str, Any] | None = None) -> Param:
    where = f"[search.{name}]"
    if not isinstance(table, dict):
        raise SpaceError(f"{path}: {where} must be a table with choices = [...] or low/high")
    when = _parse_when(path, where, table["when"], earlier or {}, fixed or {}) if "when" in table else ()
    table = {k: v for k, v in table.items() if k != "when"}
    allowed = {"choices", "low", "high", "log", "step", "grid", "when"}
    unknown = set(table) - allowed
    if unknown:
        raise SpaceError(f"{path}: {where} has unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if "choices" in table:
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{path}: {where} choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{path}: {where} choices repeat a value: {choices}")
        grid = table.get("grid", choices)
        if not isinstance(grid, list) or not grid or any(_canonical(v) not in {_canonical(c) for c in choices} for v in grid):
            raise SpaceError(f"{path}: {where} grid must be a non-empty list of its choices {choices}")
        return Param(name, "categorical", choices=tuple(choices), grid=tuple(grid) if "grid" in table else (), when=when)
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
        _number(path, f"{where} grid value", value)  # the report's cells: inside the sampled range or not
        if log and value <= 0:
            raise SpaceError(f"{path}: {where} grid value {value!r} must be > 0 for a log = true range")
        if kind == "int" and not isinstance(value, int):
            raise SpaceError(f"{path}: {where} grid value {value!r} must be an integer, as low and high are")
    return Param(name, kind, low=low, high=high, log=log, step=step, grid=tuple(grid), when=when)


def load_space(spec: str | Path, known: Mapping[str, Any] | None, task: str | None = None) -> Space:
    """Read and validate a space file.

    ``known`` maps every hyperparameter the task accepts to its default (``None``: the task
    accepts any name, as a user's training function does); a key outside it is an error, as is an empty range, a grid value a parameter cannot take (not a number, not an
    integer for an integer range, not above 0 on a log scale, not a choice), a ``when`` that names
    no parameter above it, or a ``task`` that differs from ``task``.
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
            if known is not None and name not in known:
                raise SpaceError(
                    f"{path}: unknown parameter [{section}.{name}] (known: {', '.join(sorted(known))})"
                )
    both = set(search) & set(fixed)
    if both:
        raise SpaceError(f"{path}: {sorted(both)[0]!r} is both searched and fixed")
    params: dict[str, Param] = {}
    for name, table in search.items():  # in file order: a condition names a parameter above it
        params[name] = _parse_param(path, name, table, params, fixed)
    return Space(
        name=path.stem,
        path=path,
        task=str(file_task or task or ""),
        params=params,
        fixed=dict(fixed),
    )
