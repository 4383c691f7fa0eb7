"""Creating the embedded store's MLflow database (``mlflow.db``) so that a kill cannot break it.

MLflow creates its SQLite schema the first time a client touches a new ``sqlite:///`` URI, by
running every Alembic migration in place, one committed step after another: a process killed
meanwhile leaves a half-built ``mlflow.db`` (often with a hot ``-journal``) that MLflow then refuses,
and the store stays unusable until someone deletes it. :func:`ensure_tracking_db` therefore builds the
database under a temporary name in the same folder and moves it into place in one atomic step, so
``mlflow.db`` is either absent or complete. Several processes may start on a fresh store at once:
each builds its own copy, exactly one copy is published, the others are discarded.

A ``mlflow.db`` that an earlier version left half-built is detected with :mod:`sqlite3` (no MLflow
engine) and, when it holds no runs, moved aside and rebuilt; one that holds runs is never moved.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sweeplab.durable import fsync_folder as _fsync_folder
from sweeplab.errors import UsageError

__all__ = ["ensure_tracking_db"]

_log = logging.getLogger(__name__)

#: SQLite's side files next to a database: the rollback journal and the WAL pair.
_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")
#: A temporary build older than this is abandoned whatever its pid says (pids are reused, and a
#: build on another machine sharing the folder cannot be checked). Builds take seconds.
_STALE_SECONDS = 600.0
#: How long a read of an existing database waits for another process's write to finish.
_BUSY_SECONDS = 30.0
#: errno values that mean "this folder cannot be written", as opposed to a bug.
_FOLDER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                            errno.ENOSPC, errno.EDQUOT})
#: errno values with which ``os.link`` says the file system has no hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: SQLite's result code for "file is not a database" (``sqlite3.SQLITE_NOTADB`` from Python 3.11).
_SQLITE_NOTADB = 26
_BUILD_RE = re.compile(r"\.building-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})(?:-journal|-wal|-shm)?$")


def ensure_tracking_db(path: Path, artifact_root: str | None = None) -> str | None:
    """Make sure ``path`` (the embedded store's ``mlflow.db``) is a complete MLflow database.

    Call it before the first :class:`mlflow.MlflowClient` opens ``sqlite:///<path>``. A missing
    database is built under a temporary name and published atomically; leftovers of killed builds
    are removed. A database that is not complete (no ``alembic_version``, schema not at MLflow's
    head, missing tables, an empty or non-SQLite file) and holds no runs is moved aside to
    ``mlflow.db.broken-<timestamp>`` and rebuilt; the one-line note saying so is logged as a
    warning and returned (``None`` when nothing needed repair).

    ``artifact_root`` is where MLflow's default experiment keeps artifacts; it defaults to the
    store's ``artifacts/`` folder, as :func:`sweeplab.tracker.store.resolve_store` sets.

    Raises :class:`UsageError` (one line) when the folder cannot be written, and when the
    database is incomplete but holds runs (it is left as it is)."""
    path = Path(path).absolute()
    artifact_root = artifact_root or (path.parent / "artifacts").as_uri()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(path)
        if not path.exists():
            _set_aside_orphan_side_files(path)
            _build_and_publish(path, artifact_root)
            return None
        state = _inspect(path)
        return None if state.complete else _repair(path, artifact_root)
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in _FOLDER_ERRNOS:
            reason = exc.strerror or type(exc).__name__
            raise UsageError(f"cannot create the MLflow database in {path.parent}: {reason}; "
                                "choose a writable folder with --store-dir") from None
        raise


# --- Inspecting an existing database ------------------------------------------------------------


@dataclass(frozen=True)
class _DbState:
    """What a cheap look at a database file found."""

    complete: bool
    holds_runs: bool
    detail: str  # why it is incomplete, for messages; "" when complete


def _inspect(path: Path) -> _DbState:
    """Whether ``path`` is a complete MLflow database, read with :mod:`sqlite3` alone: the
    criteria MLflow itself applies (its tables exist, Alembic's revision is the head that the
    installed MLflow expects), so that a database passing here is one MLflow opens."""
    if path.stat().st_size == 0:
        return _DbState(complete=False, holds_runs=False, detail="empty file")
    try:
        with contextlib.closing(_connect(path)) as con:
            return _inspect_connection(con)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB or "not a database" in str(exc):
            return _DbState(complete=False, holds_runs=False, detail="not an SQLite database")
        raise UsageError(f"cannot read the MLflow database {path}: {exc}") from None


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to an existing file (``mode=rw`` never creates one). Opening it read-write
    lets SQLite roll back a hot journal left by a killed writer, as any later opener would."""
    return sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=_BUSY_SECONDS)


def _inspect_connection(con: sqlite3.Connection) -> _DbState:
    """:func:`_inspect` on an open connection."""
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    holds_runs = "runs" in tables and con.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None
    if "alembic_version" not in tables:
        return _DbState(complete=False, holds_runs=holds_runs, detail="no alembic_version table")
    row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    revision, head = (row[0] if row else None), _head_revision()
    if revision is None:
        return _DbState(complete=False, holds_runs=holds_runs, detail="no schema version recorded")
    if revision != head:
        return _DbState(complete=False, holds_runs=holds_runs, detail=f"schema version {revision}, MLflow expects {head}")
    missing = sorted(_expected_tables() - tables)
    if missing:
        return _DbState(complete=False, holds_runs=holds_runs, detail=f"missing tables {', '.join(missing[:3])}")
    return _DbState(complete=True, holds_runs=holds_runs, detail="")


@lru_cache(maxsize=1)
def _head_revision() -> str:
    """The Alembic revision the installed MLflow requires (its check on opening a store)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


@lru_cache(maxsize=1)
def _expected_tables() -> frozenset[str]:
    """The tables MLflow's models declare; MLflow re-runs its migrations when one is missing."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (registers the models)
    from mlflow.store.db.base_sql_model import Base

    return frozenset(Base.metadata.tables)


# --- Repairing a database an earlier version left half-built ------------------------------------


def _repair(path: Path, artifact_root: str) -> str | None:
    """Move an incomplete, run-less ``path`` aside and build a new one; the note, or ``None``
    when another process repaired it first. Runs under a folder lock so that two processes do
    not both move files (the second would move the first one's new database aside)."""
    with _folder_lock(path.parent):
        if not path.exists():  # another process moved it aside meanwhile: build as on a fresh store
            _build_and_publish(path, artifact_root)
            return None
        state = _inspect(path)
        if state.complete:
            return None
        if state.holds_runs:
            raise UsageError(
                f"{path} is not a complete MLflow database ({state.detail}) but holds runs: back it up, "
                f"then run 'mlflow db upgrade sqlite:///{path}', or move it away to start a new store")
        aside = _set_aside(path, "broken")
        _build_and_publish(path, artifact_root)
    note = f"{path} was not a complete MLflow database ({state.detail}) and held no runs: moved it to {aside.name} and created a new one"
    _log.warning(note)
    return note


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file to leave behind). Where locks are
    unavailable (Windows, some network file systems) it is skipped: repairs are rare, and where
    hard links exist the publish step never overwrites a database anyway."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _set_aside(path: Path, label: str, *, side_files_only: bool = False) -> Path:
    """Rename ``path`` and its SQLite side files to ``<name>.<label>-<timestamp>[-journal...]``, a
    name not yet taken, keeping a hot journal next to the database it belongs to."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while any(Path(f"{aside}{suffix}").exists() for suffix in ("", *_SIDE_SUFFIXES)):
        n += 1
        aside = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
    if not side_files_only:
        os.rename(path, aside)
    for suffix in _SIDE_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def _set_aside_orphan_side_files(path: Path) -> None:
    """Move away side files of a missing ``path`` (its database was deleted, its hot journal
    stayed): SQLite would otherwise apply that journal to the new database published there."""
    orphans = [suffix for suffix in _SIDE_SUFFIXES if Path(f"{path}{suffix}").exists()]
    if orphans and not path.exists():  # checked after the side files: they predate any new database
        aside = _set_aside(path, "orphan", side_files_only=True)
        _log.warning("moved SQLite side files of a missing %s aside to %s-*", path, aside.name)


# --- Building and publishing a new database -----------------------------------------------------


def _build_and_publish(path: Path, artifact_root: str) -> bool:
    """Build a complete database under a temporary name next to ``path`` and publish it there.
    True when this copy was published, False when another process published one first (ours is
    discarded). The temporary files are removed whatever happens, short of SIGKILL (the next
    call removes those)."""
    tmp = path.with_name(f"{path.name}.building-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # an unwritable folder fails here, early
        _create_schema(tmp, artifact_root)
        _settle(tmp)
        return _publish(tmp, path)
    finally:
        _remove_with_side_files(tmp)


def _create_schema(db: Path, artifact_root: str) -> None:
    """Have MLflow create its complete schema (and default experiment) in ``db``, with the very
    code a client runs on a new store: :class:`SqlAlchemyStore` creates the tables and runs every
    Alembic migration when they are missing. Its class-level engine cache is emptied of this
    URI and the engine disposed, so that no connection stays open on the file once renamed."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{db}"
    store = None
    try:
        store = SqlAlchemyStore(uri, artifact_root)
    finally:
        engines = {getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None), getattr(store, "engine", None)}
        for engine in engines - {None}:
            engine.dispose()


def _settle(db: Path) -> None:
    """Leave ``db`` self-contained and on disk before it is published: journal mode DELETE (a
    WAL, were one used, is checkpointed into the file and removed), no side file left, a check
    that the build is complete, then fsync. A side file left next to the temporary name would be
    lost by the rename, along with the data in it."""
    with contextlib.closing(_connect(db)) as con:
        con.execute("PRAGMA journal_mode = DELETE").fetchone()
        state = _inspect_connection(con)
    if not state.complete:
        raise RuntimeError(f"MLflow left an incomplete database in {db} ({state.detail})")
    leftovers = [suffix for suffix in _SIDE_SUFFIXES if Path(f"{db}{suffix}").exists()]
    if leftovers:
        raise RuntimeError(f"SQLite side files {leftovers} remain next to {db} after closing it")
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> bool:
    """Give ``tmp`` the name ``path`` unless a file has it already; True when it did. A hard link
    is atomic and never overwrites, so of several processes exactly one wins. Where the file
    system has no hard links, ``os.replace`` under the folder lock, after a check, stands in."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        with _folder_lock(path.parent):
            if path.exists():
                return False
            os.replace(tmp, path)
    _fsync_folder(path.parent)
    return True


# --- Leftovers of killed builds ------------------------------------------------------------------


def _remove_stale_builds(path: Path) -> None:
    """Remove temporary builds next to ``path`` whose process is gone (same machine) or that are
    older than :data:`_STALE_SECONDS`; a build in progress elsewhere is left alone."""
    now = time.time()
    for candidate in path.parent.glob(f"{glob.escape(path.name)}.building-*"):
        match = _BUILD_RE.search(candidate.name)
        if match is None:
            continue
        try:
            age = now - candidate.stat().st_mtime
        except FileNotFoundError:
            continue  # its build finished or another process removed it
        dead = match["host"] == _host() and not _pid_alive(int(match["pid"]))
        if dead or age > _STALE_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


def _remove_with_side_files(db: Path) -> None:
    """Delete ``db`` and its SQLite side files, those that exist."""
    for suffix in ("", *_SIDE_SUFFIXES):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would terminate it: let age decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True  # cannot tell: let age decide
    return True


@lru_cache(maxsize=1)
def _host() -> str:
    """This machine's name as it appears in temporary file names (pids are per machine)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
