"""Where a trial's resume state is kept (:class:`~sweeplab.core.ResumeStore`): a file under
``STORE/resume`` (:class:`~sweeplab.trainers.resume_file.ResumeFile`), named after the trial's
first attempt so that each retry finds it; and, when the sweep tracks to a store other than the
embedded default (a tracking server that several machines share), also among the sweep parent
run's artifacts (:class:`SharedResume`), so that a retry on another machine goes on from it too.

One sweep may be run both ways: under ``sweep run --ray ADDRESS`` the nodes track to the head's
served embedded store and keep their states among the parent run's artifacts, while the head, and
a rerun with no Ray, ``--workers`` or ``--ray local``, use the embedded store itself. So on the
embedded default a state is saved to the local file only (states can be gigabytes: no second copy
on each save) but read from the newest of that file and the parent run's stored versions, and
deleted from both (:func:`resume_store`); and before served nodes start, the head stores each
local file that is newer than the stored versions among them (:func:`share_local_states`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

from sweeplab.errors import Unreachable
from sweeplab.sweeps.checks import Checked
from sweeplab.tracker.resume_artifacts import ArtifactVersions, version_time
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.trainers.resume_file import ResumeFile

__all__ = ["AttemptsResume", "SharedResume", "TrialResume", "resume_store", "share_local_states"]


class SharedResume:
    """A resume state saved to a local file (atomically), then copied among a run's artifacts
    (:class:`~sweeplab.tracker.resume_artifacts.ArtifactVersions`; not with ``upload=False``: the
    embedded default's own processes, whose file :func:`share_local_states` stores when nodes
    need it), and read back from the newest stored version that loads, else from the local file."""

    def __init__(self, file: ResumeFile, versions: ArtifactVersions, upload: bool = True) -> None:
        self.file, self.versions, self.upload = file, versions, upload

    def load(self) -> object | None:
        """The newest state that loads: the local file when it is newer than every stored version
        (the same machine saved it, and its upload was cut short or never made), or stored as the
        newest (:func:`share_local_states` names the version after the file's time), else the newest stored version
        that loads, else the local file. A store that cannot be read now (other than away:
        :class:`~sweeplab.errors.Unreachable` goes on) is logged, and the local file read."""
        try:
            newest = self.versions.newest_first()
            if self.file.path.exists() and (not newest or self.file.path.stat().st_mtime_ns >= version_time(newest[0])):
                return self.file.load()
            for local in self.versions.fetched():
                state = ResumeFile(local).load()
                if state is not None:
                    return state
        except Unreachable:
            raise
        except Exception as exc:
            logging.getLogger(__name__).warning("could not read the resume states stored in %s (%s); "
                                                "reading this machine's", self.versions.folder, exc)
        return self.file.load()

    def save(self, state: object) -> None:
        self.file.save(state)
        if self.upload:
            self.versions.put(self.file.path)

    @property
    def folder(self) -> Path:
        """The local file's folder (:attr:`ResumeFile.folder`): a command's own state stays on
        the machine that wrote it."""
        return self.file.folder

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


def resume_store(checked: Checked, recorder: SweepRecorder, study: str, study_id: int, first_attempt: int) -> TrialResume:
    """The resume state of the trial whose first attempt is ``first_attempt`` in ``study``: a file
    in :func:`_study_folder`, and the versions among the sweep parent run's artifacts, uploaded on
    each save unless the store is the embedded default (see the module docstring)."""
    file = ResumeFile(_study_folder(checked, study, study_id) / f"trial-{first_attempt}.pt")
    return SharedResume(file, _versions(recorder, first_attempt), upload=not checked.store.is_default)


def share_local_states(checked: Checked, recorder: SweepRecorder, study: str, study_id: int) -> list[int]:
    """Store each resume state of ``study`` kept in this machine's files (``trial-N.pt`` of
    :func:`_study_folder`) among the sweep parent run's artifacts, as the newest version, where it
    is newer than every version stored there: so that a worker on another machine (a served
    ``--ray ADDRESS`` node) goes on from a state a run on the embedded default saved. The version
    is named after the file's time, which keeps the file the newest for this machine (no download
    of what it has). Returns the first attempts shared. Called before such workers start."""
    shared = []
    for path in sorted(_study_folder(checked, study, study_id).glob("trial-*.pt")):
        first = path.stem.removeprefix("trial-")
        if not first.isdigit():
            continue
        versions = _versions(recorder, int(first))
        newest = versions.newest_first()
        saved = path.stat().st_mtime_ns
        if newest and version_time(newest[0]) >= saved:
            continue
        versions.put(path, stored_at=saved)
        shared.append(int(first))
    return shared


def _study_folder(checked: Checked, study: str, study_id: int) -> Path:
    """The folder of ``study``'s resume files, named after the study, its storage id and a hash of
    its name (study names that differ only in characters a file name cannot hold, or a study
    deleted and made again under its name, never share one)."""
    tag = hashlib.sha1(study.encode()).hexdigest()[:8]
    return checked.store.root / "resume" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', study)[:80]}-{study_id}-{tag}"


def _versions(recorder: SweepRecorder, first_attempt: int) -> ArtifactVersions:
    """The stored versions of a trial's resume state among the sweep parent run's artifacts."""
    return ArtifactVersions(recorder.client, recorder.parent_run_id, f"resume/trial-{first_attempt}")


class AttemptsResume:
    """A trial's resume state as this process's attempts of it use it (``store``: where it is
    kept). It is written only while the trial is still this process's (``still_ours``): another
    process may have failed it for a lost heartbeat and queued its retry, whose state this one
    must not overwrite; it is deleted once Optuna has taken the trial's outcome from this process
    (:mod:`sweeplab.sweeps.loops`), which proves the same. After a state proved stale (it no
    longer loads into the trainer) it is deleted and not read again (:meth:`start_afresh`), so
    that the trial runs once more from its start, and only once."""

    def __init__(self, store: TrialResume, still_ours: Callable[[], bool]) -> None:
        self.store, self.still_ours = store, still_ours
        self.fresh = False

    def load(self) -> object | None:
        return None if self.fresh else self.store.load()

    def save(self, state: object) -> None:
        if self.still_ours():
            self.store.save(state)
        else:
            logging.getLogger(__name__).warning("the trial is no longer this process's (another failed it): "
                                                "its resume state is left to its retry")

    @property
    def folder(self) -> Path:
        """The folder kept with the state (:attr:`ResumeFile.folder`)."""
        return self.store.folder

    def delete(self) -> None:
        """Delete the state: the trial has ended on its own and Optuna was told so (which proves
        the trial is still this process's), or the state proved stale."""
        self.store.delete()

    def start_afresh(self) -> None:
        """Delete the stale state and read none from now on."""
        self.delete()
        self.fresh = True
