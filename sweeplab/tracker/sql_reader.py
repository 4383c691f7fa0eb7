"""Reading an MLflow SQL store's tables directly: the one module that knows MLflow's schema.

MLflow's client answers ``search_runs`` by loading every matching run whole (all its tags, params
and metrics) after an import of about a second; on a 1,000-trial store ``sweep best`` took 3.8 s.
Here the database is asked for what a read command needs: the top run by one metric, child runs
counted by state, the points of two metrics. The tables and columns used (``experiments``,
``runs``, ``tags``, ``params``, ``latest_metrics``, ``metrics``) have been MLflow's since 1.x;
``tests/tracker/test_readers.py`` fails when a change to them makes these answers differ from the
MLflow client's.

A SQLite store is opened read-only: a read never creates, locks for writing or migrates it.
Engines are kept per store between reads (a PostgreSQL engine pools its connections) until
:func:`dispose_engines` closes them: :mod:`sweeplab.api` does after each call, so that a
notebook holds no connection between calls.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from sweeplab.errors import InternalError, Unreachable, UsageError
from sweeplab.tracker.reading import Curve, StoredRun
from sweeplab.tracker.reconnect import is_connection_error
from sweeplab.tracker.store import redact
from sweeplab.tracker.tags import PARENT, RETRIED_BY, STATE, TRIAL

__all__ = ["SqlReader", "dispose_engines", "held_engines"]

_RUN_COLUMNS = "r.run_uuid, r.name, r.experiment_id, e.name, r.status, r.start_time, r.artifact_uri"
_ACTIVE = "r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'"


#: The engines readers use, by store URI, the most recently used last.
_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()
_MOST_ENGINES = 8


def _new_engine(uri: str) -> sa.Engine:
    """An engine on the store; a SQLite file is opened read-only, a connection per query (a file
    replaced since is read anew), so that a read never creates or writes it."""
    url = sa.engine.make_url(uri)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        target = f"file:{quote(url.database)}?mode=ro"
        return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False),
                                poolclass=sa.pool.NullPool)
    return sa.create_engine(url, pool_pre_ping=True)


def _engine(uri: str) -> sa.Engine:
    """The engine on the store at ``uri``, made on first use; the least recently used beyond
    :data:`_MOST_ENGINES` is disposed."""
    with _engines_lock:
        engine = _engines[uri] = _engines.pop(uri, None) or _new_engine(uri)  # the most recently used last
        evicted = [_engines.pop(old) for old in list(_engines)[:-_MOST_ENGINES]]
    for old in evicted:
        old.dispose()
    return engine


def dispose_engines() -> None:
    """Close the connections every reader's engine pooled and forget the engines. A reader used
    afterwards makes a new one."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def held_engines() -> int:
    """How many engines the readers keep now (each may pool connections)."""
    with _engines_lock:
        return len(_engines)


#: What the databases say when the tables are not there (SQLite, PostgreSQL).
_NO_TABLES = ("no such table", "does not exist", "UndefinedTable")


class SqlReader:
    """A :class:`~sweeplab.tracker.reading.Reader` over the tables of the MLflow store at ``uri``
    (SQLite or PostgreSQL: the SQL here is written for those two)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        statement = sa.text(sql)
        for name, value in params.items():
            if isinstance(value, (list, tuple)):
                statement = statement.bindparams(sa.bindparam(name, expanding=True))
        try:
            with _engine(self.uri).connect() as connection:
                return list(connection.execute(statement, params))
        except sa.exc.DBAPIError as exc:
            first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
            if any(words in str(exc) for words in _NO_TABLES):
                raise UsageError(f"{redact(self.uri)}: not an MLflow tracking store (it has no MLflow tables)") from None
            if "unable to open database" in str(exc):
                raise UsageError(f"{redact(self.uri)}: no tracking store here") from None
            if is_connection_error(exc):
                raise Unreachable(f"the MLflow tracking store {redact(self.uri)} did not answer: {first}",
                                  store=redact(self.uri)) from None
            raise InternalError(f"reading {redact(self.uri)} failed ({first}): a query sweeplab made, or MLflow tables of a "
                                "layout it does not know", error=exc) from exc

    def runs(self, tags: Mapping[str, str], *, states: Sequence[str] | None = None, metric: str | None = None,
             descending: bool = True, limit: int | None = None) -> list[StoredRun]:
        params: dict[str, Any] = {}
        where = [_ACTIVE]
        for i, (key, value) in enumerate(tags.items()):
            where.append(f"EXISTS (SELECT 1 FROM tags t{i} WHERE t{i}.run_uuid = r.run_uuid "
                         f"AND t{i}.key = :k{i} AND t{i}.value = :v{i})")
            params[f"k{i}"], params[f"v{i}"] = key, value
        if states is not None:
            where.append("EXISTS (SELECT 1 FROM tags s WHERE s.run_uuid = r.run_uuid AND s.key = :state AND s.value IN :states)")
            params["state"], params["states"] = STATE, list(states) or [""]
        join, order = "", "r.start_time DESC"
        if metric is not None:  # ties: the lower trial number (Optuna's best trial), then the earlier start
            join = ("JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = :metric AND m.is_nan = :nan "
                    "LEFT JOIN tags n ON n.run_uuid = r.run_uuid AND n.key = :trial")
            params["metric"], params["nan"], params["trial"] = metric, False, TRIAL
            order = f"m.value {'DESC' if descending else 'ASC'}, CAST(n.value AS INTEGER) ASC, r.start_time ASC"
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id {join} "
               f"WHERE {' AND '.join(where)} ORDER BY {order}")
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = int(limit)
        found = self._rows(sql, **params)
        return self._whole([(str(row[0]), row) for row in found])

    def _whole(self, found: list[tuple[str, Any]]) -> list[StoredRun]:
        """The runs of ``found`` (id, run row) with their tags, params and latest metrics."""
        if not found:
            return []
        ids = [run_id for run_id, _ in found]
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[str, dict[str, float]] = {i: {} for i in ids}
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            for key, value, run_id in self._rows("SELECT key, value, run_uuid FROM tags WHERE run_uuid IN :ids", ids=chunk):
                tags[run_id][key] = value
            for key, value, run_id in self._rows("SELECT key, value, run_uuid FROM params WHERE run_uuid IN :ids", ids=chunk):
                params[run_id][key] = value
            for key, value, is_nan, run_id in self._rows(
                    "SELECT key, value, is_nan, run_uuid FROM latest_metrics WHERE run_uuid IN :ids", ids=chunk):
                metrics[run_id][key] = math.nan if is_nan else float(value)
        return [StoredRun(run_id=run_id, name=row[1] or "", experiment_id=str(row[2]), experiment=row[3], status=row[4],
                          start_time=int(row[5] or 0), artifact_uri=row[6] or "", tags=tags[run_id], params=params[run_id],
                          metrics=metrics[run_id])
                for run_id, row in found]

    def states(self, parents: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {p: {} for p in parents}
        for chunk in (list(parents[i:i + 500]) for i in range(0, len(parents), 500)):
            self._count_states(chunk, counts)
        return counts

    def _count_states(self, parents: list[str], counts: dict[str, dict[str, int]]) -> None:
        sql = ("SELECT p.value, s.value, COUNT(*) FROM tags p JOIN runs r ON r.run_uuid = p.run_uuid "
               "LEFT JOIN tags s ON s.run_uuid = p.run_uuid AND s.key = :state "
               "WHERE p.key = :parent AND p.value IN :parents AND r.lifecycle_stage = 'active' "
               "AND NOT EXISTS (SELECT 1 FROM tags x WHERE x.run_uuid = p.run_uuid AND x.key = :retried) "
               "GROUP BY p.value, s.value")
        for parent, state, count in self._rows(sql, state=STATE, parent=PARENT, parents=list(parents), retried=RETRIED_BY):
            state = state or "running"
            counts[parent][state] = counts[parent].get(state, 0) + int(count)

    def curves(self, parent: str, keys: Sequence[str]) -> dict[str, dict[str, Curve]]:
        sql = ("SELECT m.run_uuid, m.key, m.step, m.value, m.is_nan FROM metrics m "
               "JOIN tags p ON p.run_uuid = m.run_uuid AND p.key = :parent AND p.value = :run "
               "JOIN runs r ON r.run_uuid = m.run_uuid AND r.lifecycle_stage = 'active' "
               "WHERE m.key IN :keys ORDER BY m.run_uuid, m.key, m.step, m.timestamp")
        found: dict[str, dict[str, Curve]] = {}
        for run_id, key, step, value, is_nan in self._rows(sql, parent=PARENT, run=parent, keys=list(keys)):
            curve = found.setdefault(run_id, {}).setdefault(key, [])
            point = (int(step), math.nan if is_nan else float(value))
            if curve and curve[-1][0] == point[0]:  # a step logged twice (a resumed trial): the later value
                curve[-1] = point
            else:
                curve.append(point)
        return found
