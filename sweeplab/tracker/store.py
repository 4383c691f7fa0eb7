"""Where a sweep's records live: the MLflow tracking store, its artifacts, the Optuna study.

The embedded default needs no server: a folder (``./mlruns`` unless ``--store-dir`` says
otherwise) holding ``mlflow.db`` (SQLite; MLflow >= 3.7 defaults to it and refuses a bare file
store), ``artifacts/`` and ``optuna.journal`` (Optuna's journal file storage, which several worker
processes may share). ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` select another MLflow store
(for example a tracking server) and ``--storage`` another Optuna storage (an RDB URL such as
``postgresql://...``, or a journal file path).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sweeplab.errors import UsageError

__all__ = ["RDB_SCHEMES", "Store", "redact", "resolve_store", "with_postgres_driver"]

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


def quiet_libraries(*, optuna_too: bool = True) -> None:
    """Keep MLflow's and Alembic's start-up chatter and Optuna's per-trial lines off the screen;
    sweeplab shows progress itself. ``optuna_too=False`` leaves Optuna unimported (the read
    commands never use it)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per run on a server
    for name in ("alembic", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if optuna_too:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def resolve_store(store_dir: Path | str = "mlruns", tracking_uri: str | None = None, storage: str | None = None) -> Store:
    """The store a sweep writes to: explicit arguments, then ``MLFLOW_TRACKING_URI``, then the
    embedded default under ``store_dir``."""
    root = Path(store_dir).resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    uri = with_postgres_driver(uri, "--tracking-uri")
    # A tracking server decides where artifacts go; any database URI gets the store's folder
    # (else MLflow would fall back to ./mlruns in whatever directory a worker runs in).
    artifact_root = None if uri.startswith(("http:", "https:", "databricks")) else (root / "artifacts").as_uri()
    return Store(root=root, tracking_uri=uri, artifact_root=artifact_root, optuna_storage=storage or str(root / "optuna.journal"))


def with_postgres_driver(uri: str, flag: str) -> str:
    """A ``postgresql://`` or ``postgres://`` URI pinned to the psycopg (3) driver that the
    ``postgres`` extra installs, since SQLAlchemy's default driver for the bare scheme differs
    between versions (psycopg2 before 2.1). Other URIs are returned as they are.

    Raises :class:`UsageError` naming ``flag`` when the driver is not installed."""
    scheme, sep, rest = uri.partition("://")
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        return uri
    if importlib.util.find_spec("psycopg") is None:
        raise UsageError(f"{flag} {redact(uri)} needs a PostgreSQL driver: pip install 'sweeplab[postgres]'")
    return f"postgresql+psycopg{sep}{rest}"


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
