"""sweeplab from Python (a notebook, a script): run a sweep, rank its trials, read its status.

::

    import sweeplab

    @sweeplab.trainer(metric="val_accuracy")
    def fit(config, report): ...

    outcome = sweeplab.run(fit, space="my_space.toml", trials=20)
    best = sweeplab.best(fit, top=3)          # TrialRow: params, best epoch, onset, checkpoint
    sweeps = sweeplab.status()                # SweepRow per sweep in the store

Each function is the command of the same name (``sweep run``, ``sweep best``, ``sweep status``)
with the same defaults and the same store (``mlruns/`` in the working directory unless
``store_dir`` or ``tracking_uri`` says otherwise); errors are the same one-line
:class:`~sweeplab.errors.SweeplabError` subclasses.

A task is a name (``"sentiment"``, an entry point's name, ``"my_trainer.py:fit"``), a
:class:`~sweeplab.core.Task`, or a training function. A function defined in a file is swept as
``FILE.py:FUNCTION``, so that ``workers=K`` processes import it the same way; one defined
where there is no file (a notebook cell) runs in this process only.

Each function leaves the process as it found it when it returns or raises (:func:`_as_it_was`):
library loggers' levels, environment variables, the garbage collector, the store readers'
connections; pictures are drawn without touching matplotlib's backend or pyplot's figures.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.core import Task
from sweeplab.errors import UsageError

if TYPE_CHECKING:
    from sweeplab.sweeps.driver import SweepOutcome
    from sweeplab.sweeps.observer import SweepObserver
    from sweeplab.tracker.query import SweepRow, TrialRow
    from sweeplab.tracker.store import Store

__all__ = ["best", "report", "run", "status"]

TaskLike = str | Task | Callable[..., Any] | Sequence[str]


def _file_spec(function: Callable[..., Any]) -> str | None:
    """``/path/FILE.py:NAME`` for a function defined at the top level of a Python file (which
    another process can import), else ``None``."""
    try:
        path = Path(inspect.getfile(function))
    except (TypeError, OSError):
        return None
    name = getattr(function, "__name__", "")
    module = inspect.getmodule(function)
    if path.suffix != ".py" or not path.is_file() or getattr(module, name, None) is not function:
        return None
    return f"{path.resolve()}:{name}"


def _task_name(task: TaskLike, in_workers: bool = False) -> str:
    """The name under which the sweep engine finds ``task`` (see the module docstring); a task
    object or a function without a file is registered in this process, which worker processes
    (``in_workers``: ``workers > 1``, ``gpus`` or ``ray``) cannot reach."""
    from sweeplab.tasks import get_task, register

    if isinstance(task, str):
        return task
    if isinstance(task, (list, tuple)):  # a command, run once per trial
        from sweeplab.trainers.command import check_command, command_spec

        check_command([str(part) for part in task])
        return command_spec([str(part) for part in task])
    if isinstance(task, Task):
        obj, name = task, task.name
    elif callable(task):
        spec = _file_spec(task)
        if spec is not None:
            return spec
        from sweeplab.trainers.function import function_task

        obj = function_task(task, getattr(task, "__name__", "trainer"))
        name = obj.name
    else:
        raise UsageError(f"task {task!r}: expected a task name, a sweeplab Task or a training function")
    if in_workers:
        raise UsageError(f"task {name}: worker processes cannot import a task defined here; define its function in a "
                         "Python file (or offer it through the sweeplab.tasks entry point) to use workers")
    try:
        known = get_task(name)
    except UsageError:
        known = None
    if known is not obj:
        try:
            register(obj, replace=True)
        except ValueError as exc:  # a built-in task's name
            raise UsageError(f"task {name}: {exc}; give the function another name or declare one") from None
    return name


@contextlib.contextmanager
def _as_it_was(sweeping: bool = False) -> Iterator[None]:
    """Put back, when the block ends however it ends, what sweeplab changes in this process for
    a call's sake, so that a notebook goes on as before: the levels of MLflow's, Alembic's and
    Optuna's loggers and the environment variables sweeplab sets (set here first, so that the
    same settings made inside find them made and add nothing), and the connections the store
    readers pooled; for a sweep (``sweeping``) also MLflow's HTTP retries and Optuna's logger
    (the driver gives back the Optuna storage's connections and what it froze out of the garbage
    collector's view). (Pictures are drawn without changing
    matplotlib's backend or leaving figures in pyplot: :mod:`sweeplab.tracker.sweep_plots`.)"""
    from sweeplab.tracker.store import quiet_libraries

    with contextlib.ExitStack() as undo:
        if sweeping:
            from sweeplab.sweeps.optuna_logs import quiet_optuna
            from sweeplab.tracker.reconnect import bound_http_retries

            undo.enter_context(bound_http_retries())
            undo.enter_context(quiet_optuna())
        undo.enter_context(quiet_libraries(importing=sweeping))
        undo.callback(_close_readers)
        yield


def _close_readers() -> None:
    """Close the connections the SQL reader pooled, when it was used at all."""
    if "sweeplab.tracker.sql_reader" in sys.modules:
        from sweeplab.tracker.sql_reader import dispose_engines

        dispose_engines()


@_as_it_was(sweeping=True)
def run(task: TaskLike, *, trials: int = 6, space: str | Path | None = None, metric: str | None = None,
        store_dir: str | Path = "mlruns", observer: SweepObserver | None = None, **options: Any) -> SweepOutcome:
    """Run (or resume) a sweep of ``task`` until its study holds ``trials`` finished trials, as
    ``sweep run`` does; ``options`` are its other options by name (:mod:`sweeplab.sweeps.options`:
    ``sampler="random"``, ``workers=2``, ``overrides={"epochs": 5}``...). Returns the :class:`~sweeplab.sweeps.driver.SweepOutcome`.

    The process is left as it was found (see :func:`_as_it_was`)."""
    from sweeplab.sweeps.driver import run_sweep
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.sweeps.workers import WORKER_ENV

    if os.environ.get(WORKER_ENV):
        raise UsageError("sweeplab.run was called while a worker process imported the trainer's file: "
                         "put the call under `if __name__ == \"__main__\":`")
    if options.get("ray") and "workers" not in options:
        options["workers"] = 0  # as many trials at once as the cluster holds
    name = _task_name(task, int(options.get("workers", 1)) > 1 or bool(options.get("gpus")) or bool(options.get("ray")))
    if "overrides" in options:  # as the workers will read them back (a tuple becomes a list)
        try:
            options["overrides"] = json.loads(json.dumps(dict(options["overrides"])))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"sweeplab.run: overrides must be JSON values ({exc})") from None
    try:
        sweep = SweepOptions.of(name, trials=trials, space=None if space is None else str(space), metric=metric,
                                store_dir=Path(store_dir), **options)
    except TypeError as exc:
        raise UsageError(f"sweeplab.run: {exc}") from None
    return run_sweep(sweep, observer)


def open_store(store_dir: str | Path = "mlruns", tracking_uri: str | None = None) -> Store:
    """The store to read from; a one-line error when the embedded default has not been made yet."""
    from sweeplab.tracker.store import quiet_libraries, resolve_store

    store = resolve_store(Path(store_dir), tracking_uri)
    if store.is_default and not (store.root / "mlflow.db").is_file():
        raise UsageError(f"{store.root / 'mlflow.db'}: no tracking store here (run a sweep first, or pass --store-dir)")
    quiet_libraries()
    return store


@_as_it_was()
def best(task: TaskLike, *, top: int = 1, metric: str | None = None, study: str | None = None,
         store_dir: str | Path = "mlruns", tracking_uri: str | None = None) -> list[TrialRow]:
    """The ``top`` complete trials of ``task`` by ``metric`` (default: the summary metric its
    newest sweep ran with, e.g. ``best_val_accuracy``), best first, read from the tracking store
    alone: params, best epoch, overfitting onset, checkpoint location."""
    from sweeplab.tasks import get_task
    from sweeplab.tracker.query import best_trials, recorded_metric

    if top < 1:
        raise UsageError(f"--top {top}: expected a positive number")
    name = _recorded_name(task, store_dir, tracking_uri)
    store = open_store(store_dir, tracking_uri)
    recorded = recorded_metric(store.tracking_uri, name, study)
    if metric is None and recorded is not None:
        return best_trials(store.tracking_uri, name, recorded[0], top=top, study=study, direction=recorded[1])
    return best_trials(store.tracking_uri, name, metric or get_task(name).best_metric, top=top, study=study)


def _recorded_name(task: TaskLike, store_dir: str | Path, tracking_uri: str | None) -> str:
    """The name ``task``'s runs carry: its task's name; or, for a name no task in this process
    answers to (a name a training function declared, read back in a fresh process), the name
    itself when the store holds sweeps of it. An unknown name is the error, before a missing
    store."""
    from sweeplab.tasks import REGISTRY, get_task, spec_name
    from sweeplab.tracker.query import recorded_metric, task_of_spec
    from sweeplab.trainers.command import command_of_spec

    name = _task_name(task)
    if name in REGISTRY:  # a built-in's name is its runs' name: no need to import it (and torch)
        return name
    if command_of_spec(name) is not None:
        return get_task(name).name
    try:
        store = open_store(store_dir, tracking_uri)
    except UsageError:
        store = None
    if ":" in name and store is not None:  # FILE.py:FUNCTION from any folder, without importing the file
        recorded = spec_name(name)
        declared = task_of_spec(store.tracking_uri, recorded)  # the name its function declared
        if declared is not None:
            return declared
        if recorded_metric(store.tracking_uri, recorded) is not None:
            return recorded
    try:
        return get_task(name).name
    except UsageError:
        if ":" in name or store is None or recorded_metric(store.tracking_uri, name) is None:
            raise
        return name


@_as_it_was()
def status(task: TaskLike | None = None, *, study: str | None = None, store_dir: str | Path = "mlruns",
           tracking_uri: str | None = None) -> list[SweepRow]:
    """Every sweep in the store (newest first), optionally of one task or study: trials by
    outcome, the target, the best so far."""
    from sweeplab.tasks import REGISTRY
    from sweeplab.tracker.query import sweeps

    name = None if task is None else _recorded_name(task, store_dir, tracking_uri)
    store = open_store(store_dir, tracking_uri)
    # Sweeps made before sweeplab recorded their metric on the parent run: the built-in task's.
    fallback: Mapping[str, str] = _LazyBestMetrics(tuple(REGISTRY))
    return sweeps(store.tracking_uri, fallback, name, study)


@_as_it_was()
def report(task: TaskLike | None = None, *, study: str | None = None, out: str | Path | None = None,
           fresh: bool = False, store_dir: str | Path = "mlruns", tracking_uri: str | None = None) -> Path | None:
    """Write the newest sweep's page (of ``task``, of one ``study``) as one self-contained HTML file
    (:mod:`sweeplab.tracker.report`) to ``out`` (default ``STUDY-report.html`` here); returns its
    path, or ``None`` when the store holds no such sweep. ``fresh`` draws the pictures again rather
    than reading the parent run's."""
    from sweeplab.tracker.query import sweep_trials
    from sweeplab.tracker.report import report_html, sweep_images
    from sweeplab.tracker.store import redact

    target = None if out is None else Path(out)
    if target is not None and (target.is_dir() or not target.parent.is_dir()):
        raise UsageError(f"--out {target}: expected a file in an existing folder")
    name = None if task is None else _recorded_name(task, store_dir, tracking_uri)
    store = open_store(store_dir, tracking_uri)
    sweep = sweep_trials(store.tracking_uri, name, study)
    if sweep is None:
        return None
    target = target or Path(re.sub(r"[^\w.-]+", "_", sweep.study or "sweep") + "-report.html")
    page = report_html(sweep, sweep_images(sweep, fresh=fresh), redact(store.tracking_uri))
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {target}: cannot write it ({exc.strerror})") from None
    return target.resolve()


class _LazyBestMetrics(Mapping[str, str]):
    """``task name -> best_METRIC`` for built-in tasks, imported only when a sweep needs it (an
    old store): importing a task costs torch."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def __getitem__(self, name: str) -> str:
        from sweeplab.tasks import get_task

        if name not in self.names:
            raise KeyError(name)
        return get_task(name).best_metric

    def __iter__(self) -> Any:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
