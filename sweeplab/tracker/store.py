"""Where a sweep's records live: the MLflow tracking store, its artifacts, the Optuna study.

The embedded default needs no server: a folder (``./mlruns`` unless ``--store-dir`` says
otherwise) holding ``mlflow.db`` (SQLite; MLflow >= 3.7 defaults to it and refuses a bare file
store), ``artifacts/`` and ``optuna.journal`` (Optuna's journal file storage, which several worker
processes may share). ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` select another MLflow store
(for example a tracking server) and ``--storage`` another Optuna storage (an RDB URL such as
``postgresql://...``, or a journal file path).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import optuna

__all__ = ["Store", "open_optuna_storage", "resolve_store"]

RDB_SCHEMES = ("sqlite:", "postgresql", "postgres:", "mysql")


@dataclass(frozen=True)
class Store:
    """Resolved locations, as plain strings and paths."""

    root: Path
    tracking_uri: str
    artifact_root: str | None  # None: the tracking server decides
    optuna_storage: str

    @property
    def is_default(self) -> bool:
        """True for the embedded SQLite store under ``root`` (no URI given anywhere)."""
        return self.tracking_uri == f"sqlite:///{self.root / 'mlflow.db'}"


def quiet_libraries() -> None:
    """Keep MLflow's and Alembic's start-up chatter and Optuna's per-trial lines off the screen;
    sweeplab shows progress itself."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def resolve_store(store_dir: Path | str = "mlruns", tracking_uri: str | None = None, storage: str | None = None) -> Store:
    """The store a sweep writes to: explicit arguments, then ``MLFLOW_TRACKING_URI``, then the
    embedded default under ``store_dir``."""
    root = Path(store_dir).resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    # A tracking server decides where artifacts go; any database URI gets the store's folder
    # (else MLflow would fall back to ./mlruns in whatever directory a worker runs in).
    artifact_root = None if uri.startswith(("http:", "https:", "databricks")) else (root / "artifacts").as_uri()
    return Store(root=root, tracking_uri=uri, artifact_root=artifact_root, optuna_storage=storage or str(root / "optuna.journal"))


def open_optuna_storage(spec: str) -> optuna.storages.BaseStorage:
    """An RDB URL gives Optuna's RDBStorage (with heartbeats, so trials of a killed worker are
    failed and not left RUNNING); anything else is a journal file path."""
    if spec.startswith(RDB_SCHEMES):
        return optuna.storages.RDBStorage(spec, heartbeat_interval=60, grace_period=180)
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend)
