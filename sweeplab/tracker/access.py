"""Who may use a store that sweeplab serves: ``sweep server`` and ``sweep ui`` beyond this machine.

MLflow's server has no login unless asked, and serves every run, parameter and checkpoint to
anyone who reaches its port, who may also write to it. So a store served on an address other
than the loopback one requires credentials, and is served by MLflow's basic-auth app
(``--app-name basic-auth``) with one user, the credentials' own, as its administrator, and no
permission for anyone else (``default_permission = NO_PERMISSIONS``; a request without
credentials is refused, 401). Serving it to all is possible, and said, with ``--no-auth``.
:func:`check_login` asks a served store, before any work, whether the credentials at hand let
this process in.

Credentials are ``USER:PASSWORD``, from a file (``--credentials FILE``, refused when others may
read it: mode 600) or from the environment variable :data:`CREDENTIALS_ENV`; a ``sweep run`` on
any machine takes them the same way and hands them to MLflow's client
(``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``, which its workers inherit). The
server's user database (``STORE/server-auth/users.db``) is made afresh at each start, so that the
credentials the server starts with are always the ones it accepts.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import secrets
import socket
import ssl
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sweeplab.errors import UsageError

__all__ = ["CREDENTIALS_ENV", "Credentials", "check_exposure", "check_login", "client_environment", "loopback", "read_credentials",
           "server_environment"]

#: The environment variable that may hold the credentials, as ``USER:PASSWORD``.
CREDENTIALS_ENV = "SWEEPLAB_CREDENTIALS"
#: The fewest characters MLflow's basic-auth app accepts in a password.
SHORTEST_PASSWORD = 12
#: Seconds the server trusts a checked password without checking it again.
AUTH_CACHE_SECONDS = 600


@dataclass(frozen=True)
class Credentials:
    """A user name and its password."""

    username: str
    password: str

    def __repr__(self) -> str:  # a traceback or a log line never shows the password
        return f"Credentials(username={self.username!r}, password='***')"


def _parse(text: str, where: str) -> Credentials:
    lines = [line for line in text.splitlines() if line.strip()]
    username, sep, password = (lines[0].strip() if len(lines) == 1 else "").partition(":")
    if not sep or not username or not password:
        raise UsageError(f"{where}: expected one line USER:PASSWORD (a user name, a colon, a password)")
    return Credentials(username, password)


def read_credentials(file: Path | None) -> Credentials | None:
    """The credentials in ``file`` (refused when its mode lets others read it), else in
    :data:`CREDENTIALS_ENV`; ``None`` when neither is given."""
    if file is not None:
        try:
            mode = file.stat().st_mode
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--credentials {file}: cannot be read ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"--credentials {file}: others may read it (mode {stat.S_IMODE(mode):o}); "
                             f"chmod 600 {file}")
        return _parse(text, f"--credentials {file}")
    text = os.environ.get(CREDENTIALS_ENV)
    return _parse(text, CREDENTIALS_ENV) if text else None


def loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one (reachable from this machine only)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def check_exposure(host: str, credentials: Credentials | None, no_auth: bool, flag: str = "--host") -> str | None:
    """Refuse to serve on ``host`` beyond this machine without credentials, unless ``no_auth``;
    returns the warning to print when the store is served to anyone (``None`` otherwise)."""
    if credentials is not None or loopback(host):
        return None
    if not no_auth:
        raise UsageError(f"{flag} {host} serves the store beyond this machine: give credentials (--credentials FILE "
                         f"holding USER:PASSWORD, mode 600, or {CREDENTIALS_ENV}=USER:PASSWORD), or pass --no-auth to "
                         "let anyone who reaches the port read and change every run")
    return (f"--no-auth: anyone who reaches {host} on this port can read and change every run, parameter, metric "
            "and artifact (checkpoints included) of this store")


def server_environment(credentials: Credentials, folder: Path) -> dict[str, str]:
    """The environment of an MLflow server started with ``--app-name basic-auth`` that accepts
    ``credentials`` alone (see the module docstring); its configuration and user database in
    ``folder``, made afresh. A password shorter than :data:`SHORTEST_PASSWORD` is refused, as
    MLflow's auth app would refuse it after the start-up lines."""
    if len(credentials.password) < SHORTEST_PASSWORD:
        raise UsageError(f"the credentials' password has {len(credentials.password)} characters: MLflow's login asks "
                         f"for at least {SHORTEST_PASSWORD}")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    users = folder / "users.db"
    users.unlink(missing_ok=True)
    config = folder / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{users}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      # A password is checked with PBKDF2 (tens of ms): without the cache a sweep's many small
                      # requests run several times slower. Its staleness (a password changed through the API) does
                      # not arise: the one user is made afresh at each start.
                      f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n", encoding="utf-8")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": credentials.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.password,
            # The auth app's CSRF key: one server, so one made at each start serves (a user's own is kept).
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}


def client_environment(credentials: Credentials) -> dict[str, str]:
    """The environment in which MLflow's client sends ``credentials`` with each request."""
    return {"MLFLOW_TRACKING_USERNAME": credentials.username, "MLFLOW_TRACKING_PASSWORD": credentials.password}


def check_login(uri: str, shown: str, timeout: float, context: ssl.SSLContext | None = None) -> None:
    """Ask the server for one experiment with the credentials MLflow's client would send
    (``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``): a server that asks
    for a login (``sweep server --credentials``) answers 401 without them, or with wrong ones."""
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    token, user = os.environ.get("MLFLOW_TRACKING_TOKEN"), os.environ.get("MLFLOW_TRACKING_USERNAME")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    elif user:
        pair = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            said = "refuses the credentials given" if token or user else "asks for credentials"
            raise UsageError(f"{shown}: the tracking server {said} (HTTP {exc.code}): pass --credentials FILE holding "
                             f"USER:PASSWORD (mode 600), or set {CREDENTIALS_ENV}=USER:PASSWORD") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return  # it answered /health a moment ago: the run's own calls will say what is wrong
