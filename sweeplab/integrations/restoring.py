"""What both callbacks do for a retried trial: find the framework checkpoint they handed over as
the trial's resume state, and write it back to files the framework resumes from."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplab.trainers.loop import StaleResumeState

__all__ = ["restore"]


def restore(report: Any, key: str, framework: str, file_name: str) -> tuple[tempfile.TemporaryDirectory[str], int] | None:
    """The checkpoint a retried attempt goes on from, written to a new temporary folder (kept as
    long as the returned object), with the step the earlier attempt reported up to; ``None`` on a
    first attempt. The resume state holds it under ``key``: a file's bytes (written as
    ``file_name``) or a folder's files by their paths. A state that holds none is
    :class:`~sweeplab.StaleResumeState` (the trial runs again from its start)."""
    resumed = getattr(report, "resumed", None)
    if resumed is None:
        return None
    if not isinstance(resumed.state, Mapping) or key not in resumed.state:
        raise StaleResumeState(f"the saved resume state is not the {framework} checkpoint ReportCallback hands over")
    folder = tempfile.TemporaryDirectory(prefix="sweeplab-resume-")
    saved = resumed.state[key]
    for name, content in (saved.items() if isinstance(saved, Mapping) else [(file_name, saved)]):
        path = Path(folder.name) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder, int(resumed.step)
