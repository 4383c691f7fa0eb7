"""What ``sweep server`` and ``sweep ui`` start: the MLflow program, its environment, and the lines
printed before it takes the process over.

Both are checked before anything is printed or made (:func:`~sweeplab.tracker.server.check_port`:
MLflow on a taken port logs it and exits 0, after the addresses printed would open whatever holds
the port), and both refuse to serve a store beyond this machine without credentials
(:mod:`sweeplab.tracker.access`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sweeplab.errors import UsageError
from sweeplab.tracker.access import check_exposure, client_environment, read_credentials, server_environment

__all__ = ["Launch", "open_when_up", "server_launch", "sweeps_or_none", "ui_launch", "use_credentials"]


@dataclass(frozen=True)
class Launch:
    """An MLflow program to start: its ``command`` and ``env``, the ``lines`` to print first, and
    for the UI its address (``root``)."""

    command: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    root: str = ""


def use_credentials(file: Path | None) -> None:
    """Hand the credentials of ``--credentials FILE`` (or ``SWEEPLAB_CREDENTIALS``) to MLflow's
    client, in this process and the workers it starts: a served store asks for them."""
    credentials = read_credentials(file)
    if credentials is not None:
        os.environ.update(client_environment(credentials))


def _guard(host: str, credentials_file: Path | None, no_auth: bool, folder: Path,
           app: list[str] | None = None) -> tuple[list[str], dict[str, str], list[str]]:
    """The ``--app-name`` arguments (``app`` without a login), the environment and the warning
    line of a server on ``host``."""
    credentials = read_credentials(credentials_file)
    warning = check_exposure(host, credentials, no_auth)
    if credentials is None:
        return app or [], {}, [f"warning: {warning}"] if warning else []
    return ["--app-name", "basic-auth"], server_environment(credentials, folder), []


def server_launch(backend_store_uri: str | None, artifacts: Path | None, store_dir: Path, host: str, port: int,
                  hosts: str | None, credentials_file: Path | None, no_auth: bool) -> Launch:
    """``sweep server``: MLflow's tracking server with the runs in ``backend_store_uri`` (default
    ``STORE_DIR/server.db``) and the artifacts it serves in ``artifacts``."""
    from sweeplab.tracker.server import allowed_hosts, check_port, server_command
    from sweeplab.tracker.store import redact, with_postgres_driver

    root = store_dir.resolve()
    backend = with_postgres_driver(backend_store_uri or f"sqlite:///{root / 'server.db'}", "--backend-store-uri")
    check_port(host, port)
    app, env, lines = _guard(host, credentials_file, no_auth, root / "server-auth")
    root.mkdir(parents=True, exist_ok=True)
    destination = (artifacts or root / "server-artifacts").resolve()
    address = socket.gethostname() if host in ("0.0.0.0", "::") else host
    login = " --credentials FILE (the same USER:PASSWORD)" if app else ""
    lines += [f"MLflow server on http://{host}:{port}{' (login required)' if app else ''}: runs in {redact(backend)}, "
              f"artifacts in {destination}",
              f"on every machine: sweep run TASK --tracking-uri http://{address}:{port}{login} --storage "
              "postgresql://USER:PW@HOST/DB with a database of its own for Optuna (not the server's; same command, "
              "same study name: they join one sweep)"]
    command = [*server_command(backend, destination, host, port, allowed_hosts(hosts)), *app]
    return Launch(command, {**os.environ, **env}, lines)


def ui_launch(tracking_uri: str, host: str, port: int, credentials_file: Path | None, no_auth: bool,
              auth_folder: Path) -> Launch:
    """``sweep ui`` on the store at ``tracking_uri`` (a database: a tracking server serves its own)."""
    from sweeplab.tracker.server import check_port

    check_port(host, port)
    app, env, lines = _guard(host, credentials_file, no_auth, auth_folder, _model_training_app())
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port",
               str(port), *app]
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    return Launch(command, {**os.environ, **env}, lines, root=f"http://{'[::1]' if host == '::' else shown}:{port}/")


def _model_training_app() -> list[str]:
    """``--app-name sweeplab`` (:mod:`sweeplab.tracker.ui_app`: the UI starts in the model-training
    view) where sweeplab is installed with its entry point, which MLflow looks the app up by; none
    otherwise (a source tree on ``PYTHONPATH``), and then only the printed links carry the view."""
    from importlib.metadata import entry_points

    return ["--app-name", "sweeplab"] if entry_points(group="mlflow.app", name="sweeplab") else []


def sweeps_or_none(store_dir: Path, tracking_uri: str | None) -> list:
    """The store's sweeps, newest first; none when no sweep has run yet."""
    from sweeplab import api

    try:
        return api.status(store_dir=store_dir, tracking_uri=tracking_uri)
    except UsageError:
        return []


def open_when_up(root: str, url: str, process: subprocess.Popen) -> None:
    """Open ``url`` in the default browser once the UI at ``root`` answers (up to a minute)."""
    import time
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{root}health", timeout=2):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)
