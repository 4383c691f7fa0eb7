"""Versions of a file kept among a run's artifacts: how a trial's resume state reaches every
machine of a sweep that shares only its tracking server (:mod:`sweeplab.sweeps.resume_states`).

An artifact store has no atomic replace: an upload cut short by a kill may leave half a file
behind. So each save is a new version (``state-<time in ns>.pt`` under the folder), the older
versions are removed only once the new one is stored, and a reader tries the versions newest
first until one loads. MLflow's client has no call to remove an artifact; the artifact
repository of the run's URI does (MLflow's HTTP artifact proxy and local folders support it), and
that one call is kept here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient

__all__ = ["ArtifactVersions", "version_time"]


def version_time(path: str) -> int:
    """When a version was stored (``time.time_ns()`` of the machine that stored it), from its
    name; 0 for a name not of this form."""
    digits = path.rsplit("/", 1)[-1].removeprefix("state-").split(".", 1)[0]
    return int(digits) if digits.isdigit() else 0


class ArtifactVersions:
    """The versions of one file in ``folder`` among run ``run_id``'s artifacts (see the module
    docstring)."""

    def __init__(self, client: MlflowClient, run_id: str, folder: str) -> None:
        self.client, self.run_id, self.folder = client, run_id, folder.strip("/")

    def newest_first(self) -> list[str]:
        """The stored versions' artifact paths, the newest first."""
        found = [f.path for f in self.client.list_artifacts(self.run_id, self.folder) if not f.is_dir]
        return sorted(found, reverse=True)

    def put(self, local: Path, stored_at: int | None = None) -> None:
        """Store ``local`` as the newest version, then remove the older ones; ``stored_at``: the
        version's time (:func:`version_time`) when not now, such as the time ``local`` was saved."""
        older = self.newest_first()
        with tempfile.TemporaryDirectory() as folder:
            version = Path(folder) / f"state-{time.time_ns() if stored_at is None else stored_at:020d}{local.suffix}"
            try:
                version.hardlink_to(local)
            except OSError:  # another file system
                shutil.copyfile(local, version)
            self.client.log_artifact(self.run_id, str(version), self.folder)
        for path in older:
            self._delete(path)

    def fetched(self) -> Iterator[Path]:
        """Each stored version, newest first, downloaded to a temporary file that is removed when
        the next one is asked for (or the iteration ends)."""
        for path in self.newest_first():
            with tempfile.TemporaryDirectory() as folder:
                yield Path(self.client.download_artifacts(self.run_id, path, folder))

    def delete(self) -> None:
        """Remove every version."""
        for path in self.newest_first():
            self._delete(path)

    def _delete(self, path: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        get_artifact_repository(artifact_uri, tracking_uri=self.client.tracking_uri).delete_artifacts(path)
