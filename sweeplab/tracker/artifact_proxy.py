"""Artifacts kept in a folder of another machine, reached through its tracking server.

When the head of a Ray cluster serves its embedded store to the nodes
(:mod:`sweeplab.sweeps.head_stores`), the runs' artifact locations in the store are folders of
the head (``file:///STORE/artifacts/EXPERIMENT/RUN/artifacts``), written there by MLflow's
client on the head as on any single machine, and read there by ``sweep best``, ``sweep report``
and the UI. A worker on a node that logs to such a run would write into a folder of its own
machine. :func:`route_through_server` makes every artifact of a location under the head's
artifact folder go through the head's tracking server instead, which serves that folder
(``mlflow server --artifacts-destination STORE/artifacts``, its ``mlflow-artifacts:`` proxy):
``file:///STORE/artifacts/REST`` is read and written as ``mlflow-artifacts:/REST`` of the
tracking server. Locations elsewhere stay local files.

MLflow picks an artifact repository by the scheme of the location, from a registry whose
``register`` is the documented way for plugins to add schemes; the registry object itself is
private (``mlflow.store.artifact.artifact_repository_registry._artifact_repository_registry``).
This module is the one place that uses it; ``tests/sweeps/test_head_stores.py`` fails when
MLflow moves it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["local_path", "route_through_server"]


def route_through_server(artifact_root: str, tracking_uri: str) -> None:
    """In this process, read and write every artifact whose location is under ``artifact_root``
    (a ``file:`` URI: the folder the server at ``tracking_uri`` serves as its artifacts) through
    that server (see the module docstring). For the rest of the process's life: it is called by
    a worker program, once, before any run is opened."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    root = local_path(artifact_root)

    def repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
        path = local_path(artifact_uri)
        if path == root or root in path.parents:
            served = "/".join(path.relative_to(root).parts)
            return MlflowArtifactsRepository(f"mlflow-artifacts:/{served}", tracking_uri=server_uri)
        return LocalArtifactRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)

    server_uri = tracking_uri
    for scheme in ("", "file"):
        registry.register(scheme, repository)


def local_path(uri: str) -> Path:
    """The path a ``file:`` URI or a plain path names, normalised (no ``..``, no trailing ``/``)."""
    parts = urlsplit(uri)
    return Path(os.path.normpath(os.path.abspath(unquote(parts.path) if parts.scheme == "file" else uri)))
