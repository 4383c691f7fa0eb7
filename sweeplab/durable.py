"""Making a renamed file's new name survive a power loss: what the embedded store's publishing
(:mod:`sweeplab.tracker.embedded`) and a trial's resume file (:mod:`sweeplab.trainers.resume_file`)
both do after their atomic rename. Imports nothing of sweeplab."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_folder"]


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to the disk, so that a rename in it is durable (POSIX; a no-op
    where a folder cannot be opened or synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
