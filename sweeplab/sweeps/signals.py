"""The signals that stop a sweep the way Ctrl-C does: ``SIGTERM`` (Kubernetes, a container
runtime, ``kill``), ``SIGHUP`` (the terminal went away) and ``SIGUSR1`` (what SLURM's ``--signal``
sends before its time limit).

Each raises :class:`Stopped` (a ``KeyboardInterrupt``) in the main thread, so everything that
Ctrl-C does happens: the running trials write their points and close their runs as interrupted,
Optuna is told, the workers are interrupted and the parent run is closed; the command then exits
with ``128 + the signal's number`` (143 for ``SIGTERM``), and the same command resumes the
sweep. A second signal while the first is being handled is ignored, so that it does not cut
that clean-up short (``SIGKILL``, which cannot be caught, still ends the process).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "Stopped", "stop_on_signals"]

#: The signals that stop a sweep as Ctrl-C does, where the platform has them.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """The sweep was stopped by ``signum``; :attr:`exit_code` is the shell's status for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, each of :data:`STOP_SIGNALS` raises :class:`Stopped` once (see the
    module docstring); the handlers found are put back when it ends. Outside the main thread,
    where Python cannot set handlers, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if received:  # the first signal's clean-up is under way
            return
        received.append(signum)
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
