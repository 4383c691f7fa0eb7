"""Everything a user can get wrong about a sweep, checked before the store is touched.

:func:`check` reads the task, the stores, the space (against the task's limits), the sampler's
arguments and the data, and gives a :class:`Checked` sweep; nothing is written, so a bad command
leaves no trace. Each refusal is one line naming the value and what was expected.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from sweeplab.core import Loaded, Task, direction_of
from sweeplab.boundary import Boundary
from sweeplab.errors import TrainerError, UsageError
from sweeplab.sweeps.early import check_metric
from sweeplab.sweeps.limits import check_space
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.samplers import make_sampler
from sweeplab.sweeps.space import Space, load_space
from sweeplab.tasks import get_task, read_setting
from sweeplab.core.curves import OnsetRule
from sweeplab.core.data_report import bad_rows
from sweeplab.datasets.errors import DataError
from sweeplab.tracker.preflight import check_store
from sweeplab.tracker.store import Store, resolve_store
from sweeplab.trainers.device import pick_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Checked", "check", "check_prepared", "check_rows", "parse_override", "problem_lines", "task_call", "with_metric"]

T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """A sweep after every check, before anything is written: its options (the split seed
    resolved), task, store, space (overrides applied, widened to a grid's values), onset rule,
    device (a ``torch.device``), data folder (``None``: the trainer reads its own) and data as
    read."""

    options: SweepOptions
    task: Task
    store: Store
    space: Space
    rule: OnsetRule
    device: Any
    data_dir: Path | None
    loaded: Loaded


def with_metric(task: Task, metric: str | None) -> Task:
    """The task judged by another validation metric (``--metric val_f1_macro``): it picks each
    trial's best evaluation, its value and the best trial; its direction follows
    :func:`~sweeplab.core.direction_of`."""
    if metric is None or metric == task.metric:
        return task
    check_metric(metric, task.open)
    return replace(task, metric=metric, direction=direction_of(metric))


def parse_override(task: Task, key: str, value: Any) -> Any:
    """Coerce a ``--set key=value`` string to the type of the task's default; for a parameter an
    open task does not declare, read it as a TOML value (``3``, ``0.1``, ``true``, ``"a"``), else
    as the string itself."""
    if task.open and key not in task.defaults:
        if not isinstance(value, str):
            return value
        if value in ("True", "False"):  # Python's spelling of TOML's true / false
            return value == "True"
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
    return read_setting(task.name, task.defaults, key, value)


def task_call(where: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a task's own code run before the trials (its reader, its preparation),
    through a :class:`~sweeplab.boundary.Boundary`: bad input it names (a
    :class:`~sweeplab.errors.UsageError`, such as a malformed data file) is raised as itself,
    anything else as a :class:`~sweeplab.errors.TrainerError` (one line, exit 1)."""
    try:
        return Boundary().call(where, fn, *args)
    except TrainerError as exc:
        if isinstance(exc.error, UsageError):
            raise exc.error from None
        raise


def check_rows(loaded: Loaded, options: SweepOptions) -> None:
    """Stop on data that lost too much while read (a last line cut short, more than 1% of a
    file's rows skipped: :func:`~sweeplab.core.data_report.bad_rows`), one line naming the file,
    the lines and ``--allow-bad-rows``, unless that flag is given; else show every problem found
    now, before the first trial (a warning per line, on stderr), not only in the final summary
    (which repeats them, with the notes).
    Worker processes (``--workers``) read the same data as the main process, which said it."""
    refusal = bad_rows(loaded.reports)
    if refusal is not None and not options.search.allow_bad_rows:
        raise DataError(refusal)
    if options.role == "main":
        for line in (line for report in loaded.reports for line in report.problems()):
            _log.warning("data: %s", line)


def check_prepared(loaded: Loaded, options: SweepOptions, seen: set[str]) -> None:
    """After the task prepared its data (decoded its images, say), what :func:`check_rows` does
    for the problems found meanwhile (those not among ``seen``, the lines said before): stop
    when the data lost too much, else say each, before the first trial."""
    refusal = bad_rows(loaded.reports)
    if refusal is not None and not options.search.allow_bad_rows:
        raise DataError(refusal)
    if options.role == "main":
        for line in problem_lines(loaded):
            if line not in seen:
                _log.warning("data: %s", line)


def problem_lines(loaded: Loaded) -> set[str]:
    """Every problem the data's read reports hold now, as the lines said of them."""
    return {line for report in loaded.reports for line in report.problems()}


def _check_needs(task: Task, space: Space) -> None:
    """Refuse a space that does not give every trial each value the task needs (a command's
    ``{name}``): missing, or conditional (a trial where it is inactive has none)."""
    missing = sorted(task.needs - {*space.params, *space.fixed, *task.defaults})
    if missing:
        raise UsageError(f"{{{missing[0]}}} in the command is not a value of the space {space.path} "
                         f"(its values: {', '.join(sorted({*space.params, *space.fixed})) or 'none'})")
    conditional = sorted(name for name in task.needs if name in space.params and space.params[name].when)
    if conditional:
        raise UsageError(f"{{{conditional[0]}}} in the command is a conditional value of the space {space.path} "
                         "(when = ...): trials where it is inactive have none; read it from SWEEPLAB_TRIAL_CONFIG "
                         "(sweeplab.trial.config()) in the program instead")


def check(options: SweepOptions) -> Checked:
    """Check the task, the stores, the space against the task's limits, the sampler's arguments
    and the data, in that order (cheapest first); nothing is written."""
    task = with_metric(get_task(options.task), options.search.metric)
    store: Store = resolve_store(options.tracking.store_dir, options.tracking.tracking_uri, options.tracking.storage)
    check_store(store, options.tracking.cache_dir)  # unreachable, unwritable, unknown scheme: one line within seconds
    overrides = {k: parse_override(task, k, v) for k, v in options.search.overrides.items()}
    if not (options.search.space or task.default_space):
        raise UsageError(f"task {task.name} has no default space: pass --space FILE.toml ([search.NAME] tables, see the README)")
    space = load_space(options.search.space or task.default_space, None if task.open else task.defaults,
                       task.name).with_overrides(overrides)
    check_space(space, task.limits, overrides)  # --set, [fixed], ranges and grid values against what the task accepts
    _check_needs(task, space)
    if options.search.sampler == "grid":
        space = space.widened_to_grid()
    make_sampler(options, space, options.search.seed)  # its arguments are checked before the store is touched
    if options.search.split_seed is None:
        options = options.with_(split_seed=options.search.seed)
    device = pick_device("cpu" if task.own_process else options.runtime.device)
    data_dir = Path(options.search.data_dir) if options.search.data_dir else task.sample_data
    loaded = task_call("load", task.load, data_dir, options.search.split_seed, options.search.val_fraction,
                       {**task.defaults, **space.fixed})
    check_rows(loaded, options)
    return Checked(options, task, store, space, OnsetRule(s=options.search.onset_s, alpha=options.search.onset_alpha),
                   device, data_dir, loaded)
