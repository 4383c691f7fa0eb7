"""The head of a Ray cluster serves the sweep's stores to the nodes: nothing else to start.

``sweep run TASK --ray ADDRESS`` on the embedded store keeps its records in files of the machine
it runs on (the head): ``mlflow.db``, ``artifacts/`` and ``optuna.journal`` under the store
folder. The nodes cannot open those files, so for the sweep's lifetime :func:`serving_stores`
serves them, on the address the nodes know the head by (Ray's node address of this machine):

* MLflow through its own tracking server (``mlflow server``) on ``mlflow.db``, with the
  artifact folder served through it (``--artifacts-destination``; a node reaches a run's
  artifacts as :mod:`sweeplab.tracker.artifact_proxy` says), behind MLflow's basic-auth app with
  one user made for this sweep: a password of 32 random characters that the nodes are handed
  with their options (through Ray, not on any command line), so that nobody else who reaches
  the port reads or writes the store;
* Optuna through Optuna's gRPC storage proxy on the journal file, which has no login of its own:
  here each call must carry a token made for the sweep (:mod:`sweeplab.sweeps.grpc_storage`),
  and it listens on that one address only, never on every interface.

A store given as servers (``--tracking-uri http://...``, ``--storage postgresql://...``) is not
served again; only what is a file here is. Both servers are this process's children, ended when
the sweep ends: by it, or by Linux when it is killed outright (``PR_SET_PDEATHSIG``, and the
proxy also watches its parent); their output is in ``STORE/workers/head-mlflow.log`` and
``head-optuna.log``. The head's own process goes on using the files directly.

``python -m sweeplab.sweeps.head_stores HOST PORT`` is the proxy's program; the storage and the
token come in its environment (a database URL may hold a password: never on a command line).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from sweeplab.errors import SweepFailed
from sweeplab.sweeps.grpc_storage import TOKEN_ENV
from sweeplab.tracker.access import Credentials, client_environment, server_environment
from sweeplab.tracker.store import GRPC_SCHEME, RDB_SCHEMES, Store

__all__ = ["SERVED_SCHEMES", "Served", "needs_serving", "serving_stores"]

#: The beginnings of store URIs that name a server (any other is a file on this machine; an SQLite
#: database is a file too).
SERVED_SCHEMES = (*(s for s in RDB_SCHEMES if s != "sqlite:"), "http:", "https:", "databricks", "mssql", "oracle",
                  GRPC_SCHEME)
#: How long the servers get to answer (MLflow's server imports for seconds; more on a busy machine).
_START_SECONDS = 120.0
_STOP_SECONDS = 10.0
_USER = "sweeplab-head"
#: Where the proxy's program finds the storage to serve (a database URL may hold a password).
_STORAGE_ENV = "SWEEPLAB_PROXY_STORAGE"


@dataclass(frozen=True)
class Served:
    """Where the nodes reach the sweep's stores: ``tracking_uri`` and ``storage`` (``None``: as
    given, already a server), ``artifacts`` (the head's artifact folder, a ``file:`` URI, that
    the tracking server serves; ``None`` when not served) and ``env``, the credentials the
    nodes' MLflow client sends."""

    tracking_uri: str | None = None
    storage: str | None = None
    artifacts: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # a log line never shows the password
        return f"Served(tracking_uri={self.tracking_uri!r}, storage={self.storage!r}, artifacts={self.artifacts!r})"


def needs_serving(store: Store) -> bool:
    """Whether some of ``store`` is kept in files of this machine (the nodes could not reach it)."""
    return not all(uri.startswith(SERVED_SCHEMES) for uri in (store.tracking_uri, store.optuna_storage))


@contextlib.contextmanager
def serving_stores(store: Store, host: str, logs: Path) -> Iterator[Served]:
    """Serve what of ``store`` is a file here on ``host`` (see the module docstring) until the
    ``with`` block ends; yields where the nodes reach it. A server that does not come up is
    :class:`SweepFailed`, with the last line of its log."""
    logs.mkdir(parents=True, exist_ok=True)
    started: list[tuple[subprocess.Popen, Callable[[], bool], Path]] = []  # each server, how to tell it is up, its log
    served = Served()
    try:
        if not store.tracking_uri.startswith(SERVED_SCHEMES):
            credentials = Credentials(_USER, secrets.token_urlsafe(24))
            port, artifacts = _free_port(host), store.artifact_root or (store.root / "artifacts").as_uri()
            uri = f"http://{_in_url(host)}:{port}"
            started.append((_start_mlflow(store, artifacts, host, port, credentials, logs),
                            partial(_answers_http, f"{uri}/health"), logs / "head-mlflow.log"))
            served = replace(served, tracking_uri=uri, artifacts=artifacts, env=client_environment(credentials))
        if not store.optuna_storage.startswith(SERVED_SCHEMES):
            port, token = _free_port(host), secrets.token_urlsafe(24)
            started.append((_start_proxy(store.optuna_storage, host, port, token, logs / "head-optuna.log"),
                            partial(_answers_tcp, host, port), logs / "head-optuna.log"))
            served = replace(served, storage=f"{GRPC_SCHEME}{_in_url(host)}:{port}", env={**served.env, TOKEN_ENV: token})
        for process, up, log in started:  # both start at once; MLflow's takes seconds
            _wait(process, up, log)
        yield served
    finally:
        _end([process for process, _, _ in started])


def _start_mlflow(store: Store, artifacts: str, host: str, port: int, credentials: Credentials, logs: Path) -> subprocess.Popen:
    from sweeplab.tracker.artifact_proxy import local_path
    from sweeplab.tracker.server import server_command
    from sweeplab.trainers.program import ended_with_this_process

    hosts = allowed_hosts_with(host)
    # MLflow's default of 4 server processes, fewer on a small head: they share its cores with the sweep.
    workers = str(max(1, min(4, (os.cpu_count() or 2) // 2)))
    command = [*server_command(store.tracking_uri, local_path(artifacts), host, port, hosts), "--app-name", "basic-auth",
               "--workers", workers]
    env = {**os.environ, **server_environment(credentials, logs / "head-auth")}
    with (logs / "head-mlflow.log").open("w", encoding="utf-8") as out:
        return subprocess.Popen(ended_with_this_process(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def allowed_hosts_with(host: str) -> str | None:
    """MLflow's ``--allowed-hosts`` (its guard against DNS rebinding) with ``host``, the address
    the nodes name the server by, with any port (MLflow matches the patterns as shell globs: an
    IPv6 address's bracket is written ``[[]`` in one, as MLflow's own list does); ``None`` for an
    MLflow that checks no host."""
    from sweeplab.tracker.server import allowed_hosts

    hosts = allowed_hosts()
    return hosts and f"{hosts},{_in_url(host)},{_in_url(host).replace('[', '[[]', 1)}:*"


def _start_proxy(storage: str, host: str, port: int, token: str, log: Path) -> subprocess.Popen:
    """The proxy's program (:func:`_proxy`), the storage and the token in its environment (a
    database URL may hold a password: never on a command line)."""
    from sweeplab.trainers.program import ended_with_this_process

    env = {**os.environ, _STORAGE_ENV: storage, TOKEN_ENV: token}
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen(ended_with_this_process([sys.executable, "-m", __name__, host, str(port)]), stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait(process: subprocess.Popen, up: Callable[[], bool], log: Path) -> None:
    """Wait until ``up()`` is true; :class:`SweepFailed` when the server ends or takes too long."""
    deadline = time.monotonic() + _START_SECONDS
    while not up():
        if process.poll() is not None or time.monotonic() > deadline:
            lines = [line for line in _read(log).splitlines() if line.strip()]
            how = f"ended ({process.returncode})" if process.returncode is not None else f"did not answer in {_START_SECONDS:g} s"
            raise SweepFailed(f"--ray: the server of this sweep's store for the nodes {how}: "
                              f"{lines[-1] if lines else 'no output'} (see {log})")
        time.sleep(0.25)


def _end(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each server's process group, then SIGKILL those that have not ended in time."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signum)
        deadline = time.monotonic() + _STOP_SECONDS
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _read(log: Path) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _proxy(host: str, port: int) -> None:
    """Serve the Optuna storage named in the environment (as ``--storage`` names one) on
    ``host:port``, to callers with the sweep's token, until ended (a signal, or the sweep's
    process gone: this one's parent changes)."""
    from sweeplab.sweeps.grpc_storage import serve
    from sweeplab.sweeps.storage import open_optuna_storage

    parent = os.getppid()
    server = serve(open_optuna_storage(os.environ.pop(_STORAGE_ENV)), host, port, os.environ.pop(TOKEN_ENV))
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop(0))
    print(f"Optuna's gRPC storage proxy on {host}:{port}", flush=True)
    while server.wait_for_termination(timeout=1.0):  # True: still serving after a second
        if os.getppid() != parent:
            server.stop(0)


if __name__ == "__main__":
    _proxy(sys.argv[1], int(sys.argv[2]))
