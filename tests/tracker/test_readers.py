"""The two readers of a store give the same answers: the SQL reader, which reads MLflow's tables
directly (sweeplab.tracker.sql_reader), against the MLflow client, on SQLite and PostgreSQL. When
MLflow changes its tables in a way that changes an answer, these tests fail first."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from sweeplab.errors import InternalError, Unreachable
from sweeplab.tracker.client_reader import ClientReader
from sweeplab.tracker.sql_reader import SqlReader
from sweeplab.tracker.store import with_postgres_driver
from sweeplab.tracker.tags import PARENT, ROLE, STATE, TASK, TRIAL


def _metric(client: MlflowClient, run: str, key: str, points: list[tuple[int, float]], stamp: int = 1000) -> None:
    client.log_batch(run, metrics=[Metric(key, v, stamp + i, s) for i, (s, v) in enumerate(points)], synchronous=True)


def _fill(uri: str) -> dict[str, str]:
    """A store with two sweeps, children in every state, ties, a NaN, a deleted run and a deleted
    experiment; returns the parents' run ids by name."""
    client = MlflowClient(tracking_uri=uri)
    kept = client.create_experiment("kept")
    gone = client.create_experiment("gone")
    parents = {}
    for name, start in (("old", 1000), ("new", 2000)):
        parents[name] = client.create_run(kept, start_time=start, run_name=name,
                                          tags={ROLE: "sweep", TASK: "t", "sweeplab.study": name}).info.run_id
    values = {0: 0.5, 1: 0.9, 2: 0.9, 3: 0.7, 4: math.nan}
    for number, value in values.items():
        run = client.create_run(kept, start_time=3000 + number, run_name=f"trial-{number}",
                                tags={ROLE: "trial", TASK: "t", PARENT: parents["new"], TRIAL: str(number),
                                      STATE: "complete" if number != 3 else "pruned"}).info.run_id
        client.log_param(run, "lr", str(0.01 * (number + 1)))
        _metric(client, run, "best_val_accuracy", [(0, value)])
        _metric(client, run, "val_accuracy", [(1, 0.3), (2, 0.4 + number / 100), (2, 0.45 + number / 100), (3, 0.5)])
    late = client.create_run(kept, start_time=2999, run_name="trial-8",  # started first (another worker), same value as 1 and 2
                             tags={ROLE: "trial", TASK: "t", PARENT: parents["new"], TRIAL: "8", STATE: "complete"})
    _metric(client, late.info.run_id, "best_val_accuracy", [(0, 0.9)])
    running = client.create_run(kept, start_time=4000, tags={ROLE: "trial", TASK: "t", PARENT: parents["new"], TRIAL: "5"})
    _metric(client, running.info.run_id, "best_val_accuracy", [(0, 0.99)])
    deleted = client.create_run(kept, start_time=4001, tags={ROLE: "trial", TASK: "t", PARENT: parents["new"],
                                                             TRIAL: "6", STATE: "complete"})
    _metric(client, deleted.info.run_id, "best_val_accuracy", [(0, 1.0)])
    client.delete_run(deleted.info.run_id)
    elsewhere = client.create_run(gone, tags={ROLE: "trial", TASK: "t", PARENT: parents["new"], STATE: "complete"})
    _metric(client, elsewhere.info.run_id, "best_val_accuracy", [(0, 1.0)])
    client.delete_experiment(gone)
    return parents


@pytest.fixture(params=["sqlite", "postgresql"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    make: Callable[[], str] = request.getfixturevalue("postgres_db")
    return with_postgres_driver(make(), "--tracking-uri")


def _answers(reader: SqlReader | ClientReader, parents: dict[str, str]) -> dict[str, object]:
    def ids(runs: list) -> list[tuple[str, str]]:
        return [(r.name, r.tags.get(TRIAL, "")) for r in runs]

    trials = {ROLE: "trial", TASK: "t"}
    top = reader.runs(trials, states=("complete",), metric="best_val_accuracy", limit=2)
    return {
        "top two": ids(top),
        "top run": (top[0].params, top[0].metrics, top[0].experiment, top[0].status, top[0].start_time),
        "lowest": ids(reader.runs(trials, states=("complete", "pruned"), metric="best_val_accuracy", descending=False)),
        "any state": ids(reader.runs(trials, metric="best_val_accuracy", limit=1)),
        "sweeps newest first": ids(reader.runs({ROLE: "sweep"})),
        "states": reader.states([parents["new"], parents["old"]]),
        "curves": {run: curves for run, curves in reader.curves(parents["new"], ["val_accuracy", "nothing"]).items()},
    }


def test_the_sql_reader_answers_as_the_mlflow_client_does(store_uri: str) -> None:
    parents = _fill(store_uri)
    sql, client = _answers(SqlReader(store_uri), parents), _answers(ClientReader(store_uri), parents)
    assert sql == client
    # and the answers are the right ones, not merely the same
    assert sql["top two"] == [("trial-1", "1"), ("trial-2", "2")]  # a tie goes to the lower trial number; NaN never wins
    assert sql["lowest"] == [("trial-0", "0"), ("trial-3", "3"), ("trial-1", "1"), ("trial-2", "2"), ("trial-8", "8")]
    assert sql["any state"][0][1] == "5"  # a running trial counts when no state is asked for
    assert sql["sweeps newest first"] == [("new", ""), ("old", "")]
    assert sql["states"] == {parents["new"]: {"complete": 5, "pruned": 1, "running": 1}, parents["old"]: {}}
    curves = list(sql["curves"].values())  # type: ignore[union-attr]
    assert len(curves) == 5 and all(set(c) == {"val_accuracy"} for c in curves)
    assert sorted(c["val_accuracy"][1] for c in curves)[0] == (2, 0.45)  # a step logged twice: the later value


def test_the_sql_reader_never_creates_or_writes_a_store(tmp_path: Path) -> None:
    from sweeplab.errors import UsageError

    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(UsageError, match="no tracking store here"):
        SqlReader(f"sqlite:///{missing}").runs({ROLE: "sweep"})
    assert not missing.exists() and not missing.parent.exists()
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).close()
    with pytest.raises(UsageError, match="not an MLflow tracking store"):
        SqlReader(f"sqlite:///{empty}").runs({ROLE: "sweep"})


def test_reading_a_store_imports_no_mlflow_torch_or_optuna(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fill(uri)
    code = ("import sys\nfrom sweeplab.tracker.query import sweeps, best_trials\n"
            f"rows = sweeps({uri!r}, {{}}, 't')\nbest = best_trials({uri!r}, 't', 'best_val_accuracy')\n"
            "heavy = ('mlflow', 'torch', 'optuna', 'matplotlib')\n"
            "print(rows[0].counts['complete'], best[0].trial, sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["5", "1", "[]"]


def test_a_query_the_store_refuses_is_an_internal_error_and_a_lost_connection_unreachable(tmp_path: Path) -> None:
    """Only a connection that failed means the store is away; a statement the database refuses
    (MLflow tables of another layout) would fail again, and is said as such."""
    with sqlite3.connect(tmp_path / "store.db") as db:
        for table in ("runs", "tags", "experiments", "metrics", "latest_metrics", "params"):  # without MLflow's columns
            db.execute(f"CREATE TABLE {table} (unknown TEXT)")
    with pytest.raises(InternalError, match="no such column"):
        SqlReader(f"sqlite:///{tmp_path / 'store.db'}").runs({"sweeplab.role": "trial"})
    with pytest.raises(Unreachable, match="did not answer"):  # nothing listens on port 9
        SqlReader("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2").runs({"sweeplab.role": "trial"})
