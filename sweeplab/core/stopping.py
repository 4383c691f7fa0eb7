"""A stop asked for while a trial trains, answered at the trial's next step.

A stop signal (``SIGTERM``, ``SIGHUP``, ``SIGUSR1``) that arrives while a trial trains does not
raise where the main thread happens to be (half-way through an optimizer step, or inside a
``torch.save``): it asks for a stop (:func:`request_stop`), and the training code asks at every
step whether one was asked for (:func:`check`): the built-in trainers before each batch,
``report()`` at each evaluation. The first :func:`check` after the request raises
:class:`StoppedAtStep`, at a point where the trial's resume state is whole (the step done, its
loss counted), so the training loop saves that state before the trial unwinds. A trainer that
never asks is stopped by the signal handler itself after a grace period
(:mod:`sweeplab.sweeps.signals`); a trainer that answers calls the request's ``answered``
callback first (:func:`answer`), which ends that grace period, so that the save is not cut short.

The request is the process's: a process runs one trial at a time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

__all__ = ["Stopped", "StoppedAtStep", "answer", "check", "clear", "request_stop", "requested"]

_requested: int | None = None
_answered: Callable[[], None] | None = None


class Stopped(KeyboardInterrupt):
    """The sweep was stopped by signal ``signum``; :attr:`exit_code` is the shell's status for it
    (``128 + signum``: 143 for ``SIGTERM``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        try:
            return f"stopped by {signal.Signals(self.signum).name}"
        except ValueError:
            return f"stopped by signal {self.signum}"


class StoppedAtStep(Stopped):
    """A stop raised by :func:`check`, between two steps: the trial's state is whole, and the
    training loop saves it before the stop goes on."""


def request_stop(signum: int, answered: Callable[[], None] | None = None) -> None:
    """Ask the trial running in this process to stop at its next step (the first request
    counts); ``answered`` is called once when the trial answers (:func:`answer`)."""
    global _requested, _answered
    if _requested is None:
        _requested, _answered = signum, answered


def answer() -> None:
    """The trial is stopping at this step: call the request's ``answered`` callback (once)."""
    global _answered
    callback, _answered = _answered, None
    if callback is not None:
        callback()


def requested() -> int | None:
    """The signal a stop was asked for by, or ``None``."""
    return _requested


def clear() -> None:
    """Forget the request."""
    global _requested, _answered
    _requested, _answered = None, None


def check() -> None:
    """Raise :class:`StoppedAtStep` when a stop was asked for, once it is answered; a step of
    training calls it."""
    if _requested is not None:
        answer()
        raise StoppedAtStep(_requested)
