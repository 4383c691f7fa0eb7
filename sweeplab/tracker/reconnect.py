"""Riding out outages of the databases and servers a sweep writes to.

A PostgreSQL restart, a tracking server that is redeployed, a network blip: every call to the
Optuna storage (:class:`sweeplab.sweeps.storage.ReconnectingStorage`) and to the MLflow client
(:func:`reconnecting_client`) that fails for want of a connection is tried again, with
exponential backoff, until it succeeds or the outage has lasted :attr:`Patience.limit` seconds
(``--outage-limit``); then :class:`~sweeplab.errors.Unreachable` says what did not answer, and
every later call to the same store tries once, so that closing what can be closed does not wait
the limit out again. Errors that are not about the connection (a bad value, a missing table)
are raised at once. The SQLAlchemy engines check a pooled connection before use
(``pool_pre_ping``), so that connections a restarted server dropped are replaced rather than
failing the first call after the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy

from sweeplab.errors import Unreachable
from sweeplab.tracker.store import set_env_default

__all__ = ["Patience", "bound_http_retries", "is_connection_error", "reconnecting_client", "stop_retrying"]

T = TypeVar("T")
_log = logging.getLogger("sweeplab")

#: Lower-cased fragments of the messages drivers and servers give when a connection, not a
#: statement, failed (PostgreSQL restarting or gone, a refused or reset socket, SQLite busy).
_CONNECTION_WORDS = (
    "could not connect", "connection refused", "connection reset", "connection timed out", "timeout expired",
    "server closed the connection", "terminating connection", "connection is closed", "connection already closed",
    "no connection to the server", "consuming input failed", "the database system is starting up",
    "the database system is shutting down", "the database system is in recovery mode", "ssl syscall error",
    "lost connection", "server has gone away", "database is locked", "max retries exceeded", "temporarily unavailable",
    "connection aborted", "remotedisconnected", "failed to establish a new connection", "broken pipe",
    "no route to host", "network is unreachable", "temporary failure in name resolution", "name or service not known",
    "could not translate host name", "too many clients", "not yet accepting connections", "too many connections",
    "connection broken",  # the server went away mid-answer (urllib3's IncompleteRead, a tracking server killed)
)

#: Set when this process is being stopped (a worker whose main process died): retrying is then
#: pointless, and the first failure is final.
_stopping = threading.Event()


def stop_retrying() -> None:
    """Make every later failed call give up at once (this process is stopping)."""
    _stopping.set()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it chains) says a connection to a database or server
    failed, as opposed to a statement or request that would fail again: socket errors, SQLAlchemy
    disconnects and invalidated connections, and the wording drivers, MLflow's REST client and a
    tracking server whose database is down use for them."""
    for error in _chain(exc):
        if isinstance(error, (ConnectionError, TimeoutError, sqlalchemy.exc.DisconnectionError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlalchemy.exc.TimeoutError):  # no pooled connection came free
            return True
        if type(error).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "OperationalError", "InterfaceError"):
            if any(word in str(error).lower() for word in _CONNECTION_WORDS):
                return True
            if type(error).__module__.startswith(("requests", "urllib3")):
                return True
        if any(word in str(error).lower() for word in _CONNECTION_WORDS):
            return True
    return False


def _first_line(exc: BaseException) -> str:
    """The innermost exception ``exc`` chains (the driver's own words, not a wrapper's), as
    ``Type: first line``."""
    exc = _chain(exc)[-1]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


@dataclass
class Patience:
    """How long calls to one store are retried when its connection fails (see the module
    docstring). ``what`` names the store in messages; the backoff doubles from ``first`` to
    ``most`` seconds between tries.

    Once a call has given up, the store counts as gone: later calls try once (see
    :meth:`call`) until one succeeds again.

    It pickles without its lock (a new one is made on loading), so that a storage holding it
    can be handed to another process."""

    what: str
    limit: float = 300.0
    first: float = 0.5
    most: float = 15.0
    gone: bool = False
    recovered_at: float | None = None  # time.monotonic() when the store last answered again after failing
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _warned: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.limit >= 0:
            raise ValueError(f"outage limit {self.limit!r}: expected seconds >= 0")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # a lock cannot be pickled; only this process's threads share it
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again while it fails for want of a connection, for up to
        ``limit`` seconds from the first failure; then :class:`Unreachable`. The wait between
        tries ends early when :func:`stop_retrying` is called, and the next failure is final."""
        started: float | None = None
        delay = self.first
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                now = time.monotonic()
                started = now if started is None else started
                if self.gone or _stopping.is_set() or now - started >= self.limit:
                    waited = "" if self.gone or _stopping.is_set() else f" for {now - started:.0f} s"
                    self.gone = True
                    raise Unreachable(f"{self.what} stayed unreachable{waited} ({_first_line(exc)}); "
                                      "run the same command again once it is back", store=self.what) from exc
                self._warn(exc)
                _stopping.wait(min(delay, max(0.0, self.limit - (now - started))))
                delay = min(2 * delay, self.most)
                continue
            if started is not None or self.gone:
                self._recovered()
            return result

    def _warn(self, exc: BaseException) -> None:
        with self._lock:
            if not self._warned:
                self._warned = True
                _log.warning("sweeplab: %s unreachable (%s); retrying for up to %.0f s", self.what, _first_line(exc), self.limit)

    def _recovered(self) -> None:
        with self._lock:
            if self._warned or self.gone:
                _log.warning("sweeplab: %s answers again", self.what)
            self._warned = self.gone = False
            self.recovered_at = time.monotonic()

    def answered_for(self) -> float:
        """Seconds since the store answered again after its last outage (infinity: none seen)."""
        return float("inf") if self.recovered_at is None else time.monotonic() - self.recovered_at


def bound_http_retries() -> ExitStack:
    """Let MLflow's REST client retry a refused connection a few times within seconds (its default
    backs off for about four minutes per call), so that :class:`Patience` bounds the whole
    outage. Values a user set in the environment are kept.

    The variables are set at once, for the process's lifetime (the ``sweep`` command); closing
    the returned stack, or leaving ``with bound_http_retries():``, removes those it set (a
    notebook's environment is left as it was)."""
    undo = ExitStack()
    set_env_default(undo, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    set_env_default(undo, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return undo


class _Reconnecting:
    """``target`` with every method call made through ``patience`` (attributes pass through)."""

    def __init__(self, target: Any, patience: Patience) -> None:
        self._target, self._patience = target, patience

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._patience.call(attr, *args, **kwargs)

        return call


def reconnecting_client(client: T, patience: Patience) -> T:
    """``client`` (an ``MlflowClient``) whose calls ride out connection failures (see
    :class:`Patience`); typed as the client it wraps."""
    return _Reconnecting(client, patience)  # type: ignore[return-value]


