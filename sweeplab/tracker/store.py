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
import inspect
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from sweeplab.errors import UsageError
from sweeplab.tracker.reconnect import Patience, reconnecting_rdb

__all__ = ["Store", "open_optuna_storage", "redact", "resolve_store", "with_postgres_driver"]

RDB_SCHEMES = ("sqlite:", "postgresql", "postgres:", "mysql")
# Optuna 4.9 renamed RDBStorage's failed_trial_callback to heartbeat_stale_trial_callback.
_OPTUNA_5 = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters


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
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per run on a server
    for name in ("alembic", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
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


def open_optuna_storage(spec: str, heartbeat_seconds: int = 60,
                        on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                        outage_limit: float = 300.0) -> optuna.storages.BaseStorage:
    """An RDB URL gives Optuna's RDBStorage with heartbeats: a running trial records one every
    ``heartbeat_seconds``, and one with none for twice that long (its worker was killed, on any
    machine) is failed by the next worker that starts a trial, which then calls ``on_stale``.
    Its calls ride out a database outage of up to ``outage_limit`` seconds
    (:mod:`sweeplab.tracker.reconnect`). Anything else is a journal file path (one machine;
    ``sweeps.recovery`` keeps heartbeats there itself).

    A missing database driver or an unreachable server is a one-line :class:`UsageError`."""
    if not spec.startswith(RDB_SCHEMES):
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    spec = with_postgres_driver(spec, "--storage")
    callback = "heartbeat_stale_trial_callback" if _OPTUNA_5 else "failed_trial_callback"
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since 2.9
                rdb = optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat_seconds, grace_period=2 * heartbeat_seconds,
                                                 engine_kwargs=_engine_kwargs(spec), **{callback: on_stale})
            return reconnecting_rdb(rdb, Patience(f"the Optuna storage {redact(spec)}", outage_limit))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if _schema_race(exc) and attempt + 1 < _SCHEMA_ATTEMPTS:
                time.sleep(random.uniform(0.2, 1.0))  # another process is creating the tables: they exist now
                continue
            first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()
            raise UsageError(f"cannot open the Optuna storage {redact(spec)}: {first[0] if first else type(exc).__name__}") from None
    raise AssertionError("unreachable")


def _engine_kwargs(spec: str) -> dict[str, object]:
    """SQLAlchemy engine settings for the Optuna database: test a pooled connection before use
    (a restarted server dropped it), and on PostgreSQL give up connecting after 10 s and notice a
    silently dead connection (a host that vanished) within about a minute through TCP keepalives,
    so that an outage surfaces as an error :mod:`sweeplab.tracker.reconnect` can wait out instead of
    a call that hangs."""
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if spec.startswith("postgresql+psycopg"):
        kwargs["connect_args"] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                                  "keepalives_interval": 10, "keepalives_count": 3}
    return kwargs


#: How often a new RDB storage is opened again when another process was creating its tables at that moment.
_SCHEMA_ATTEMPTS = 8


def _schema_race(exc: Exception) -> bool:
    """Whether ``exc`` is what two processes get when they create Optuna's tables in a new database
    at the same moment (optuna#1092: on PostgreSQL "duplicate key value violates unique constraint
    pg_type_typname_nsp_index" or "relation ... already exists"): machines started together on a
    fresh database. Opening again finds the tables the other process made."""
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text or "pg_type_typname" in text


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
