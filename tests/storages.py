"""The Optuna storages a sweep can stand on, made fresh for a test and given back after it, as
``optuna/testing/storages.py`` makes Optuna's: the journal file (the default, one machine), an
RDB storage on SQLite, and one on PostgreSQL (the server named by ``SWEEPLAB_TEST_POSTGRES``;
without one, a PostgreSQL case skips and says why).

Tests get one through the ``sweep_storage`` fixture (tests/conftest.py), which runs a test once
per kind; :func:`storages` narrows a test to the kinds its scenario depends on. Every storage a
test opens is opened as a sweep opens it (``open_optuna_storage``), so that the test reads and
writes through the same locks, drivers and wrappers as the sweep under test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # tests/conftest.py imports this module in every session: Optuna only for the tests that use it
    import optuna
    from optuna.storages import BaseStorage

#: Every kind of storage a sweep can use, in the order the fixture runs them.
STORAGE_KINDS = ("journal", "sqlite", "postgresql")


class SweepStorage:
    """One Optuna storage for a test: ``spec`` is what ``--storage`` (or ``SweepOptions.storage``)
    takes; :meth:`open` and :meth:`study` open it as a sweep does, and :meth:`close` gives back
    the database connections of everything opened (the fixture calls it after the test)."""

    def __init__(self, kind: str, spec: str) -> None:
        self.kind, self.spec = kind, spec
        self._opened: list[BaseStorage] = []
        self._reader: BaseStorage | None = None

    @classmethod
    def of_store(cls, store: Path) -> SweepStorage:
        """The journal file a sweep keeps in its store folder when no ``--storage`` is given."""
        return cls("journal", str(store / "optuna.journal"))

    def open(self, heartbeat_seconds: int = 60) -> BaseStorage:
        """A new connection to the storage, opened as a sweep opens it; closed after the test."""
        from sweeplab.sweeps.storage import open_optuna_storage

        storage = open_optuna_storage(self.spec, heartbeat_seconds=heartbeat_seconds)
        self._opened.append(storage)
        return storage

    def study(self, name: str) -> optuna.Study:
        """The study ``name`` as it stands now (one connection kept for all reads); a KeyError when
        there is none yet."""
        import optuna

        if self._reader is None:
            self._reader = self.open()
        return optuna.load_study(study_name=name, storage=self._reader)

    def has_study(self, name: str) -> bool:
        """Whether a study ``name`` exists yet (a sweep in another process may not have made it);
        a journal file that does not exist yet is not created to find out."""
        if self.kind == "journal" and not Path(self.spec).exists():
            return False
        try:
            self.study(name)
        except KeyError:
            return False
        return True

    def close(self) -> None:
        """Close the pooled database connections of every storage opened (none for a journal)."""
        from sweeplab.sweeps.storage import close_storage

        for storage in self._opened:
            close_storage(storage)
        self._opened.clear()
        self._reader = None

    def __repr__(self) -> str:
        return f"SweepStorage({self.kind!r}, {self.spec!r})"


def make_storage(kind: str, folder: Path, databases: Callable[[], Callable[[], str]]) -> SweepStorage:
    """A fresh, empty storage of ``kind``: the journal at ``folder/store/optuna.journal`` (where a
    sweep whose store is ``folder/store`` keeps it by default), SQLite at ``folder/optuna.db``, or
    a new PostgreSQL database. ``databases()`` gives the ``postgres_db`` fixture's factory of
    databases (and skips the test without a server); it is called for PostgreSQL only, so that the
    other kinds never skip for want of a server."""
    if kind == "journal":
        return SweepStorage.of_store(folder / "store")
    if kind == "sqlite":
        return SweepStorage(kind, f"sqlite:///{folder / 'optuna.db'}")
    if kind == "postgresql":
        return SweepStorage(kind, databases()())
    raise ValueError(f"no storage kind {kind!r}: one of {', '.join(STORAGE_KINDS)}")


def storages(*kinds: str) -> pytest.MarkDecorator:
    """Run the test on the ``sweep_storage`` of these kinds only: where the scenario depends on
    the storage in those ways and running it on every kind would only multiply its time."""
    unknown = set(kinds) - set(STORAGE_KINDS)
    assert kinds and not unknown, f"unknown storage kinds {sorted(unknown)}"
    return pytest.mark.parametrize("sweep_storage", kinds, indirect=True)
