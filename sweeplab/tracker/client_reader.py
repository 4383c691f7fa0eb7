"""Reading runs back through :class:`mlflow.MlflowClient`: for a tracking server, whose database
sweeplab cannot see, and for stores other than SQLite and PostgreSQL (those two are read by
:mod:`sweeplab.tracker.sql_reader`, faster)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from sweeplab.errors import UsageError
from sweeplab.tracker.access import CREDENTIALS_ENV
from sweeplab.tracker.reading import Curve, StoredRun
from sweeplab.tracker.store import redact
from sweeplab.tracker.tags import PARENT, RETRIED_BY, STATE, TRIAL

__all__ = ["ClientReader"]

_PAGE = 1000
_REQUESTS = 8  # metric history requests in flight at once


def _number(text: str | None) -> float:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


class ClientReader:
    """A :class:`~sweeplab.tracker.reading.Reader` that asks the MLflow client (``search_runs``)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def _experiments(self) -> dict[str, str]:
        """The store's experiments by id: the first request of every read, where a tracking server
        that asks for a login says so (one line, naming how to give the credentials)."""
        try:
            found = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        except MlflowException as exc:
            if exc.error_code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                raise
            given = "refuses the credentials given" if os.environ.get("MLFLOW_TRACKING_USERNAME") else "asks for credentials"
            raise UsageError(f"{redact(self.tracking_uri)}: the tracking server {given}: set "
                             f"{CREDENTIALS_ENV}=USER:PASSWORD (sweep run and sweep ui also take --credentials FILE)") from None
        return {e.experiment_id: e.name for e in found}

    def _search(self, experiments: Mapping[str, str], filters: list[str], order_by: list[str]) -> Iterator[Any]:
        """Every matching run, a page at a time (stop iterating to stop asking)."""
        token = None
        while True:
            page = self.client.search_runs(list(experiments), filter_string=" and ".join(filters),
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, order_by=order_by,
                                           page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def runs(self, tags: Mapping[str, str], *, states: Sequence[str] | None = None, metric: str | None = None,
             descending: bool = True, limit: int | None = None) -> list[StoredRun]:
        experiments = self._experiments()
        if not experiments:
            return []
        filters = [f"tags.`{key}` = '{_quoted(value)}'" for key, value in tags.items()]
        order = ["attributes.start_time DESC"]
        if metric is not None:
            order = [f"metrics.`{metric}` {'DESC' if descending else 'ASC'}", "attributes.start_time ASC"]
        found: list[StoredRun] = []
        for run in self._search(experiments, filters, order):
            if states is not None and run.data.tags.get(STATE) not in states:
                continue
            if metric is not None and math.isnan(run.data.metrics.get(metric, math.nan)):
                continue
            found.append(StoredRun(run_id=run.info.run_id, name=run.info.run_name or "",
                                   experiment_id=run.info.experiment_id, experiment=experiments[run.info.experiment_id],
                                   status=run.info.status, start_time=int(run.info.start_time or 0),
                                   artifact_uri=run.info.artifact_uri or "",
                                   tags=dict(run.data.tags), params=dict(run.data.params), metrics=dict(run.data.metrics)))
            if metric is None and limit is not None and len(found) >= limit:
                break
        if metric is not None:  # ties: the lower trial number (Optuna's best trial), then the earlier start
            sign = -1.0 if descending else 1.0
            found.sort(key=lambda r: (sign * r.metrics[metric], _number(r.tags.get(TRIAL)), r.start_time))
        return found[:limit] if limit is not None else found

    def states(self, parents: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {p: {} for p in parents}
        experiments = self._experiments()
        for parent in parents:
            for run in self._search(experiments, [f"tags.`{PARENT}` = '{_quoted(parent)}'"], []):
                if RETRIED_BY in run.data.tags:
                    continue
                state = run.data.tags.get(STATE, "running")
                counts[parent][state] = counts[parent].get(state, 0) + 1
        return counts

    def curves(self, parent: str, keys: Sequence[str]) -> dict[str, dict[str, Curve]]:
        """One metric history request per run and key, ``_REQUESTS`` at a time (a server answers
        each in tens of milliseconds: 2,000 one after the other would take over a minute)."""
        wanted = [(run.info.run_id, key) for run in self._search(self._experiments(), [f"tags.`{PARENT}` = '{_quoted(parent)}'"], [])
                  for key in keys if key in run.data.metrics]

        def history(run_id: str, key: str) -> Curve:
            points: dict[int, tuple[int, float]] = {}
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
                points[m.step] = (int(m.step), float(m.value))
            return sorted(points.values())

        found: dict[str, dict[str, Curve]] = {}
        with ThreadPoolExecutor(_REQUESTS) as pool:
            for (run_id, key), curve in zip(wanted, pool.map(lambda w: history(*w), wanted)):
                found.setdefault(run_id, {})[key] = curve
        return found
