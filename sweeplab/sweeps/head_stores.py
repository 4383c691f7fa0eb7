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
* Optuna through Optuna's gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``) on the
  journal file, which has no login of its own: it listens on that one address only, never on
  every interface.

A store given as servers (``--tracking-uri http://...``, ``--storage postgresql://...``) is not
served again; only what is a file here is. Both servers are this process's children, ended when
the sweep ends, however it ends; their output is in ``STORE/workers/head-mlflow.log`` and
``head-optuna.log``. The head's own process goes on using the files directly.

``python -m sweeplab.sweeps.head_stores STORAGE HOST PORT`` is the proxy's program.
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
from sweeplab.tracker.access import Credentials, client_environment, server_environment
from sweeplab.tracker.store import GRPC_SCHEME, Store

__all__ = ["SERVED_SCHEMES", "Served", "needs_serving", "serving_stores"]

#: The beginnings of store URIs that name a server (any other is a file on this machine).
SERVED_SCHEMES = ("http:", "https:", "databricks", "postgresql", "mysql", "mssql", "oracle", GRPC_SCHEME)
#: How long the servers get to answer (MLflow's server imports for seconds; more on a busy machine).
_START_SECONDS = 120.0
_STOP_SECONDS = 10.0
_USER = "sweeplab-head"


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
            port = _free_port(host)
            started.append((_start_proxy(store.optuna_storage, host, port, logs / "head-optuna.log"),
                            partial(_answers_tcp, host, port), logs / "head-optuna.log"))
            served = replace(served, storage=f"{GRPC_SCHEME}{_in_url(host)}:{port}")
        for process, up, log in started:  # both start at once; MLflow's takes seconds
            _wait(process, up, log)
        yield served
    finally:
        for process, _, _ in started:
            _end(process)


def _start_mlflow(store: Store, artifacts: str, host: str, port: int, credentials: Credentials, logs: Path) -> subprocess.Popen:
    from sweeplab.tracker.artifact_proxy import local_path
    from sweeplab.tracker.server import allowed_hosts, server_command

    hosts = allowed_hosts()  # MLflow's DNS-rebinding guard: the nodes name the server by the address it listens on
    hosts = hosts and f"{hosts},{_in_url(host)},{_in_url(host)}:*"
    command = [*server_command(store.tracking_uri, local_path(artifacts), host, port, hosts), "--app-name", "basic-auth"]
    env = {**os.environ, **server_environment(credentials, logs / "head-auth")}
    with (logs / "head-mlflow.log").open("w", encoding="utf-8") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _start_proxy(storage: str, host: str, port: int, log: Path) -> subprocess.Popen:
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", __name__, storage, host, str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


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


def _end(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it has not ended in time."""
    for signum, wait in ((signal.SIGTERM, _STOP_SECONDS), (signal.SIGKILL, _STOP_SECONDS)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)


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


def _proxy(storage: str, host: str, port: int) -> None:
    """Serve the Optuna storage ``storage`` (as ``--storage`` names one) on ``host:port`` until ended."""
    import warnings

    import optuna

    from sweeplab.sweeps.storage import open_optuna_storage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.run_grpc_proxy_server(open_optuna_storage(storage), host=host, port=port)


if __name__ == "__main__":
    _proxy(sys.argv[1], sys.argv[2], int(sys.argv[3]))
