"""A trial's resume state in one file (:class:`~sweeplab.core.ResumeStore`), written so that a
kill during the write leaves the state saved before it whole.

The state is written to a temporary file beside the target, flushed to the disk, and renamed
over the target (``os.replace``, atomic on a POSIX file system; the folder is flushed after):
a reader sees the old file or the new one, never half of one. The file is a pickle: read only
states of a store you trust. It is written with ``torch.save`` when torch is loaded (tensors
stream to the file without a copy in memory), else with ``pickle`` (a user's training function
that uses no torch pays no torch import); :meth:`ResumeFile.load` reads either.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from sweeplab.durable import fsync_folder

__all__ = ["ResumeFile"]

_ZIP = b"PK"  # torch.save's files are zip archives


class ResumeFile:
    """One trial's resume state at ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Any | None:
        """The state saved last; ``None`` when there is none, or when it cannot be read (logged:
        the trial then starts from its beginning)."""
        try:
            with self.path.open("rb") as file:
                if file.read(2) == _ZIP:
                    import torch

                    return torch.load(self.path, map_location="cpu", weights_only=False)
                file.seek(0)
                return pickle.load(file)
        except FileNotFoundError:
            return None
        except Exception as exc:  # written by another version, or damaged on the disk
            logging.getLogger(__name__).warning("the resume state %s does not load (%s); the trial starts from its beginning",
                                                self.path, exc)
            return None

    def save(self, state: Any) -> None:
        """Write ``state`` in place of the saved one (see the module docstring)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as file:
                if "torch" in sys.modules:
                    sys.modules["torch"].save(state, file)
                else:
                    pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.path)
            fsync_folder(self.path.parent)
        finally:
            partial.unlink(missing_ok=True)

    @property
    def folder(self) -> Path:
        """A folder kept with the state and deleted with it (``trial-N.d`` beside ``trial-N.pt``):
        where a program run as a command keeps its own resume state (:mod:`sweeplab.trainers.command`)."""
        return self.path.with_name(f"{self.path.stem}.d")

    def delete(self) -> None:
        """Remove the state (its trial has ended), its folder, and partial writes of killed processes."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        for partial in self.path.parent.glob(f".{self.path.name}.*.partial"):
            partial.unlink(missing_ok=True)

