"""Creating the embedded store's ``mlflow.db``: complete or absent after a SIGKILL at any moment,
one winner when processes race, half-built databases from earlier versions repaired (unless
they hold runs), one-line errors for folders that cannot be written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.store.db.utils import _get_latest_schema_revision

from sweeplab.errors import UsageError
from sweeplab.tracker import embedded
from sweeplab.tracker.embedded import ensure_tracking_db
from tests.checks import wait_for

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the helper forks to skip re-importing MLflow")

#: Runs in a fresh interpreter (imports MLflow once), times a build, then forks a child per kill
#: moment that creates a store in its own folder: "after:F" kills the child F times one build's
#: duration after it starts (during MLflow's migrations), "before:NAME" makes the child SIGKILL
#: itself when it reaches embedded.NAME. Prints what each kill left.
KILL_SCRIPT = r"""
import json, os, signal, sys, time, traceback
from pathlib import Path
from sweeplab.tracker import embedded

base = Path(sys.argv[1])
embedded.ensure_tracking_db(base / "warmup" / "mlflow.db")  # imports and loads what a first build does lazily
start = time.monotonic()
embedded.ensure_tracking_db(base / "measured" / "mlflow.db")  # as long as a child's build takes
build_seconds = time.monotonic() - start

def kill_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

cases = []
for moment in sys.argv[2:]:
    kind, _, arg = moment.partition(":")
    folder = base / f"{kind}-{arg}"
    pid = os.fork()
    if pid == 0:
        if kind == "before":
            setattr(embedded, arg, kill_self)
        try:
            embedded.ensure_tracking_db(folder / "mlflow.db")
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    if kind == "after":
        time.sleep(float(arg) * build_seconds)
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    files = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    cases.append({"moment": moment, "folder": str(folder), "killed": killed, "files": files})
print(json.dumps({"build_seconds": build_seconds, "cases": cases}))
"""

#: Forks N children that create the same store at the same moment (released together through a
#: pipe); each reports whether its copy was the one published. Prints exit codes and reports.
RACE_SCRIPT = r"""
import json, os, sys, traceback
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store
from sweeplab.tracker import embedded

path, n = Path(sys.argv[1]) / "mlflow.db", int(sys.argv[2])
go_r, go_w = os.pipe()
out_r, out_w = os.pipe()
pids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        publish = embedded._publish
        def recording(tmp, dest):
            won = publish(tmp, dest)
            os.write(out_w, b"W" if won else b"L")
            return won
        embedded._publish = recording
        os.read(go_r, 1)
        try:
            embedded.ensure_tracking_db(path)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    pids.append(pid)
os.close(out_w)
os.write(go_w, b"g" * n)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
outcomes = b""
while chunk := os.read(out_r, 64):
    outcomes += chunk
print(json.dumps({"codes": codes, "outcomes": outcomes.decode()}))
"""

#: What earlier versions did: let MLflow create the schema in mlflow.db itself.
LEGACY_SCRIPT = r"""
import sys
from mlflow import MlflowClient
print("ready", flush=True)
MlflowClient(tracking_uri="sqlite:///" + sys.argv[1]).search_experiments()
"""


def _run_script(script: str, *args: str, timeout: float = 120) -> dict:
    """Run ``script`` in a fresh interpreter and return the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_works(path: Path) -> None:
    """MLflow opens ``path`` and can create an experiment and a run with a metric in it."""
    assert _revision(path) == _get_latest_schema_revision()
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment = client.create_experiment("check", artifact_location=(path.parent / "artifacts" / "check").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}


def _revision(path: Path) -> str | None:
    """Alembic's revision recorded in ``path``, read with sqlite3 alone (None: none recorded)."""
    with sqlite3.connect(path) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    con.close()
    return row[0] if row else None


def _only_the_db(folder: Path) -> None:
    """``folder`` holds ``mlflow.db`` and no temporary build or SQLite side file."""
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("mlflow.db")) == ["mlflow.db"]


def _open_builds() -> list[str]:
    """Files of temporary builds this process still holds open (Linux's /proc; else none known)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    return [target for target in targets if ".building-" in target]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- (a) a fresh folder ---------------------------------------------------------------------------


def test_fresh_folder_gets_a_complete_database_and_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "mlruns" / "mlflow.db"
    assert ensure_tracking_db(path) is None
    _only_the_db(path.parent)
    assert not _open_builds(), "a connection stayed open on the temporary build"
    # The default experiment keeps artifacts in the store's folder, not in the working directory.
    assert MlflowClient(tracking_uri=f"sqlite:///{path}").get_experiment("0").artifact_location == (path.parent / "artifacts" / "0").as_uri()
    _assert_works(path)
    inode = path.stat().st_ino
    assert ensure_tracking_db(path) is None  # a complete database is left as it is
    assert path.stat().st_ino == inode


# --- (b) SIGKILL during creation --------------------------------------------------------------------

#: Two timed kills during MLflow's migrations (fractions of one build), then kills at the last
#: steps: the schema built but not yet published, and the publishing link made but the temporary
#: name not yet removed.
KILL_MOMENTS = ("after:0.1", "after:0.4", "before:_publish", "before:_fsync_folder")


@needs_fork
def test_sigkill_at_any_moment_of_creation_leaves_a_store_that_the_next_call_completes(tmp_path: Path) -> None:
    report = _run_script(KILL_SCRIPT, str(tmp_path), *KILL_MOMENTS)
    assert [case["moment"] for case in report["cases"]] == list(KILL_MOMENTS)
    for case in report["cases"]:
        folder, files = Path(case["folder"]), case["files"]
        assert case["killed"], f"{case['moment']}: the build ended before the kill ({report['build_seconds']:.2f} s per build)"
        assert any(".building-" in name for name in files), case  # the kill left a temporary build behind
        if case["moment"] == "before:_fsync_folder":
            assert "mlflow.db" in files and _revision(folder / "mlflow.db") == _get_latest_schema_revision()
        else:
            assert "mlflow.db" not in files, case  # never a half-built mlflow.db
        assert ensure_tracking_db(folder / "mlflow.db") is None
        _only_the_db(folder)
        _assert_works(folder / "mlflow.db")


# --- (c) processes racing on a fresh store --------------------------------------------------------


@needs_fork
def test_processes_creating_the_same_store_at_once_all_succeed_and_one_copy_wins(tmp_path: Path) -> None:
    result = _run_script(RACE_SCRIPT, str(tmp_path), "2")
    assert result["codes"] == [0, 0]
    assert result["outcomes"].count("W") == 1, result
    assert "L" in result["outcomes"], result  # the race did happen: a copy was built and discarded
    _only_the_db(tmp_path)
    _assert_works(tmp_path / "mlflow.db")


def test_publishing_never_replaces_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"published by another process")
    inode, digest = path.stat().st_ino, _digest(path)
    assert embedded._build_and_publish(path, (tmp_path / "artifacts").as_uri()) is False
    assert (path.stat().st_ino, _digest(path)) == (inode, digest)
    _only_the_db(tmp_path)


# --- (d) databases that earlier versions left half-built ----------------------------------------------


def _empty(path: Path) -> None:
    path.touch()


def _partial_schema(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name VARCHAR(256))")
        con.execute("CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY, experiment_id INTEGER)")
    con.close()


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)


@pytest.mark.parametrize("make_broken", [_empty, _partial_schema, _not_sqlite])
def test_a_broken_run_less_database_is_moved_aside_and_rebuilt(tmp_path: Path, make_broken) -> None:
    path = tmp_path / "mlflow.db"
    make_broken(path)
    digest = _digest(path)
    note = ensure_tracking_db(path)
    assert note is not None and "\n" not in note and str(path) in note
    (aside,) = tmp_path.glob("mlflow.db.broken-*")
    assert aside.name in note
    assert _digest(aside) == digest  # kept as it was
    _assert_works(path)


def test_a_database_killed_during_mlflows_own_migrations_is_rebuilt(tmp_path: Path) -> None:
    """The reported failure: the first run on a fresh store killed while MLflow migrated
    mlflow.db in place (earlier versions)."""
    path = tmp_path / "mlflow.db"
    process = subprocess.Popen([sys.executable, "-c", LEGACY_SCRIPT, str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        wait_for("the tables to exist, with the migrations running", lambda: True if path.exists() and
                 path.stat().st_size >= 60_000 else None, 60, every=0.002, alive=process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert _revision(path) != _get_latest_schema_revision(), "MLflow finished before the kill"
    note = ensure_tracking_db(path)
    assert note is not None and "held no runs" in note
    (aside,) = tmp_path.glob("mlflow.db.broken-*[0-9]")
    with sqlite3.connect(aside) as con:  # kept as a consistent database (a hot journal was rolled back or moved along)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    assert not [p.name for p in tmp_path.iterdir() if ".building-" in p.name or p.name.startswith("mlflow.db-")]
    _assert_works(path)


def _runs_without_alembic(path: Path) -> None:
    _partial_schema(path)
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO runs VALUES ('r1', 0)")
    con.close()


def _runs_at_an_old_revision(path: Path) -> None:
    ensure_tracking_db(path)
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    client.create_run(client.create_experiment("kept", artifact_location=(path.parent / "a").as_uri()))
    with sqlite3.connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    con.close()


@pytest.mark.parametrize("make_broken", [_runs_without_alembic, _runs_at_an_old_revision])
def test_an_incomplete_database_holding_runs_is_never_moved(tmp_path: Path, make_broken) -> None:
    path = tmp_path / "mlflow.db"
    make_broken(path)
    digest = _digest(path)
    with pytest.raises(UsageError) as error:
        ensure_tracking_db(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "holds runs" in message
    assert _digest(path) == digest
    assert not list(tmp_path.glob("mlflow.db.broken-*"))


def test_side_files_of_a_deleted_database_are_moved_away_before_publishing(tmp_path: Path) -> None:
    """A hot journal left next to a deleted mlflow.db would be applied to the new database."""
    path = tmp_path / "mlflow.db"
    Path(f"{path}-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + b"\0" * 504)
    ensure_tracking_db(path)
    assert not Path(f"{path}-journal").exists()
    assert len(list(tmp_path.glob("mlflow.db.orphan-*-journal"))) == 1
    _assert_works(path)


def test_stale_temporary_builds_are_removed_and_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    old = tmp_path / "mlflow.db.building-elsewhere-123-0123abcd"
    running = tmp_path / "mlflow.db.building-elsewhere-124-4567cdef"  # another machine's build in progress
    dead = tmp_path / f"mlflow.db.building-{embedded._host()}-999999999-89abcdef-journal"  # no such pid here
    for file in (old, running, dead):
        file.touch()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    embedded._remove_stale_builds(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name]


# --- (e) a folder that cannot be written ----------------------------------------------------------------


@pytest.mark.parametrize("below", ["mlruns", ""])
def test_a_folder_that_cannot_be_created_is_a_one_line_error_naming_it(tmp_path: Path, below: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = blocker / below if below else blocker
    with pytest.raises(UsageError) as error:
        ensure_tracking_db(folder / "mlflow.db")
    message = str(error.value)
    assert "\n" not in message and str(folder) in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_read_only_folder_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "mlruns"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UsageError) as error:
            ensure_tracking_db(folder / "mlflow.db")
    finally:
        folder.chmod(0o755)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)
