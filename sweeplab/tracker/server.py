"""The MLflow tracking server that workers on several machines log to (``sweep server``).

MLflow's own ``mlflow server``, with the runs in a database (PostgreSQL for many machines) and
the artifacts in a folder it serves, so that workers need no shared disk. MLflow (3.5 and later)
refuses requests whose ``Host`` header is not an allowed host, against DNS rebinding; its default
allows only loopback and private IP addresses, so a worker that names the server by its host name
(``--tracking-uri http://gpu-server:5000``) would be refused. The default here adds this
machine's own names to MLflow's list; ``--allowed-hosts`` replaces the list.

:func:`check_port` is asked first, by ``sweep server`` and ``sweep ui`` alike: MLflow started on
a port another program holds logs "Address already in use" among its start-up lines and exits 0,
after sweeplab has printed addresses that then open that other program (another store's UI).
"""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

from sweeplab.errors import UsageError

__all__ = ["allowed_hosts", "check_port", "server_command"]

#: How many ports above a taken one :func:`check_port` tries, to name a free one.
_SEARCH = 100


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


def check_port(host: str, port: int) -> None:
    """Raise :class:`UsageError`, one line, when a server could not listen on ``host:port``: the
    port is held by another program (naming a free port to pass instead), may not be used, or
    ``host`` is no address of this machine. Nothing is left listening."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: expected a port number from 1 to 65535")
    error = _bind_error(host, port)
    if error is None:
        return
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        raise UsageError(f"--host {host}: not an address of this machine ({error.strerror})")
    free = next((other for other in range(port + 1, min(port + _SEARCH, 65535) + 1) if _bind_error(host, other) is None), None)
    said = "is in use by another program" if error.errno == errno.EADDRINUSE else f"cannot be used ({error.strerror})"
    instead = f", such as --port {free}" if free is not None else ""
    raise UsageError(f"port {port} on {host} {said}: pass a free one with --port N{instead}")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a listening socket could not be bound to ``host:port`` (each address ``host`` has),
    or ``None`` when it could. Bound as a server binds (``SO_REUSEADDR`` on POSIX, so that
    connections of a server that just stopped do not count) and closed at once.

    A port in use or refused at any of the addresses is the error; another failure (an address
    family this machine lacks, such as ``::1`` without IPv6) only when every address fails."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                if sys.platform != "win32":  # on Windows the option would let two servers share the port
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return exc
            failures.append(exc)
    return failures[0] if len(failures) == len(addresses) else None
