"""The MLflow tracking server that workers on several machines log to (``sweep server``).

MLflow's own ``mlflow server``, with the runs in a database (PostgreSQL for many machines) and
the artifacts in a folder it serves, so that workers need no shared disk. MLflow (3.5 and later)
refuses requests whose ``Host`` header is not an allowed host, against DNS rebinding; its default
allows only loopback and private IP addresses, so a worker that names the server by its host name
(``--tracking-uri http://gpu-server:5000``) would be refused. The default here adds this
machine's own names to MLflow's list; ``--allowed-hosts`` replaces the list.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

__all__ = ["allowed_hosts", "server_command"]


def allowed_hosts(given: str | None = None) -> str | None:
    """The ``--allowed-hosts`` value for the server: ``given`` when set, else MLflow's default
    (loopback and private addresses) plus this machine's host name and fully qualified name, with
    any port. ``None`` for an MLflow that checks no host (before 3.5): the flag is then left out."""
    if given:
        return given
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts
    except ImportError:
        return None
    names = sorted({socket.gethostname(), socket.getfqdn()} - {""})
    return ",".join([*get_default_allowed_hosts(), *names, *(f"{name}:*" for name in names)])


def server_command(backend: str, artifacts: Path, host: str, port: int, hosts: str | None) -> list[str]:
    """The ``mlflow server`` command line: runs in ``backend``, artifacts served from
    ``artifacts``, listening on ``host:port``, accepting the ``Host`` headers ``hosts``."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
               str(artifacts), "--host", host, "--port", str(port)]
    return [*command, "--allowed-hosts", hosts] if hosts else command
