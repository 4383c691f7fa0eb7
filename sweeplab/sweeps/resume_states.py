"""Where a trial's resume state is kept (:class:`~sweeplab.core.ResumeStore`): a file under
``STORE/resume`` (:class:`~sweeplab.trainers.resume_file.ResumeFile`), named after the trial's
first attempt so that each retry finds it; and, when the sweep tracks to a store other than the
embedded default (a tracking server that several machines share), also among the sweep parent
run's artifacts (:class:`SharedResume`), so that a retry on another machine goes on from it too.
"""

from __future__ import annotations

import logging
import re

from sweeplab.sweeps.checks import Checked
from sweeplab.tracker.resume_artifacts import ArtifactVersions
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.trainers.resume_file import ResumeFile

__all__ = ["SharedResume", "TrialResume", "resume_store"]


class SharedResume:
    """A resume state saved to a local file (atomically), then copied among a run's artifacts
    (:class:`~sweeplab.tracker.resume_artifacts.ArtifactVersions`), and read back from the newest
    stored version that loads, else from the local file."""

    def __init__(self, file: ResumeFile, versions: ArtifactVersions) -> None:
        self.file, self.versions = file, versions

    def load(self) -> object | None:
        for local in self.versions.fetched():
            state = ResumeFile(local).load()
            if state is not None:
                return state
        return self.file.load()

    def save(self, state: object) -> None:
        self.file.save(state)
        self.versions.put(self.file.path)

    def delete(self) -> None:
        """Remove the state; versions the store keeps (it is away) are left, with a warning:
        they cost space, not correctness (a finished trial is not retried)."""
        self.file.delete()
        try:
            self.versions.delete()
        except Exception as exc:
            logging.getLogger(__name__).warning("could not remove the resume state of a finished trial from %s: %s",
                                                self.versions.folder, exc)


#: A trial's resume state, wherever it is kept.
TrialResume = ResumeFile | SharedResume


def resume_store(checked: Checked, recorder: SweepRecorder, study: str, first_attempt: int) -> TrialResume:
    """The resume state of the trial whose first attempt is ``first_attempt`` in ``study``."""
    file = ResumeFile(checked.store.root / "resume" / re.sub(r"[^A-Za-z0-9_.-]+", "_", study) / f"trial-{first_attempt}.pt")
    if checked.store.is_default:
        return file
    return SharedResume(file, ArtifactVersions(recorder.client, recorder.parent_run_id, f"resume/trial-{first_attempt}"))
