"""Optuna's own storage conformance suite (``optuna.testing.pytest_storages.StorageTestCase``: every
method of a storage, its errors, pickling, attributes written while read) held against sweeplab's
ReconnectingStorage around each RDB storage a sweep can stand on. A wrapper that forwards a call
wrongly, loses an error Optuna relies on (KeyError, UpdateFinishedTrialError, DuplicatedStudyError)
or cannot be handed to another process fails here."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.testing.pytest_storages import StorageTestCase

from sweeplab.sweeps.storage import ReconnectingStorage, close_storage, open_optuna_storage, reconnecting_rdb
from sweeplab.tracker.reconnect import Patience
from tests.conftest import postgres_databases

#: ``cached_sqlite`` is the RDB mode of Optuna's ``optuna.testing.storages.STORAGE_MODES`` that a
#: sweep uses (an RDB storage on a SQLite file behind Optuna's trial cache; the uncached
#: ``sqlite`` mode is never what a sweep opens, so it is left out to keep the suite's time),
#: built as its ``StorageSupplier`` builds it (that module imports ``fakeredis``, for its Redis
#: mode, which sweeplab does not install); ``postgresql`` is the storage a sweep opens on PostgreSQL
#: (``--storage postgresql://``). Each test gets a copy of an empty database made once per mode:
#: making Optuna's tables costs about 0.4 s, more than most tests.
MODES = ("cached_sqlite", "postgresql")

#: As in Optuna's supplier: a SQLite write waits this long for another connection's lock.
_SQLITE_TIMEOUT = 300


def _patience() -> Patience:
    """Retrying that gives up soon: a test that finds a store unreachable fails instead of waiting."""
    return Patience("the test storage", limit=5.0, first=0.05)


def _rdb(path: Path) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the SQLite file at ``path``, which does not wait for the disk on
    each commit (``PRAGMA synchronous = OFF``): what is tested is what the storage answers, not
    whether a commit survives the machine crashing, and the waits made up half the suite's time."""
    rdb = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": _SQLITE_TIMEOUT}})
    sqlalchemy.event.listen(rdb.engine, "connect", _no_disk_waits)
    rdb.engine.dispose()  # the connection opened to make the storage had no such pragma
    return rdb


def _no_disk_waits(connection: sqlite3.Connection, _record: object) -> None:
    connection.execute("PRAGMA synchronous = OFF")


@pytest.fixture(scope="module")
def empty_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding Optuna's tables and nothing else."""
    path = tmp_path_factory.mktemp("optuna") / "empty.db"
    _rdb(path)  # makes the tables
    return path


@pytest.fixture(scope="module")
def empty_postgres() -> Iterator[Callable[[], str]]:
    """A factory of PostgreSQL databases holding Optuna's tables and nothing else, each a copy
    (``CREATE DATABASE ... TEMPLATE``) of one made once per module; skips when there is no server."""
    with postgres_databases() as make:
        template = make()
        close_storage(open_optuna_storage(template))  # no connection may stay on a template
        yield lambda: make(template)


def _wrapped(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> ReconnectingStorage:
    """``mode``'s storage behind ReconnectingStorage."""
    if mode == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("empty_postgres")
        storage = open_optuna_storage(make(), outage_limit=5.0)
        assert isinstance(storage, ReconnectingStorage)
        return storage
    rdb = _rdb(Path(shutil.copyfile(request.getfixturevalue("empty_sqlite"), tmp_path / "optuna.db")))
    return reconnecting_rdb(rdb, _patience())


@pytest.fixture(params=MODES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReconnectingStorage]:
    """The storage Optuna's suite tests (PostgreSQL skips, saying why, without a server); its
    pooled connections are closed afterwards."""
    wrapped = _wrapped(request.param, request, tmp_path)
    try:
        yield wrapped
    finally:
        close_storage(wrapped)


class TestReconnectingStorage(StorageTestCase):
    """Every test of Optuna's suite, on :func:`storage`."""
