"""Several trials on one GPU: ``sweep run --workers K --gpus 0`` (or ``--gpus 0,0,1,1``).

Worker ``i`` of ``K`` runs on the ``i mod n``-th card named by ``--gpus`` (through
``CUDA_VISIBLE_DEVICES``), so a card named once with ``--workers 4``, or named twice in
``0,0,1,1``, holds several trials at once: one trial rarely fills a large GPU (a BERT-base trial
at batch 64 peaks at a few GB of an H200's 139 and leaves its cores waiting on the host between
kernels). With ``--gpus-per-trial G`` a worker's card is G cards, ``--gpus`` taken G at a time
(:attr:`~sweeplab.sweeps.options.Runtime.cards`): a command run across them (``torchrun``) sees
all G. This module says which card a worker is on (:func:`worker_environment`,
:meth:`Card.of_this_worker`), which device a trial ran on, as its run records it
(:func:`sweeplab.trainers.device.device_label`), and gives the one retry of a trial that ran out of GPU memory beside
others.

The retry: a trial that ran out of memory while its card was shared may have failed only for
the others' memory, so it is run once more alone on the card; a second out-of-memory fails it.
Alone is ensured with two lock files per card in the store folder (``STORE/locks/``), held with
``flock`` (released by the kernel when a process dies, so a killed worker never leaves a card
locked):

* every trial on a shared card holds the card lock *shared* (:meth:`Card.beside_others`), taken
  by passing through the gate, which it holds shared for that moment only;
* a retry takes the gate *exclusively*, so that no new trial starts on the card, then the card
  lock exclusively, which it gets once every trial running there has ended (each gives its
  memory back first: :func:`~sweeplab.trainers.device.release_memory`), and holds both while it
  runs (:meth:`Card.alone`). Through the gate, a retry is not starved by trials that overlap
  without end; two retries on one card take turns.

A worker on a shared card gives its cached allocations back after each trial, but not its CUDA
context (some hundred MB per worker), which the retry's trial must fit beside.

torch is imported by the functions that need it: the worker program imports this module before
it sets its interrupt handler.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, the retry runs at once
    fcntl = None  # type: ignore[assignment]

__all__ = ["CARD_ENV", "CARD_WORKERS_ENV", "Card", "worker_environment"]

#: The card a worker's trials run on (an entry of ``--gpus``), and how many workers share it.
CARD_ENV = "SWEEPLAB_CARD"
CARD_WORKERS_ENV = "SWEEPLAB_CARD_WORKERS"


def worker_environment(gpus: Sequence[str], workers: int, index: int) -> dict[str, str]:
    """The environment worker ``index`` of ``workers`` gets from ``--gpus``: its card, round
    robin, as ``CUDA_VISIBLE_DEVICES``, and how many of the workers share that card; nothing
    without ``--gpus``."""
    if not gpus:
        return {}
    card = gpus[index % len(gpus)]
    sharing = sum(1 for i in range(workers) if gpus[i % len(gpus)] == card)
    return {"CUDA_VISIBLE_DEVICES": card, CARD_ENV: card, CARD_WORKERS_ENV: str(sharing)}


def _release_memory() -> None:
    from sweeplab.trainers.device import release_memory

    release_memory()


def _acquire(path: Path, exclusive: bool) -> IO[bytes]:
    """``path`` opened and ``flock``-ed (waiting for it); closing the file releases the lock."""
    handle = path.open("ab")
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:  # Ctrl-C while waiting
            handle.close()
            raise
    return handle


@dataclass(frozen=True)
class Card:
    """The card this process's trials run on (``name``, an entry of ``--gpus``; ``None``
    without ``--gpus``), how many workers of the sweep share it, and the folder of its locks."""

    name: str | None = None
    workers: int = 1
    locks: Path | None = None

    @classmethod
    def of_this_worker(cls, locks: Path) -> Card:
        """The card :func:`worker_environment` gave this process (none in a sweep's main process)."""
        name = os.environ.get(CARD_ENV) or None
        return cls(name, int(os.environ.get(CARD_WORKERS_ENV, "1") or 1), locks)

    @property
    def shared(self) -> bool:
        """Whether other workers of the sweep run trials on this card."""
        return self.name is not None and self.workers > 1 and self.locks is not None

    def _path(self, kind: str) -> Path:
        assert self.locks is not None
        self.locks.mkdir(parents=True, exist_ok=True)
        # The machine's name too: machines sharing a store folder (a network drive) have their own card 0.
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{socket.gethostname()}-{self.name}")
        return self.locks / f"card-{safe}.{kind}"

    def beside_others(self) -> contextlib.AbstractContextManager[None]:
        """Run a trial beside the card's other trials (the card lock shared), after any retry
        running alone there; the trial's memory is given back before the lock is."""
        return self._on_card(alone=False)

    def alone(self) -> contextlib.AbstractContextManager[None]:
        """Run a trial alone on the card: no new trial starts there meanwhile (the gate held),
        and it starts once the trials running there have ended (the card lock exclusive)."""
        return self._on_card(alone=True)

    @contextlib.contextmanager
    def _on_card(self, alone: bool) -> Iterator[None]:
        """The locks of :meth:`beside_others` and :meth:`alone` (see the module docstring)."""
        if not self.shared:
            yield
            return
        gate = _acquire(self._path("gate"), exclusive=alone)
        try:
            card = _acquire(self._path("lock"), exclusive=alone)
        except BaseException:
            gate.close()
            raise
        if not alone:
            gate.close()  # a trial only passes through the gate; a retry holds it while it runs
        try:
            yield
        finally:
            _release_memory()
            card.close()
            gate.close()

    def retry_note(self, reason: str) -> str:
        """Why a trial's first run was stopped and its trial run again (its run's fail reason)."""
        others = self.workers - 1
        return (f"killed: {reason}, on card {self.name} beside {others} other worker{'s' if others != 1 else ''}; "
                "run again alone on the card")
