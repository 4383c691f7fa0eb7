"""The one line between sweeplab's code and the trainer's: who failed, read rather than guessed.

A trial interleaves code of two owners. sweeplab calls the trainer (``fit``) or a task's own
code (a reader, ``save_checkpoint``, ``format_predictions``, ``evaluate_test``); that code calls
back into sweeplab (``report()``, the data cache); and sweeplab may call the trainer's code
again from there (the ``state`` callable kept at a new best). Optuna's run loop fails a trial
only for the exception types in its ``catch`` and re-raises the rest; sweeplab draws its line by
who owns the code that raised:

* :meth:`Boundary.call` runs the trainer's or the task's code. What it raises comes out as
  :class:`~sweeplab.errors.TrainerError` (the original as its ``error``), which fails the trial
  only.
* :func:`task_code` is the same for the trainer's code that sweeplab's own code calls back
  (inside :func:`engine_code`).
* :func:`engine_code` marks sweeplab's own code that runs inside such a call. What it raises is
  recorded on the trial's boundary as its ``fault`` before it unwinds through the trainer's
  code (as :class:`EngineFault`, which a trainer's ``except RuntimeError`` does not catch).
  When the trainer's call ends, by returning or raising an ``Exception`` or ``SystemExit``, a
  recorded fault is raised again as itself, whatever the trainer did with it (caught it and
  went on, wrapped it, re-raised it): it is sweeplab's, and it stops the sweep. Once a fault is
  recorded, every later :func:`engine_code` section raises at once.
* :func:`refuse` is for the trainer's input that sweeplab's code refuses (a metric name MLflow
  cannot take): the refusal is recorded too, and the call ends as a
  :class:`~sweeplab.errors.TrainerError` of it even when the trainer caught it and went on.

An interruption (``KeyboardInterrupt``) belongs to neither and passes through untouched, and so
does an outage (:class:`~sweeplab.errors.Unreachable`). The trial's boundary is found through a
context variable, and, from the threads a trainer starts (which begin with an empty context),
as the process's current trial: a process runs one trial at a time. Outside a trial (e.g.
:func:`sweeplab.trainers.loop.fit` called directly) :func:`engine_code` changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, NoReturn, TypeVar

from sweeplab.errors import TrainerError, Unreachable

__all__ = ["Boundary", "EngineFault", "engine_code", "refuse", "task_code"]

T = TypeVar("T")

_active: ContextVar[Boundary | None] = ContextVar("sweeplab_boundary", default=None)
#: The outermost boundary a call of this process is in (seen from the trainer's own threads).
_in_process: list[Boundary] = []


def _current() -> Boundary | None:
    return _active.get() or (_in_process[0] if _in_process else None)


class EngineFault(Exception):
    """sweeplab's own ``error``, on its way out through the trainer's code (see the module
    docstring)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"sweeplab failed: {type(error).__name__}: {error}")
        self.error = error


class Boundary:
    """One trial's boundary: calls into the trainer's and the task's code, the first fault of
    sweeplab's own code met inside them (:attr:`fault`) and the first of the trainer's inputs
    sweeplab refused (:attr:`refused`)."""

    def __init__(self) -> None:
        self.fault: BaseException | None = None
        self.refused: Exception | None = None

    def call(self, where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, code of the trainer or the task named ``where`` (``fit``,
        ``save_checkpoint``...). Raises a recorded fault of sweeplab's as itself; a refused input,
        or anything else ``fn`` raised, as :class:`~sweeplab.errors.TrainerError` (``sys.exit()``
        included: it ends the trial, not the sweep)."""
        token = _active.set(self)
        outermost = not _in_process
        if outermost:
            _in_process.append(self)
        try:
            result = fn(*args, **kwargs)
        except (KeyboardInterrupt, Unreachable):
            raise
        except TrainerError as exc:  # a nested call into the trainer's code failed, and was passed on
            self._raise_recorded(where)
            raise exc
        except (Exception, SystemExit) as exc:
            self._raise_recorded(where)
            raise TrainerError(exc, where) from exc
        finally:
            _active.reset(token)
            if outermost:
                _in_process.clear()
        self._raise_recorded(where)  # the trainer caught sweeplab's error, or the refusal, and went on
        return result

    def _raise_recorded(self, where: str) -> None:
        if self.fault is not None:
            raise self.fault from None
        if self.refused is not None:
            raise TrainerError(self.refused, where) from None


@contextlib.contextmanager
def engine_code() -> Iterator[None]:
    """Mark sweeplab's own code run inside the trainer's (see the module docstring): its first
    error is the trial's fault. A trainer error raised by code nested in it passes through, and
    so do an interruption and an outage."""
    boundary = _current()
    if boundary is None:
        yield
        return
    if boundary.fault is not None:  # the trainer went on after a fault: stop it at its next call
        raise EngineFault(boundary.fault)
    try:
        yield
    except (KeyboardInterrupt, TrainerError, EngineFault):
        raise
    except Exception as exc:
        boundary.fault = exc
        if isinstance(exc, Unreachable):
            raise
        raise EngineFault(exc) from exc


def refuse(error: Exception) -> NoReturn:
    """Raise ``error``, the trainer's input that sweeplab refuses (see the module docstring),
    recorded on the trial's boundary so that the trainer cannot swallow it."""
    boundary = _current()
    if boundary is not None and boundary.refused is None:
        boundary.refused = error
    raise error


def task_code(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, the trainer's or the task's code called back from sweeplab's own
    code inside a trial (a data cache's ``build``, the ``state`` kept at a new best): through the
    trial's boundary (:meth:`Boundary.call`), so that what it raises is the trainer's; a plain
    call outside a trial."""
    boundary = _current()
    if boundary is None:
        return fn(*args, **kwargs)
    return boundary.call(getattr(fn, "__name__", "the trainer's code"), fn, *args, **kwargs)
