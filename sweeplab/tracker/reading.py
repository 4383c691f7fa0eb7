"""Reading runs back from a tracking store: the few questions the read commands ask, behind one
interface (:func:`sweeplab.tracker.query.reader_for` picks the reader for a URI).

Two readers answer them. :class:`~sweeplab.tracker.sql_reader.SqlReader` reads the tables of an
MLflow SQL store (the embedded SQLite default, PostgreSQL, MySQL) directly with SQLAlchemy: it asks
the database for the rows it needs (the top trial, the counts by state) and needs no MLflow import,
which alone costs about a second. :class:`~sweeplab.tracker.client_reader.ClientReader` asks a
tracking server through :class:`mlflow.MlflowClient`. ``tests/tracker/test_readers.py`` holds both
to the same answers on the same store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Curve", "Reader", "StoredRun"]

#: (step, value) points of one metric of one run, in step order.
Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class StoredRun:
    """One run as the store holds it: its identity, state, tags, params and latest metric values."""

    run_id: str
    name: str
    experiment_id: str
    experiment: str
    status: str
    start_time: int
    artifact_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Reader(Protocol):
    """What the read commands ask of a store (active experiments and runs only)."""

    def runs(self, tags: Mapping[str, str], *, states: Sequence[str] | None = None, metric: str | None = None,
             descending: bool = True, limit: int | None = None) -> list[StoredRun]:
        """Runs whose tags hold every ``tags`` value (and whose ``sweeplab.state`` is one of
        ``states``, when given). With ``metric``: only runs with a latest value of it that is not
        NaN, best first by it (``descending`` for a maximised one), ties to the lower
        ``sweeplab.trial`` number, then the earlier start; without: newest first. At most
        ``limit`` runs."""
        ...

    def states(self, parents: Sequence[str]) -> dict[str, dict[str, int]]:
        """For each parent run id, its child runs counted by ``sweeplab.state`` (``running`` for a
        child without one), less the runs of attempts that a later attempt replaced (tagged
        ``sweeplab.retried_by``): each trial counts once, by its latest attempt."""
        ...

    def curves(self, parent: str, keys: Sequence[str]) -> dict[str, dict[str, Curve]]:
        """Every logged point of the metrics ``keys`` of each child run of ``parent``:
        ``run id -> key -> curve``."""
        ...
