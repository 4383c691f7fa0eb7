"""Check every store a sweep will use before any data is prepared, and write nothing while doing so.

Without this check a bad store is found late and loudly: an MLflow tracking server that does not
answer costs minutes of client retries and ends in a long traceback, an unwritable folder in a raw
``PermissionError``, an unknown ``--storage`` scheme silently becomes a journal file named
``bogus:/x``, and by then the prepared-data cache (tens of MB) has been written. :func:`check_store`
turns each of these into one :class:`~sweeplab.errors.UsageError` line (the CLI prints it and
exits 2) within a few seconds:

* the tracking URI's scheme must be one MLflow can use here, and the Optuna storage must be an RDB
  URL or a journal file path (a ``scheme://`` that Optuna cannot open is refused, not taken as a path);
* the database driver a URL needs must be installed;
* a database server must accept a connection and answer ``SELECT 1`` (nothing is created in it);
* an MLflow tracking server must answer ``GET /health`` with 200;
* each folder the sweep will write (store, cache, journal, SQLite database) must be creatable:
  its nearest existing ancestor must be a folder that takes a new folder and a file in it, tried
  for real (and removed at once) since permission bits do not stop root, while ``/proc``, a
  read-only mount or a full disk do.

Nothing is left behind: the one thing created, a hidden probe folder holding a one-byte file, is
removed before the check returns. Network probes run side by side, each bounded by ``timeout``
seconds (a blackholed address, where a connection neither succeeds nor is refused, costs the same
as a refused one).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import os
import queue
import re
import secrets
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sweeplab.errors import UsageError
from sweeplab.tracker.access import check_login
from sweeplab.tracker.store import GRPC_SCHEME, RDB_SCHEMES, Store, grpc_address, redact, with_postgres_driver

__all__ = ["check_store"]

#: Seconds one network probe may take (connect and answer). The probes run concurrently, so the
#: whole check stays near this even when both the tracking store and the storage hang.
DEFAULT_TIMEOUT = 5.0
#: Extra seconds a probe thread gets beyond ``timeout`` before it is abandoned: DNS look-ups and
#: multi-address hosts (``localhost`` is ::1 and 127.0.0.1) are not covered by a driver's timeout.
_GRACE = 1.0

#: Tracking-store schemes MLflow 3.17 registers (mlflow.tracking._tracking_service.utils.
#: _register_tracking_stores): its SQLAlchemy database engines, a REST server, Databricks. The
#: file store ("" and "file") is registered too but refuses to start unless MLFLOW_ALLOW_FILE_STORE
#: is set (MLflow >= 3.7); "uc"/"databricks-uc" are registered only to raise an error.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SERVER_SCHEMES = ("http", "https")
_TRACKING_SCHEMES = (*_DATABASE_SCHEMES, *_SERVER_SCHEMES, "databricks")
_FILE_SCHEMES = ("", "file")

#: Optuna storages besides a journal file: RDBStorage's database URLs (store.RDB_SCHEMES decides).
_STORAGE_SCHEMES = "sqlite, postgresql, mysql, grpc"
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: The connect-timeout argument of each DBAPI driver SQLAlchemy may load (seconds, as an int).
_CONNECT_TIMEOUT_ARG = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout", "pg8000": "timeout",
                        "pymysql": "connect_timeout", "mysqldb": "connect_timeout", "mysqlconnector": "connection_timeout",
                        "pyodbc": "timeout"}
#: What to install (or write) when a database's default driver is missing.
_DRIVER_HINT = {"postgresql": "pip install 'sweeplab[postgres]'",
                "mysql": "pip install pymysql and write mysql+pymysql://",
                "mssql": "pip install pyodbc"}


@dataclass(frozen=True)
class _Probe:
    """One network check: ``shown`` heads its messages (flag and redacted URI), ``run`` raises
    :class:`UsageError` when the store cannot be used."""

    shown: str
    run: Callable[[], None]


def check_store(store: Store, cache_dir: Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise a one-line :class:`UsageError` when ``store`` cannot be used; leave nothing written.

    ``cache_dir`` is the ``--cache-dir`` flag as given (None: the default ``STORE_DIR/cache``), so
    that a message names the flag a path came from. Local checks (schemes, drivers, folders) run
    first and cost nothing; then the database and tracking servers are probed concurrently, each
    for at most ``timeout`` seconds plus a second of grace."""
    _check_folder(store.root, "--store-dir")  # always written: staging, workers' logs, artifacts
    probes = [*_check_tracking(store, timeout), *_check_storage(store, timeout)]
    if store.artifact_root is not None and store.artifact_root.startswith("file:"):
        _check_folder(_file_uri_path(store.artifact_root), "--store-dir")
    if cache_dir is None:
        _check_folder(store.root / "cache", "--store-dir")
    else:
        _check_folder(Path(cache_dir).resolve(), "--cache-dir")
    _run_probes(probes, timeout + _GRACE)


# --- the tracking store -------------------------------------------------------------------------

def _check_tracking(store: Store, timeout: float) -> list[_Probe]:
    """Local checks of the MLflow tracking URI; returns the network probe it needs, if any."""
    uri = store.tracking_uri
    flag = "--store-dir" if store.is_default else "--tracking-uri"
    shown = f"{flag} {redact(uri)}"
    # MLflow reads these three bare names as schemes, not as relative file-store paths.
    scheme = uri if uri in ("databricks", "databricks-uc", "uc") else urlsplit(uri).scheme.lower()
    base = scheme.partition("+")[0]  # postgresql+psycopg -> postgresql, as MLflow reads it
    if base in _SERVER_SCHEMES and "+" not in scheme:
        return [_Probe(shown, lambda: _probe_tracking_server(uri, shown, timeout))]
    if base in _DATABASE_SCHEMES and scheme.count("+") <= 1:
        return _check_database(uri, flag, shown, timeout)
    if scheme == "databricks" or scheme in _plugin_schemes():
        return []  # credentials and reachability are the Databricks SDK's or the plugin's business
    if scheme in _FILE_SCHEMES:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
            raise UsageError(f"{shown}: MLflow {_mlflow_version()} refuses a file store for tracking; use "
                                f"sqlite:///PATH/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)")
        _check_folder(_file_uri_path(uri) if scheme == "file" else Path(uri).resolve(), flag)
        return []
    raise UsageError(f"{shown}: unknown scheme '{scheme}' (expected {', '.join(_TRACKING_SCHEMES)})")


def _probe_tracking_server(uri: str, shown: str, timeout: float) -> None:
    """``GET {uri}/health``: an MLflow tracking server answers 200 ("OK"), without credentials
    (MLflow's auth app leaves /health open); an authenticating proxy answers 401 or 403, which
    passes too. Honours MLflow's TLS settings for https."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_tls_context(uri)) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise UsageError(f"{shown}: no MLflow tracking server answers ({_network_reason(exc, timeout)})") from None
    # 401/403: a proxy in front of the server wants the credentials MLflow's client sends
    # (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD); something answered there.
    if status not in (200, 401, 403):
        raise UsageError(f"{shown}: not an MLflow tracking server (GET /health answered HTTP {status})")
    if status == 200:
        check_login(uri, shown, timeout, _tls_context(uri))


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """The TLS context MLflow's client would use: MLFLOW_TRACKING_INSECURE_TLS skips verification,
    MLFLOW_TRACKING_SERVER_CERT_PATH names a CA bundle, MLFLOW_TRACKING_CLIENT_CERT_PATH a client
    certificate. None for plain http."""
    if not uri.lower().startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("true", "1"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert := os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(client_cert)
    return context


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register as tracking stores (entry points)."""
    return {ep.name for ep in importlib.metadata.entry_points(group="mlflow.tracking_store")}


def _mlflow_version() -> str:
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


# --- the Optuna storage -------------------------------------------------------------------------

def _check_storage(store: Store, timeout: float) -> list[_Probe]:
    """Local checks of the Optuna storage spec (an RDB URL, else a journal file path, as
    :func:`~sweeplab.sweeps.storage.open_optuna_storage` reads it); returns the probe it needs."""
    spec = store.optuna_storage
    flag = "--store-dir" if spec == str(store.root / "optuna.journal") else "--storage"
    shown = f"{flag} {redact(spec)}"
    if spec.startswith(RDB_SCHEMES):
        return _check_database(with_postgres_driver(spec, flag), flag, shown, timeout)
    if spec.startswith(GRPC_SCHEME):
        host, port = grpc_address(spec)
        return [_Probe(shown, lambda: _probe_grpc_proxy(host, port, shown, timeout))]
    if match := _URL_SCHEME.match(spec):
        # open_optuna_storage would take it for a path and write a journal named like "./bogus:/x".
        raise UsageError(f"{shown}: unknown scheme '{match.group(1)}' "
                            f"(expected {_STORAGE_SCHEMES}, or a journal file path)")
    _check_file(Path(spec).resolve(), flag)
    return []


def _probe_grpc_proxy(host: str, port: int, shown: str, timeout: float) -> None:
    """Open a TCP connection to Optuna's gRPC storage proxy (it has no call that proves more
    without a study): something listens there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise UsageError(f"{shown}: no Optuna gRPC storage proxy answers ({_network_reason(exc, timeout)})") from None


# --- databases (tracking URI or storage) --------------------------------------------------------

def _check_database(url: str, flag: str, shown: str, timeout: float) -> list[_Probe]:
    """A database URL: its driver must load; SQLite needs a writable file, a server a connection."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"{shown}: not a database URL (expected sqlite:///PATH or DIALECT[+DRIVER]://USER:PASSWORD@HOST/DATABASE)") from None
    if parsed.get_backend_name() == "sqlite":
        # Opening the file would create it; check its folder instead. No file: in-memory database.
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _check_file(Path(parsed.database).resolve(), flag)
        return []
    engine = _engine(url, parsed, shown, timeout)
    return [_Probe(shown, lambda: _probe_database(engine, shown))]


def _engine(url: str, parsed: sqlalchemy.URL, shown: str, timeout: float) -> sqlalchemy.Engine:
    """An engine that has connected nowhere yet, with the driver's connect timeout and no pool
    (the probe's one connection is closed at once). Creating it loads the driver, so a missing
    one is reported here, before any probe."""
    try:
        arg = _CONNECT_TIMEOUT_ARG.get(parsed.get_driver_name())  # loads the dialect, not the driver
        connect_args = {arg: max(2, round(timeout))} if arg else {}  # libpq's minimum is 2 s
        return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except sqlalchemy.exc.NoSuchModuleError:
        raise UsageError(f"{shown}: unknown database driver '{parsed.drivername}'") from None
    except ImportError as exc:
        hint = _DRIVER_HINT.get(parsed.get_backend_name(), "install it")
        raise UsageError(f"{shown}: its database driver is not installed ({exc}); {hint}") from None


def _probe_database(engine: sqlalchemy.Engine, shown: str) -> None:
    """Connect (with the engine's short connect timeout) and run ``SELECT 1``: proves the server
    answers and the credentials and database are right, and creates nothing (no table, no schema)."""
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise UsageError(f"{shown}: cannot connect ({_first_line(getattr(exc, 'orig', None) or exc)})") from None
    finally:
        engine.dispose()


# --- folders and files --------------------------------------------------------------------------

def _check_file(path: Path, flag: str) -> None:
    """A file the sweep will create or append to (journal, SQLite database): an existing one must
    be a writable regular file, and its folder must be creatable and writable (both keep lock and
    journal files beside it)."""
    found = _stat(path)
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            raise UsageError(f"{flag} {path}: cannot write there ({path} is not a regular file)")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag} {path}: cannot write there ({path} is not writable)")
    _check_folder(path.parent, flag, shown=path)


def _check_folder(folder: Path, flag: str, shown: Path | None = None) -> None:
    """``folder`` can be created (or is) and written to: its nearest existing ancestor is a
    folder we may write to. A regular file on the way is unwritable even for root, for whom
    ``os.access`` says yes to everything else (a read-only file system still says no)."""
    existing, mode = _nearest_existing(folder)
    shown = shown or folder
    if not stat.S_ISDIR(mode):
        raise UsageError(f"{flag} {shown}: cannot write there ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: cannot write there ({existing} is not writable)")
    refused = _try_writing(existing)
    if refused is not None:
        raise UsageError(f"{flag} {shown}: cannot write there (cannot create anything in {existing}: "
                         f"{refused.strerror or type(refused).__name__})")


def _try_writing(folder: Path) -> OSError | None:
    """Create a hidden folder in ``folder`` and a one-byte file in it, then remove both; the
    error that stopped it, or None. ``os.access`` says yes to root for any folder of a file
    system mounted read-write, even one that refuses every new entry (``/proc``, ``/sys``), and
    cannot see a full disk."""
    probe = folder / f".sweeplab-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(probe)
    except OSError as exc:
        return exc
    try:
        fd = os.open(probe / "probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe / "probe")
        with contextlib.suppress(OSError):
            os.rmdir(probe)
    return None


def _nearest_existing(path: Path) -> tuple[Path, int]:
    """``path`` itself or its closest ancestor that exists (the root always does), with its mode."""
    while (found := _stat(path)) is None and path != path.parent:
        path = path.parent
    return path, found.st_mode if found is not None else stat.S_IFDIR


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s status, or None when it cannot be seen: missing, below a regular file, or
    below a folder we may not search (the caller then looks at that ancestor instead)."""
    try:
        return path.stat()
    except OSError:
        return None


def _file_uri_path(uri: str) -> Path:
    """The local path of a ``file:`` URI."""
    return Path(unquote(urlsplit(uri).path)).resolve()


# --- running the probes -------------------------------------------------------------------------

def _run_probes(probes: list[_Probe], seconds: float) -> None:
    """Run ``probes`` side by side in daemon threads and raise the first failure as soon as it
    comes; a probe still running after ``seconds`` is reported as unanswered and abandoned (its
    thread is a daemon, so it never holds the process open)."""
    if not probes:
        return
    done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
    for index, probe in enumerate(probes):
        threading.Thread(target=_capture, args=(index, probe.run, done), daemon=True,
                         name=f"sweeplab-preflight-{index}").start()
    deadline = time.monotonic() + seconds
    pending = set(range(len(probes)))
    while pending:
        try:
            index, error = done.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            first = probes[min(pending)]
            raise UsageError(f"{first.shown}: no answer within {seconds:g} s") from None
        pending.discard(index)
        if error is not None:
            raise error


def _capture(index: int, run: Callable[[], None], done: queue.Queue[tuple[int, BaseException | None]]) -> None:
    """Thread body: run a probe and hand back its exception (or None)."""
    try:
        run()
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        done.put((index, exc))
    else:
        done.put((index, None))


def _network_reason(exc: BaseException, timeout: float) -> str:
    """A few words for why a connection failed: refused, timed out, unknown host, TLS, ..."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias since Python 3.10
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP server: {type(exc).__name__}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
