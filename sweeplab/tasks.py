"""The task registry: every task sweeplab can run, found by name.

A task (:class:`~sweeplab.core.Task`) is found, in this order, as:

* a task object registered in this process (:func:`register`);
* a built-in task (:data:`REGISTRY`: news, retrieval, sentiment);
* a task an installed package offers through the ``sweeplab.tasks`` entry-point group, whose
  value is a :class:`~sweeplab.core.Task` or a training function;
* a training function named by ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``
  (:mod:`sweeplab.trainers.function`);
* a command, ``-- PROGRAM ARGS...`` (``sweep run --space my.toml -- python train.py --lr {lr}``),
  run once per trial (:mod:`sweeplab.trainers.command`).

Every process of a sweep (``--workers``, other machines) finds its task the same way from the
same name, so a user's function is swept in parallel like a built-in.

A built-in task's trainer imports torch and transformers, seconds before anything else can
happen; :func:`check_before_loading` finds a misspelt name, and a ``--set`` a built-in task would
refuse, without importing any task, so that such a mistake is answered at once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplab.core import Task
from sweeplab.errors import UsageError
from sweeplab.trainers.command import check_command, command_of_spec, command_spec, command_task

__all__ = ["ENTRY_POINT_GROUP", "REGISTRY", "SETTINGS", "check_before_loading", "get_task", "read_setting", "register",
           "spec_name", "task_names", "task_or_command"]

#: task name -> "module:attribute" of its Task object (imported on first use: torch and
#: transformers are slow to import, and a typo in the task name should fail fast).
REGISTRY: dict[str, str] = {
    "news": "sweeplab.trainers.news:TASK",
    "retrieval": "sweeplab.trainers.retrieval:TASK",
    "sentiment": "sweeplab.trainers.sentiment:TASK",
}

#: built-in task name -> the module of its ``DEFAULTS`` and ``LIMITS``, which imports no torch
#: (:mod:`sweeplab.trainers.settings`): what :func:`check_before_loading` holds ``--set`` to.
SETTINGS: dict[str, str] = {
    "news": "sweeplab.trainers.settings.news",
    "retrieval": "sweeplab.trainers.settings.retrieval",
    "sentiment": "sweeplab.trainers.settings.sentiment",
}

#: The entry-point group through which installed packages offer tasks.
ENTRY_POINT_GROUP = "sweeplab.tasks"

_REGISTERED: dict[str, Task] = {}


def register(task: Task, replace: bool = False) -> None:
    """Make a task object defined outside sweeplab (a plug-in, a benchmark) runnable by name in
    this process; ``replace`` lets a task registered before under the name (a notebook cell run
    again) give way. A built-in name is never replaced."""
    if task.name in REGISTRY or (task.name in _REGISTERED and not replace):
        raise ValueError(f"a task named {task.name!r} is already registered")
    _REGISTERED[task.name] = task


#: Tasks resolved from a ``FILE.py:FUNCTION`` or ``module:FUNCTION`` spec, by spec: the file is
#: imported once per process however often the task is asked for.
_RESOLVED: dict[str, Task] = {}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    """Every task name known without a spec: registered, built-in and offered by entry points."""
    return sorted({*REGISTRY, *_REGISTERED, *_entry_points()})


def _as_task(obj: Any, name: str, where: str) -> Task:
    """A :class:`Task` as it is, a training function as its task; else a one-line error."""
    if isinstance(obj, Task):
        task = obj
    elif callable(obj):
        from sweeplab.trainers.function import function_task

        task = function_task(obj, name)
    else:
        raise UsageError(f"{where}: expected a training function or a sweeplab Task, found {type(obj).__name__}")
    if task.name in REGISTRY:
        raise UsageError(f"{where}: its name {task.name!r} is a built-in task's; declare another name")
    return task


def _import_file(path: Path, shown: str) -> Any:
    """Import a Python file as a module named after it (its folder goes first on ``sys.path``, as
    for ``python FILE``, so that it imports its neighbours); a unique name if that one is taken."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
        return loaded  # the module this process imported already (a notebook's, a script's)
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__file__", None) and Path(main.__file__).resolve() == path:
        return main  # the script that is running (``python train.py`` calling sweeplab.run(fit)): not run twice
    # Named after the file, as ``import`` would; when that name is taken, a name fixed by the
    # path, so that every process of the sweep gives the module the same name.
    taken = not path.stem.isidentifier() or path.stem in sys.modules
    name = f"_sweeplab_user_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}" if taken else path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{shown}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"{shown}: importing it raised {type(exc).__name__}: {_first_line(exc)}") from None
    return module


def _import_module(dotted: str) -> Any:
    """Import ``package.module``, looking in the working directory first (as ``python -m`` does)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and (dotted == exc.name or dotted.startswith(exc.name + ".")):
            raise UsageError(f"{dotted}: no module of that name (expected FILE.py:FUNCTION or package.module:FUNCTION)") from None
        raise UsageError(f"{dotted}: importing it raised ModuleNotFoundError: {_first_line(exc)}") from None
    except Exception as exc:
        raise UsageError(f"{dotted}: importing it raised {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def spec_name(spec: str) -> str:
    """The name of the task ``spec`` names, unless its function declares another:
    ``FILE.py:FUNCTION`` for a file (its name, not its folder: a sweep started from another folder
    is the same task), the spec itself for ``package.module:FUNCTION``."""
    where, _, attr = spec.rpartition(":")
    return f"{Path(where).name}:{attr}" if _is_file_spec(where) else spec


def _from_spec(spec: str) -> Task:
    """The task of ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``, named ``FILE.py:FUNCTION``
    (the file's name, not its folder, so that a sweep started from another folder is the same
    task) or ``package.module:FUNCTION``, unless the function declares a name."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise UsageError(f"{spec}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if _is_file_spec(where):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UsageError(f"{where}: no such file (expected FILE.py:FUNCTION)")
        path = path.resolve()
        key, name = f"{path}:{attr}", spec_name(spec)
        if key in _RESOLVED:
            return _RESOLVED[key]
        module = _import_file(path, where)
    else:
        key = name = spec
        if key in _RESOLVED:
            return _RESOLVED[key]
        module = _import_module(where)
    if not hasattr(module, attr):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise UsageError(f"{where}: no function {attr!r}" + (f" (functions there: {', '.join(found)})" if found else ""))
    _RESOLVED[key] = task = _as_task(getattr(module, attr), name, spec)
    _RESOLVED.setdefault(task.name, task)  # the name it declares finds it too, in this process
    return task


def get_task(name: str) -> Task:
    """The task called ``name`` (see the module docstring for where it is looked up); a one-line
    error naming the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in REGISTRY:
        module, attr = REGISTRY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    if name in _RESOLVED:
        return _RESOLVED[name]
    command = command_of_spec(name)
    if command is not None:
        check_command(command)
        return command_task(command)
    if ":" in name:
        return _from_spec(name)
    offered = _entry_points()
    if name in offered:
        try:
            obj = offered[name].load()
        except Exception as exc:
            raise UsageError(f"task {name}: loading its entry point {offered[name].value} raised "
                                f"{type(exc).__name__}: {_first_line(exc)}") from None
        return _as_task(obj, name, f"task {name} (entry point {offered[name].value})")
    raise _no_such_task(name)


def _no_such_task(name: str) -> UsageError:
    """The one-line error for a name no task answers to (not a spec: no ``:``)."""
    if name.endswith(".py"):
        return UsageError(f"{name}: name the training function too, as {name}:FUNCTION")
    return UsageError(f"unknown task {name!r} (expected one of: {', '.join(task_names())}, "
                      "or FILE.py:FUNCTION, or package.module:FUNCTION)")


def read_setting(task_name: str, defaults: Mapping[str, Any], key: str, value: Any) -> Any:
    """A ``--set key=value`` string read as the type of the parameter's default, for a task that
    declares all its parameters (a built-in, before it is loaded; and every declared parameter of
    any task, through :func:`sweeplab.sweeps.checks.parse_override`); a value that is no string
    is kept as it is.

    Raises :class:`UsageError` for a key ``defaults`` lacks (naming the known ones) and for a
    value that is not of the default's type."""
    if key not in defaults:
        raise UsageError(f"--set {key}: unknown parameter for task {task_name} (known: {', '.join(sorted(defaults))})")
    default = defaults[key]
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise UsageError(f"--set {key}={value}: expected a {type(default).__name__}") from None
    return value


def check_before_loading(name: str, overrides: Mapping[str, Any]) -> None:
    """Raise now the one-line error that loading task ``name`` and holding ``overrides``
    (``--set``) to it would raise later, for what is known without importing any task: a name no
    task answers to; for a built-in task, an unknown parameter, a value not of its default's type
    or one outside its limit (the words of :func:`sweeplab.sweeps.limits.check_space`). What
    only the task itself can say (a user's function, an entry point's task) is left to the
    sweep's own checks, which come after the import of the task (and torch)."""
    command = command_of_spec(name)
    if command is not None:
        check_command(command)
        return
    maybe_a_task = (name in _REGISTERED or name in REGISTRY or name in _RESOLVED or ":" in name
                    or name in _entry_points())
    if not maybe_a_task:
        raise _no_such_task(name)
    where = name.rpartition(":")[0]
    if where and _is_file_spec(where) and not Path(where).expanduser().is_file():
        raise UsageError(f"{where}: no such file (expected FILE.py:FUNCTION)")
    if name not in SETTINGS:
        return
    settings = importlib.import_module(SETTINGS[name])
    values = {key: read_setting(name, settings.DEFAULTS, key, value) for key, value in overrides.items()}
    for key, value in values.items():
        limit = settings.LIMITS.get(key)
        if limit is not None and not limit.accepts(value):
            raise UsageError(f"--set {key}={value}: expected {limit.describe()}")


def task_or_command(task: str | None, command: list[str] | None) -> str:
    """The task ``sweep run`` sweeps: ``task``, or the ``command`` given after ``--``."""
    if command is None:
        if task is None:
            raise UsageError("sweep run needs a TASK (news, sentiment, retrieval, FILE.py:FUNCTION) or a command after --")
        return task
    if task is not None:
        raise UsageError(f"sweep run {task} -- {' '.join(command)}: give a TASK or a command after --, not both")
    check_command(command)
    return command_spec(command)
