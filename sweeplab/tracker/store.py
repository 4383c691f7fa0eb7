"""Where a sweep's records live: the MLflow tracking store, its artifacts, the Optuna study.

The embedded default needs no server: a folder (``./mlruns`` unless ``--store-dir`` says
otherwise) holding ``mlflow.db`` (SQLite; MLflow >= 3.7 defaults to it and refuses a bare file
store), ``artifacts/`` and ``optuna.journal`` (Optuna's journal file storage, which several worker
processes may share). ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` select another MLflow store
(for example a tracking server) and ``--storage`` another Optuna storage (an RDB URL such as
``postgresql://...``, Optuna's gRPC storage proxy ``grpc://HOST:PORT``, or a journal file path).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sweeplab.errors import UsageError

__all__ = ["GRPC_SCHEME", "RDB_SCHEMES", "Store", "grpc_address", "quiet_libraries", "redact", "resolve_store", "set_env_default", "set_level",
           "with_postgres_driver"]

RDB_SCHEMES = ("sqlite:", "postgresql", "postgres:", "mysql")
#: How a storage spec names Optuna's gRPC storage proxy: ``grpc://HOST:PORT``.
GRPC_SCHEME = "grpc://"


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


def quiet_libraries(*, importing: bool = False) -> ExitStack:
    """Keep MLflow's and Alembic's start-up chatter off the screen; sweeplab shows progress
    itself (Optuna's per-trial lines: :func:`sweeplab.sweeps.optuna_logs.quiet_optuna`).
    ``importing`` imports MLflow first, as a sweep will: importing it sets its logger's level,
    which would undo ours if it came later; the read commands never import it.

    The settings apply at once, for the process's lifetime (the ``sweep`` command); closing the
    returned stack, or leaving ``with quiet_libraries():``, puts back the loggers' levels and the
    environment variables found, so that a host process (a notebook) is left as it was."""
    undo = ExitStack()
    set_env_default(undo, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    set_env_default(undo, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per run on a server
    if importing:
        import mlflow  # noqa: F401
    for name in ("alembic", "mlflow"):
        set_level(undo, logging.getLogger(name), logging.WARNING)
    return undo


def set_env_default(undo: ExitStack, name: str, value: str) -> None:
    """``os.environ.setdefault(name, value)``; when it set the variable, ``undo`` removes it again
    (unless something else has changed it since)."""
    if name not in os.environ:
        os.environ[name] = value
        undo.callback(_unset_env, name, value)


def _unset_env(name: str, value: str) -> None:
    if os.environ.get(name) == value:
        del os.environ[name]


def set_level(undo: ExitStack, logger: logging.Logger, level: int) -> None:
    """Set ``logger``'s level; ``undo`` sets back the one it had (unless something else, such as
    a library configuring its logger when imported, has set another since)."""
    undo.callback(_reset_level, logger, logger.level, level)
    logger.setLevel(level)


def _reset_level(logger: logging.Logger, previous: int, ours: int) -> None:
    if logger.level == ours:
        logger.setLevel(previous)


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


def grpc_address(spec: str) -> tuple[str, int]:
    """The host and port of a ``grpc://HOST:PORT`` storage spec (``[::1]`` for an IPv6 host);
    :class:`UsageError` when it has no port."""
    host, sep, port = spec.removeprefix(GRPC_SCHEME).rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--storage {spec}: expected grpc://HOST:PORT (Optuna's gRPC storage proxy)")
    return host.strip("[]"), int(port)


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
