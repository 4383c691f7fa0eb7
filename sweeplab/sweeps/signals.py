"""The signals that stop a sweep the way Ctrl-C does: ``SIGTERM`` (Kubernetes, a container
runtime, ``kill``), ``SIGHUP`` (the terminal went away) and ``SIGUSR1`` (what SLURM's ``--signal``
sends before its time limit).

While a trial trains (within :func:`stop_at_next_step`), a signal asks the trial to stop at its
next step (:mod:`sweeplab.core.stopping`): the built-in trainers stop before their next batch,
a user's function at its next ``report()``, each after saving its resume state there. A trainer
that has not reached its next step within :data:`GRACE_SECONDS` (a step longer than that, or a
function that never reports) is interrupted where it is, without saving; one that has is given
the time its save takes. ``SIGALRM`` is the sweep's while it runs (its timer is that grace). Elsewhere (between trials, opening
the study) a signal raises :class:`Stopped` (a ``KeyboardInterrupt``) at once.

Either way everything that Ctrl-C does happens: the running trial writes its points and closes
its run as interrupted, Optuna is told and queues its retry, the workers are stopped and the
parent run is closed; the command then exits with ``128 + the signal's number`` (143 for
``SIGTERM``), and the same command resumes the sweep, the stopped trial from its resume state. A
second signal while the first is being handled is ignored, so that it does not cut that clean-up
short (``SIGKILL``, which cannot be caught, still ends the process).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from sweeplab.core import stopping
from sweeplab.core.stopping import Stopped

__all__ = ["GRACE_SECONDS", "STOP_SIGNALS", "Stopped", "stop_at_next_step", "stop_on_signals", "stop_requested"]

#: The signals that stop a sweep as Ctrl-C does, where the platform has them.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))

#: Seconds a training trial has, after a stop signal, to reach its next step before it is
#: interrupted where it is: well within Kubernetes' 30 s between SIGTERM and SIGKILL, with time
#: left for the clean-up.
GRACE_SECONDS = 10.0

_training = 0  # trials training in this process's main thread (within stop_at_next_step)


def stop_requested() -> None:
    """Raise :class:`Stopped` when a stop signal was answered by a trial that then ended on its
    own (it finished at the evaluation the signal came in): no further trial starts."""
    signum = stopping.requested()
    if signum is not None:
        raise Stopped(signum)


@contextlib.contextmanager
def stop_at_next_step() -> Iterator[None]:
    """Within the block (a trial's training), a stop signal asks for a stop at the next step
    instead of raising where the main thread is (see the module docstring)."""
    global _training
    _training += 1
    try:
        yield
    finally:
        _training -= 1
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)  # the trial has stopped: no interruption is due


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, each of :data:`STOP_SIGNALS` stops the sweep once (see the module
    docstring); the handlers found are put back when it ends. Outside the main thread, where
    Python cannot set handlers, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if received:  # the first signal's clean-up is under way
            return
        received.append(signum)
        if _training and hasattr(signal, "setitimer"):
            stopping.request_stop(signum, answered=lambda: signal.setitimer(signal.ITIMER_REAL, 0))
            signal.setitimer(signal.ITIMER_REAL, GRACE_SECONDS)
            return
        raise Stopped(signum)

    def out_of_grace(signum: int, frame: FrameType | None) -> None:
        raise Stopped(received[0] if received else signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    if hasattr(signal, "SIGALRM"):
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, out_of_grace)
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stopping.clear()
