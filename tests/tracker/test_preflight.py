"""The store preflight: every bad store, server or storage is one line, quickly, with nothing written.

Unit tests call :func:`check_store` on a resolved :class:`Store`; the CLI tests at the end run
``sweep run`` and need the driver to call the preflight before it prepares any data.
"""

from __future__ import annotations

import errno
import http.server
import importlib.util
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.errors import UsageError
from sweeplab.tracker.preflight import DEFAULT_TIMEOUT, check_store
from sweeplab.tracker.store import Store, resolve_store
from tests.conftest import POSTGRES_ENV, TINY

#: The issue's requirement: a refused store is reported within this many seconds.
LIMIT_S = 15.0


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the arguments of each test decide the store."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    """A port nothing listens on: bound by the OS, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: like a
    firewalled or hung server, a client waits until its own timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture()
def http_server() -> Iterator[Callable[[int, bytes], str]]:
    """A factory of tiny HTTP servers answering every GET with ``status`` and ``body``; returns
    the server's base URI."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _listing(root: Path) -> list[str]:
    """Every path under ``root``, relative, sorted: compared before and after to prove nothing was written."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refusal(store: Store, root: Path, cache_dir: Path | None = None, **kwargs: float) -> str:
    """The one-line message ``check_store`` refuses ``store`` with, after checking that it came
    within the time limit and that nothing under ``root`` was written."""
    before = _listing(root)
    started = time.monotonic()
    with pytest.raises(UsageError) as caught:
        check_store(store, cache_dir, **kwargs)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < LIMIT_S, f"{elapsed:.1f} s: {message}"
    assert len(message.splitlines()) == 1, message
    assert _listing(root) == before, "the preflight wrote something"
    return message


def _a_file(tmp_path: Path) -> Path:
    """A regular file where a folder would have to be: unwritable even for root."""
    path = tmp_path / "a-file"
    path.write_text("not a folder\n", encoding="utf-8")
    return path


# --- the stores that pass -------------------------------------------------------------------------

def test_the_default_embedded_store_passes_and_creates_nothing(tmp_path: Path) -> None:
    store = resolve_store(tmp_path / "mlruns")
    assert store.is_default
    check_store(store)
    check_store(store, tmp_path / "elsewhere" / "cache")
    assert _listing(tmp_path) == []


def test_a_plain_storage_path_is_still_a_journal_file(tmp_path: Path) -> None:
    check_store(resolve_store(tmp_path / "store", storage=str(tmp_path / "deep" / "study.journal")))
    check_store(resolve_store(tmp_path / "store", storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert _listing(tmp_path) == []


def test_a_tracking_server_that_answers_health_passes(tmp_path: Path, http_server: Callable[[int, bytes], str]) -> None:
    check_store(resolve_store(tmp_path / "store", tracking_uri=http_server(200, b"OK")))
    assert _listing(tmp_path) == []


def test_a_reachable_postgresql_passes_and_creates_no_table(tmp_path: Path) -> None:
    uri = os.environ.get(POSTGRES_ENV)
    if not uri:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against (.ci/run starts one)")
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -e '.[postgres]'")
    import sqlalchemy

    from sweeplab.tracker.store import with_postgres_driver

    engine = sqlalchemy.create_engine(with_postgres_driver(uri, POSTGRES_ENV))
    try:
        tables = sqlalchemy.inspect(engine).get_table_names()
        check_store(resolve_store(tmp_path / "store", tracking_uri=uri, storage=uri))
        engine.dispose()  # a fresh inspector, not a cached answer
        assert sqlalchemy.inspect(engine).get_table_names() == tables
    finally:
        engine.dispose()
    assert _listing(tmp_path) == []


# --- schemes and drivers --------------------------------------------------------------------------

def test_an_unknown_tracking_scheme_is_refused(tmp_path: Path) -> None:
    message = _refusal(resolve_store(tmp_path / "store", tracking_uri="bogus://x"), tmp_path)
    assert message.startswith("--tracking-uri bogus://x: unknown scheme 'bogus' (expected sqlite, postgresql")


def test_an_unknown_storage_scheme_is_refused_not_taken_for_a_journal_path(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the journal would have been ./bogus:/x
    message = _refusal(resolve_store(tmp_path / "store", storage="bogus://x"), tmp_path)
    assert message.startswith("--storage bogus://x: unknown scheme 'bogus'") and "journal file path" in message


def test_a_file_store_is_refused_as_mlflow_does_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = resolve_store(tmp_path / "store", tracking_uri=(tmp_path / "mlruns").as_uri())
    message = _refusal(store, tmp_path)
    assert "refuses a file store" in message and "MLFLOW_ALLOW_FILE_STORE" in message
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_store(store)
    assert _listing(tmp_path) == []


def test_a_missing_database_driver_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)  # importing it now fails, installed or not
    message = _refusal(resolve_store(tmp_path / "store", storage="mysql+pymysql://u:pw@127.0.0.1:1/db"), tmp_path)
    assert message.startswith("--storage mysql+pymysql://u:***@127.0.0.1:1/db: its database driver is not installed")
    assert "pymysql" in message and "pw" not in message
    monkeypatch.setitem(sys.modules, "psycopg", None)
    message = _refusal(resolve_store(tmp_path / "store", storage="postgresql://u@127.0.0.1:1/db"), tmp_path)
    assert message.startswith("--storage postgresql://u@127.0.0.1:1/db needs a PostgreSQL driver")


def test_an_unknown_database_driver_is_named(tmp_path: Path) -> None:
    message = _refusal(resolve_store(tmp_path / "store", tracking_uri="postgresql+nosuch://u@127.0.0.1:1/db"), tmp_path)
    assert message.startswith("--tracking-uri postgresql+nosuch://u@127.0.0.1:1/db: unknown database driver")


# --- servers that do not answer -------------------------------------------------------------------

def test_nothing_listening_on_the_tracking_port(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    message = _refusal(resolve_store(tmp_path / "store", tracking_uri=uri), tmp_path)
    assert message == f"--tracking-uri {uri}: no MLflow tracking server answers (connection refused)"


def test_a_web_server_that_is_not_mlflow(tmp_path: Path, http_server: Callable[[int, bytes], str]) -> None:
    uri = http_server(404, b"no such page")
    message = _refusal(resolve_store(tmp_path / "store", tracking_uri=uri), tmp_path)
    assert message == f"--tracking-uri {uri}: not an MLflow tracking server (GET /health answered HTTP 404)"


def test_an_unreachable_postgresql(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -e '.[postgres]'")
    port = _free_port()
    uri = f"postgresql://u:secret@127.0.0.1:{port}/db"
    message = _refusal(resolve_store(tmp_path / "store", storage=uri), tmp_path)
    assert message.startswith(f"--storage postgresql://u:***@127.0.0.1:{port}/db: cannot connect ("), message
    # resolve_store pins the tracking URI to psycopg, and the message shows the URI MLflow would get.
    message = _refusal(resolve_store(tmp_path / "store", tracking_uri=uri), tmp_path)
    assert message.startswith(f"--tracking-uri postgresql+psycopg://u:***@127.0.0.1:{port}/db: cannot connect ("), message
    assert "secret" not in message


def test_servers_that_hang_are_abandoned_together_within_the_limit(tmp_path: Path, silent_port: int) -> None:
    """A hung tracking server and a hung database (connections accepted, never answered) are
    probed side by side: the check ends after about one timeout, not one per store."""
    storage = f"postgresql://u@127.0.0.1:{silent_port}/db"
    have_driver = importlib.util.find_spec("psycopg") is not None
    store = resolve_store(tmp_path / "store", tracking_uri=f"http://127.0.0.1:{silent_port}",
                          storage=storage if have_driver else None)
    started = time.monotonic()
    message = _refusal(store, tmp_path)
    elapsed = time.monotonic() - started
    assert "no answer within" in message or "timeout" in message, message
    assert elapsed < 2 * DEFAULT_TIMEOUT, f"{elapsed:.1f} s: the probes ran one after the other"


# --- folders that cannot be written ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("where", "flag"),
    [("store_dir", "--store-dir"), ("cache_dir", "--cache-dir"), ("journal", "--storage"),
     ("sqlite_storage", "--storage"), ("sqlite_tracking", "--tracking-uri")],
)
def test_an_unwritable_folder_is_named_with_its_flag(tmp_path: Path, where: str, flag: str) -> None:
    blocked = _a_file(tmp_path) / "below"  # its nearest existing ancestor is a regular file
    good = tmp_path / "store"
    store = {
        "store_dir": lambda: resolve_store(blocked / "store"),
        "cache_dir": lambda: resolve_store(good),
        "journal": lambda: resolve_store(good, storage=str(blocked / "optuna.journal")),
        "sqlite_storage": lambda: resolve_store(good, storage=f"sqlite:///{blocked / 'optuna.db'}"),
        "sqlite_tracking": lambda: resolve_store(good, tracking_uri=f"sqlite:///{blocked / 'mlflow.db'}"),
    }[where]()
    message = _refusal(store, tmp_path, blocked / "cache" if where == "cache_dir" else None)
    assert message.startswith(f"{flag} {blocked}"), message
    assert message.endswith(f"cannot write there ({tmp_path / 'a-file'} is a file, not a folder)"), message


def test_a_journal_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "journal").mkdir()
    message = _refusal(resolve_store(tmp_path / "store", storage=str(tmp_path / "journal")), tmp_path)
    assert message == f"--storage {tmp_path / 'journal'}: cannot write there ({tmp_path / 'journal'} is not a regular file)"


def test_a_folder_the_system_refuses_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``os.access`` answers for a read-only mount or folder (as root too), simulated for one folder."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    message = _refusal(resolve_store(tmp_path / "store"), tmp_path, locked / "cache")
    assert message == f"--cache-dir {locked / 'cache'}: cannot write there ({locked} is not writable)"


#: ``/proc`` of Linux: a folder ``os.access`` calls writable for root that takes no new entry.
PROC = Path("/proc")
_NO_PROC = pytest.mark.skipif(not (PROC / "self").is_dir(), reason="no /proc file system here (Linux has one)")


@pytest.mark.parametrize("where", [pytest.param("proc", marks=_NO_PROC), "read-only mount"])
def test_a_folder_that_takes_no_new_entry_is_refused_as_root_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 where: str) -> None:
    """Permission bits do not stop root; creating a folder is tried for real (and undone)."""
    if where == "proc":
        store, refused, flag, cache = PROC / "sweeplab-store", PROC, "--store-dir", None
    else:  # what a read-only mount answers, simulated for one folder (os.access says yes to it)
        refused = tmp_path / "mounted"
        refused.mkdir()
        real_mkdir = os.mkdir

        def mkdir(path: object, *args: object, **kwargs: object) -> None:
            if Path(str(path)).parent == refused:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        store, flag, cache = tmp_path / "store", "--cache-dir", refused / "cache"
    message = _refusal(resolve_store(store), tmp_path, cache)
    shown = store if cache is None else cache
    assert message.startswith(f"{flag} {shown}: cannot write there (cannot create anything in {refused}: "), message
    if where != "proc":
        assert message.endswith(f"{os.strerror(errno.EROFS)})"), message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write to any folder whatever its mode")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        message = _refusal(resolve_store(locked / "store"), tmp_path)
    finally:
        locked.chmod(0o755)
    assert message == f"--store-dir {locked / 'store'}: cannot write there ({locked} is not writable)"


# --- through the command line (needs the driver to call check_store before preparing data) --------

runner = CliRunner()


def _cli_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, *args: str) -> str:
    """Run ``sweep run sentiment ARGS`` in ``tmp_path``; check exit code 2, one line, the time
    limit and that nothing was written there; return the message."""
    monkeypatch.chdir(tmp_path)
    # Should the store be found late after all, fail in seconds rather than after minutes of
    # retries (MLflow's own, and --outage-limit's).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    before = _listing(tmp_path)
    started = time.monotonic()
    result = runner.invoke(app, ["run", "sentiment", "--data-dir", str(data_dir), "--trials", "1",
                                 "--set", "epochs=1", *TINY, "--outage-limit", "0", "--store-dir", str(tmp_path / "store"), *args])
    elapsed = time.monotonic() - started
    message = result.output.strip()
    assert result.exit_code == 2, message
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert elapsed < LIMIT_S, f"{elapsed:.1f} s"
    assert _listing(tmp_path) == before, "sweep run wrote something"
    assert not (tmp_path / "store").exists()
    return message


def test_cli_run_with_an_unreachable_tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     sentiment_dir: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    message = _cli_refusal(tmp_path, monkeypatch, sentiment_dir, "--tracking-uri", uri)
    assert f"--tracking-uri {uri}: no MLflow tracking server answers (connection refused)" in message


@pytest.mark.parametrize("where", [pytest.param("proc", marks=_NO_PROC), "below a file"])
def test_cli_run_with_a_store_folder_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            sentiment_dir: Path, where: str) -> None:
    """One line and exit 2 before any data are prepared, as root too (no traceback from the
    prepared-data cache's first write)."""
    store, blocker = (PROC / "sweeplab-store", PROC) if where == "proc" else (_a_file(tmp_path) / "store", tmp_path / "a-file")
    message = _cli_refusal(tmp_path, monkeypatch, sentiment_dir, "--store-dir", str(store))
    assert f"--store-dir {store}: cannot write there (" in message, message
    assert str(blocker) in message
    assert not store.exists()


def test_cli_run_with_an_unknown_storage_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                sentiment_dir: Path) -> None:
    message = _cli_refusal(tmp_path, monkeypatch, sentiment_dir, "--storage", "bogus://x")
    assert "--storage bogus://x: unknown scheme 'bogus'" in message
    assert not (tmp_path / "bogus:").exists()
