"""Prepared data, made once per sweep and shared by every trial that can reuse it.

Decoding images, tokenising texts and running a frozen backbone over the data cost far more than
training a head, and they depend on a few settings (backbone, maximum length, image size), not on
the trial. :class:`PrepCache` keys each prepared object by those settings: in memory for the
length of a sweep, and on disk (``torch.save``) so that a rerun or a resumed sweep skips the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import torch

from sweeplab.boundary import engine_code, task_code
from sweeplab.errors import TrainerError

__all__ = ["Advance", "PrepCache", "Preparing", "fingerprint_files"]

T = TypeVar("T")

#: Counts ``n`` more items of the preparation under way (a progress bar's step).
Advance = Callable[[int], None]
#: ``preparing(label, total)``: a context for one preparation of ``total`` items (``None``: not
#: known), giving the :data:`Advance` to call as items are done; the console draws it as a bar.
Preparing = Callable[[str, "int | None"], AbstractContextManager[Advance]]


def _ignore(n: int) -> None:
    pass


@contextlib.contextmanager
def _unseen(label: str, total: int | None) -> Any:
    yield _ignore


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (made if missing; ``flock``, released by the
    kernel when a holder dies) for the ``with`` block; no lock where the system has none."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fingerprint_files(paths: Iterable[Path]) -> str:
    """A short hash of file names, sizes and modification times: changes when the data does."""
    digest = hashlib.sha1()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class PrepCache:
    """Memoise ``build()`` by ``(kind, key)``; persist to ``folder`` when one is given. Each build
    is shown through ``preparing`` (the console's "preparing data (...)" bar); a build counts its
    items with :meth:`advance`.

    It runs inside the task's code: its reads, writes and bar are sweeplab's own
    (:func:`~sweeplab.boundary.engine_code`), ``build`` is the task's again
    (:func:`~sweeplab.boundary.task_code`)."""

    def __init__(self, folder: Path | None = None, preparing: Preparing | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.preparing: Preparing = preparing or _unseen
        self._advance: Advance = _ignore
        self._memory: dict[str, Any] = {}
        self.hits = 0
        self.builds = 0

    @staticmethod
    def _name(kind: str, key: Mapping[str, Any]) -> str:
        blob = json.dumps(dict(key), sort_keys=True, default=str).encode()
        return f"{kind}-{hashlib.sha1(blob).hexdigest()[:16]}"

    def _build(self, name: str, kind: str, build: Callable[[], T], label: str | None, total: int | None) -> T:
        """Build the entry ``name`` (shown as ``label`` of ``total`` items) and keep it in memory."""
        outer = self._advance
        with self.preparing(label or kind, total) as advance:
            self._advance = advance
            try:
                value = task_code(build)
            finally:
                self._advance = outer
        self.builds += 1
        self._memory[name] = value
        return value

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items of the build under way (nothing when none is)."""
        self._advance(n)

    def get(self, kind: str, key: Mapping[str, Any], build: Callable[[], T], label: str | None = None,
            total: int | None = None) -> T:
        """The object prepared for ``key``: from memory, else from disk, else built (shown as
        ``label`` of ``total`` items) and stored."""
        name = self._name(kind, key)
        if name in self._memory:
            self.hits += 1
            return self._memory[name]
        path = self.folder / f"{name}.pt" if self.folder is not None else None
        with engine_code():
            if path is None:
                return self._build(name, kind, build, label, total)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Workers of one machine (or of one Ray node) that need the entry at once: one builds it, the others wait and read it.
            with _exclusive(path.with_suffix(".lock")):
                if path.is_file():
                    try:
                        value = torch.load(path, weights_only=True)
                        self.hits += 1
                        self._memory[name] = value
                        return value
                    except Exception:  # a truncated file from a killed run: rebuild it
                        path.unlink(missing_ok=True)
                value = self._build(name, kind, build, label, total)
                partial = path.with_suffix(f".{os.getpid()}.partial")
                try:
                    torch.save(value, partial)
                except (pickle.PicklingError, TypeError, AttributeError) as exc:  # what the task built cannot be saved
                    partial.unlink(missing_ok=True)
                    raise TrainerError(exc, "build") from exc
                partial.replace(path)
        return value
