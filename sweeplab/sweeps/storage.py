"""The Optuna storage of a sweep: opened from ``--storage`` (or the journal file beside the
store), and made to ride out database outages.

An RDB URL gives Optuna's RDBStorage with heartbeats (a running trial records one every
``--heartbeat`` seconds; one silent for twice that is failed by the next process that looks),
behind Optuna's own trial cache and :class:`ReconnectingStorage`, whose calls are retried through
an outage of up to ``--outage-limit`` seconds (:class:`~sweeplab.tracker.reconnect.Patience`).
``grpc://HOST:PORT`` is Optuna's gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``),
through which the nodes of a Ray cluster reach the head's journal file
(:mod:`sweeplab.sweeps.head_stores`), each call carrying the token in ``SWEEPLAB_GRPC_TOKEN`` when
it is set (:mod:`sweeplab.sweeps.grpc_storage`); :mod:`sweeplab.sweeps.recovery` keeps heartbeats
there itself, as on a journal file. Its calls are not retried through an outage (the head's
proxy ends only with the sweep). Anything else is a journal file path (one machine). :func:`close_storage` gives back the database connections an RDB
storage pooled, once a sweep is done with it.
"""

from __future__ import annotations

import abc
import importlib.util
import inspect
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeplab.errors import UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.tracker.reconnect import Patience, is_connection_error
from sweeplab.tracker.store import GRPC_SCHEME, RDB_SCHEMES, grpc_address, redact, with_postgres_driver

__all__ = ["ReconnectingStorage", "close_storage", "open_optuna_storage", "reconnecting_rdb"]

# Optuna 4.9 renamed RDBStorage's failed_trial_callback to heartbeat_stale_trial_callback.
_OPTUNA_5 = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters


def open_optuna_storage(spec: str, heartbeat_seconds: int = 60,
                        on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                        outage_limit: float = 300.0) -> optuna.storages.BaseStorage:
    """An RDB URL gives Optuna's RDBStorage with heartbeats: a running trial records one every
    ``heartbeat_seconds``, and one with none for twice that long (its worker was killed, on any
    machine) is failed by the next worker that starts a trial, which then calls ``on_stale``.
    Its calls ride out a database outage of up to ``outage_limit`` seconds
    (:class:`ReconnectingStorage`). Anything else is a journal file path (one machine;
    ``sweeps.recovery`` keeps heartbeats there itself).

    A missing database driver or an unreachable server is a one-line :class:`UsageError`."""
    if spec.startswith(GRPC_SCHEME):
        host, port = grpc_address(spec)
        if importlib.util.find_spec("grpc") is None:
            raise UsageError(f"--storage {spec}: Optuna's gRPC storage proxy needs grpcio: pip install 'sweeplab[ray]'")
        from sweeplab.sweeps.grpc_storage import TOKEN_ENV, connect

        return connect(host, port, os.environ.get(TOKEN_ENV))
    if not spec.startswith(RDB_SCHEMES):
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    spec = with_postgres_driver(spec, "--storage")
    callback = "heartbeat_stale_trial_callback" if _OPTUNA_5 else "failed_trial_callback"
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since 2.9
                rdb = optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat_seconds, grace_period=2 * heartbeat_seconds,
                                                 engine_kwargs=_engine_kwargs(spec), **{callback: on_stale})
            return reconnecting_rdb(rdb, Patience(f"the Optuna storage {redact(spec)}", outage_limit))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if _schema_race(exc) and attempt + 1 < _SCHEMA_ATTEMPTS:
                time.sleep(random.uniform(0.2, 1.0))  # another process is creating the tables: they exist now
                continue
            first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()
            raise UsageError(f"cannot open the Optuna storage {redact(spec)}: {first[0] if first else type(exc).__name__}") from None
    raise AssertionError("unreachable")


def _engine_kwargs(spec: str) -> dict[str, object]:
    """SQLAlchemy engine settings for the Optuna database: test a pooled connection before use
    (a restarted server dropped it), and on PostgreSQL give up connecting after 10 s and notice a
    silently dead connection (a host that vanished) within about a minute through TCP keepalives,
    so that an outage surfaces as an error :class:`ReconnectingStorage` can wait out instead of
    a call that hangs."""
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if spec.startswith("postgresql+psycopg"):
        kwargs["connect_args"] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                                  "keepalives_interval": 10, "keepalives_count": 3}
    return kwargs


#: How often a new RDB storage is opened again when another process was creating its tables at that moment.
_SCHEMA_ATTEMPTS = 8


def _schema_race(exc: Exception) -> bool:
    """Whether ``exc`` is what two processes get when they create Optuna's tables in a new database
    at the same moment (optuna#1092: on PostgreSQL "duplicate key value violates unique constraint
    pg_type_typname_nsp_index" or "relation ... already exists"): machines started together on a
    fresh database. Opening again finds the tables the other process made."""
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text or "pg_type_typname" in text


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.patience.call(getattr(self.inner, name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"The wrapped storage's ``{name}``, retried on connection failures."
    return method


class ReconnectingStorage(BaseStorage, optuna_private.BaseHeartbeat):
    """An Optuna storage (Optuna's cached RDB storage) whose every call rides out connection
    failures (see :class:`Patience`). It is a :class:`BaseHeartbeat` so that Optuna keeps
    recording and judging trials' heartbeats through it.

    Writes that are tried again may already have been committed when the connection dropped
    before the answer came: :meth:`set_trial_state_values` then finds the trial in the state it
    asked for and counts that as done, so that a trial that finished is never failed for it.

    ``rdb`` is the RDB storage at the bottom of ``inner``, whose connections
    :func:`close_storage` closes. It pickles (the wrapped storages and :class:`Patience` do), so
    that it can be handed to another process."""

    def __init__(self, inner: BaseStorage, patience: Patience, rdb: optuna.storages.RDBStorage | None = None) -> None:
        self.inner, self.patience, self.rdb = inner, patience, rdb

    for _name in (
        "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
        "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
        "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
        "get_trial_number_from_id", "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
        "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params",
        "get_trial_user_attrs", "get_trial_system_attrs", "check_trial_is_updatable",
        "_get_stale_trial_ids", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback",
    ):
        locals()[_name] = _delegate(_name)
    del _name

    def get_heartbeat_interval(self) -> int | None:
        """The wrapped storage's heartbeat interval; None (no heartbeats) when it keeps none."""
        return self.inner.get_heartbeat_interval() if optuna_private.has_heartbeat(self.inner) else None

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat, or skip this one when the storage does not answer: the next comes
        an interval later (judging heartbeats waits that long after an outage, see
        ``recovery.fail_stale_trials``), and a heartbeat thread that waited the outage out would
        hold up the end of its trial, Ctrl-C included."""
        try:
            self.inner.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        except Exception as exc:
            if not is_connection_error(exc):
                raise

    def remove_session(self) -> None:
        self.inner.remove_session()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        tries = 0

        def once() -> bool:
            nonlocal tries
            tries += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state=state, values=values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries > 1 and self.inner.get_trial(trial_id).state == state:
                    return True  # the try before committed, and its answer was lost with the connection
                raise

        return self.patience.call(once)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (an instance being unpickled): no inner storage to ask
            raise AttributeError(name)
        return getattr(self.inner, name)


abc.update_abstractmethods(ReconnectingStorage)


def reconnecting_rdb(rdb: optuna.storages.RDBStorage, patience: Patience) -> ReconnectingStorage:
    """``rdb`` behind Optuna's own trial cache (what ``optuna.load_study`` puts in front of an
    RDB storage; private to Optuna: :mod:`sweeplab.sweeps.optuna_private`), behind
    :class:`ReconnectingStorage`."""
    return ReconnectingStorage(optuna_private.cached(rdb), patience, rdb)


def close_storage(storage: BaseStorage) -> None:
    """Close the database connections an RDB storage (alone, or behind
    :class:`ReconnectingStorage`) keeps in its engine's pool; nothing for a journal file, which
    keeps none. The storage stays usable: a later call connects again."""
    rdb = storage.rdb if isinstance(storage, ReconnectingStorage) else storage
    if isinstance(rdb, optuna.storages.RDBStorage):
        rdb.engine.dispose()
