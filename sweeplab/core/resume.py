"""A trial's resume state: what lets a trial stopped part-way (killed, preempted, stopped by a
signal) go on where it stopped, in a later attempt, instead of from its first step.

The training loop (:func:`sweeplab.trainers.loop.fit`, and a user's function through
``report``) saves the state every ``every_seconds`` of training, at the first evaluation after
that is due, and at a stop (:mod:`sweeplab.core.stopping`); a later attempt of the same trial
takes it back (:meth:`Resumption.take`). Where the state is kept is the engine's business
(:class:`ResumeStore`; :mod:`sweeplab.sweeps.resume_states`): the loop sees only this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ResumeStore", "Resumed", "Resumption"]


class ResumeStore(Protocol):
    """Where one trial's latest resume state is kept. A store may also have a ``folder``, kept
    as long as the state and deleted with it, where a program run as a command keeps its own
    state (:mod:`sweeplab.trainers.command`)."""

    def load(self) -> Any | None:
        """The state saved last, or ``None`` when there is none (or it cannot be read)."""

    def save(self, state: Any) -> None:
        """Keep ``state`` in place of the one saved before, so that a kill during the write
        leaves the earlier state whole."""


@dataclass(frozen=True)
class Resumed:
    """What a resumed attempt starts from: the ``step`` where the saved attempt stood (for a
    user's function, the step of its last ``report`` before the save; for a built-in trainer,
    the optimizer step, or the epoch and the share of the next one done), and the trainer's
    ``state`` it handed over there."""

    step: float
    state: Any


class Resumption:
    """One attempt's view of its trial's resume state: the state an earlier attempt saved
    (:meth:`take`, once), and when this attempt's next save is due (every ``every_seconds`` of
    training, counted from the attempt's start or its last save, by ``clock``)."""

    def __init__(self, store: ResumeStore, every_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not every_seconds > 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds!r}")
        self.store, self.every_seconds, self.clock = store, every_seconds, clock
        self._last = clock()
        self._taken = False
        self.saves = 0

    def take(self) -> Any | None:
        """The state an earlier attempt saved, the first time it is asked for; ``None`` after,
        or when there is none."""
        if self._taken:
            return None
        self._taken = True
        return self.store.load()

    def due(self) -> bool:
        """Whether ``every_seconds`` have passed since the attempt started or last saved."""
        return self.clock() - self._last >= self.every_seconds

    def save(self, state: Any) -> None:
        """Save ``state`` as the trial's latest, and count the interval from now."""
        self.store.save(state)
        self._last = self.clock()
        self.saves += 1
