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
  When the trainer's call ends, by returning or raising anything at all, a recorded fault is
  raised again as itself, whatever the trainer did with it (caught it and went on, wrapped it,
  re-raised it): it is sweeplab's, and it stops the sweep.

An interruption (``KeyboardInterrupt``) belongs to neither and passes through untouched. Outside
a trial (no boundary active, e.g. :func:`sweeplab.trainers.loop.fit` called directly)
:func:`engine_code` changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from sweeplab.errors import TrainerError

__all__ = ["Boundary", "EngineFault", "engine_code", "task_code"]

T = TypeVar("T")

_active: ContextVar[Boundary | None] = ContextVar("sweeplab_boundary", default=None)


class EngineFault(Exception):
    """sweeplab's own ``error``, on its way out through the trainer's code (see the module
    docstring); never seen outside :meth:`Boundary.call`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"sweeplab failed: {type(error).__name__}: {error}")
        self.error = error


class Boundary:
    """One trial's boundary: calls into the trainer's and the task's code, and the first fault of
    sweeplab's own code met inside them (:attr:`fault`)."""

    def __init__(self) -> None:
        self.fault: BaseException | None = None

    def call(self, where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, code of the trainer or the task named ``where`` (``fit``,
        ``save_checkpoint``...). Raises a recorded fault of sweeplab's as itself; anything else
        ``fn`` raised as :class:`~sweeplab.errors.TrainerError` (``sys.exit()`` included: it
        ends the trial, not the sweep)."""
        token = _active.set(self)
        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except TrainerError as exc:  # a nested call into the trainer's code failed, and was passed on
            self._raise_fault()
            raise exc
        except (Exception, SystemExit) as exc:
            self._raise_fault()
            raise TrainerError(exc, where) from exc
        finally:
            _active.reset(token)
        self._raise_fault()  # the trainer caught sweeplab's error and went on
        return result

    def _raise_fault(self) -> None:
        if self.fault is not None:
            raise self.fault from None


@contextlib.contextmanager
def engine_code() -> Iterator[None]:
    """Mark sweeplab's own code run inside the trainer's (see the module docstring): its first
    error is the trial's fault. A trainer error raised by code nested in it passes through."""
    boundary = _active.get()
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
        raise EngineFault(exc) from exc


def task_code(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, the trainer's or the task's code called back from sweeplab's own
    code inside a trial (a data cache's ``build``, the ``state`` kept at a new best): through the
    trial's boundary (:meth:`Boundary.call`), so that what it raises is the trainer's; a plain
    call outside a trial."""
    boundary = _active.get()
    if boundary is None:
        return fn(*args, **kwargs)
    return boundary.call(getattr(fn, "__name__", "the trainer's code"), fn, *args, **kwargs)
