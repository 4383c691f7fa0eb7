"""Retrying calls to a store that lost its connection (sweeplab.tracker.reconnect), without a server:
the failures are scripted. The real outages (PostgreSQL restarted, a tracking server killed) are in
tests/test_outages.py."""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from sweeplab.errors import Unreachable
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.recovery import fail_stale_trials
from sweeplab.sweeps.storage import ReconnectingStorage
from sweeplab.tracker.reconnect import Patience, is_connection_error
from tests.checks import wait_for
from tests.storages import SweepStorage, storages


def _refused() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection refused'))


class _Flaky:
    """Fails its first ``failures`` calls with ``error``, then answers ``"ok"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.mark.parametrize("error", [
    _refused(),
    optuna.exceptions.StorageInternalError("An exception is raised during the commit."),
    MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                    "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url"),
    ConnectionRefusedError(111, "Connection refused"),
    MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                    "('Connection broken: IncompleteRead(0 bytes read, 2 more expected)', IncompleteRead(0 bytes read, "
                    "2 more expected))"),  # the server killed while it answered
])
def test_connection_failures_are_told_apart_from_other_errors(error: Exception) -> None:
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error.__cause__ = _refused()  # how Optuna's RDB storage wraps the driver's error
    assert is_connection_error(error)


@pytest.mark.parametrize("error", [
    ValueError("Cannot tell a FAIL trial."),
    sqlalchemy.exc.OperationalError("SELECT x", {}, Exception("no such table: trials")),
    MlflowException("Run 'abc' not found"),
])
def test_errors_that_would_fail_again_are_not_connection_failures(error: Exception) -> None:
    assert not is_connection_error(error)


def test_a_call_is_retried_until_the_store_answers() -> None:
    flaky = _Flaky(3, _refused())
    assert Patience("the test store", limit=30, first=0.001).call(flaky) == "ok" and flaky.calls == 4


def test_an_error_that_is_not_about_the_connection_is_raised_at_once() -> None:
    flaky = _Flaky(1, ValueError("bad value"))
    with pytest.raises(ValueError, match="bad value"):
        Patience("the test store", limit=30, first=0.001).call(flaky)
    assert flaky.calls == 1


def test_an_outage_past_the_limit_names_the_store_and_later_calls_try_once() -> None:
    patience = Patience("the Optuna storage postgresql://db/optuna", limit=0.05, first=0.01)
    with pytest.raises(Unreachable, match=r"^the Optuna storage postgresql://db/optuna stayed unreachable for 0 s "
                                          r"\(OperationalError: .*Connection refused\); run the same command again"):
        patience.call(_Flaky(10**6, _refused()))
    again = _Flaky(10**6, _refused())
    with pytest.raises(Unreachable):
        patience.call(again)
    assert again.calls == 1  # closing what can be closed does not wait the outage out again
    assert patience.call(_Flaky(0, _refused())) == "ok" and not patience.gone  # it answers again


class _CommitsThenDrops(optuna.storages.InMemoryStorage):
    """Commits a trial's end state, then loses the answer once (the connection dropped)."""

    dropped = False

    def set_trial_state_values(self, trial_id, state, values=None):  # type: ignore[no-untyped-def]
        done = super().set_trial_state_values(trial_id, state, values)
        if state.is_finished() and not self.dropped:
            self.dropped = True
            raise _refused()
        return done


def test_an_end_state_committed_before_the_connection_dropped_counts_as_told() -> None:
    storage = ReconnectingStorage(_CommitsThenDrops(), Patience("the test store", limit=30, first=0.001))
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 0.5)  # the retry finds the trial COMPLETE: told, not an error
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5


@storages("sqlite")  # the wrapping, whatever the database
def test_the_rdb_storage_goes_behind_optunas_cache_and_every_storage_method_is_wrapped(sweep_storage: SweepStorage) -> None:
    """Fails when Optuna renames its private cached storage or adds a storage method this wrapper
    does not forward (ReconnectingStorage could not be made: an abstract method left)."""
    storage = sweep_storage.open(heartbeat_seconds=60)  # open_optuna_storage: reconnecting_rdb around the RDB storage
    assert isinstance(storage, ReconnectingStorage) and type(storage.inner).__name__ == "_CachedStorage"
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2 and storage.get_heartbeat_interval() == 60


@storages("sqlite")  # Optuna's heartbeats are the RDB storage's: the journal keeps none
def test_stale_heartbeats_are_not_judged_until_the_storage_has_answered_for_two_intervals(sweep_storage: SweepStorage) -> None:
    """After an outage every running trial's heartbeat is old: live trials must not be failed
    before their heartbeat threads reach the storage again."""
    storage = sweep_storage.open(heartbeat_seconds=1)  # as a sweep opens it: stale after twice the interval
    assert isinstance(storage, ReconnectingStorage)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(optuna_private.trial_id(trial))
    wait_for("the trial's heartbeat to go stale (the database counts in seconds)", lambda: optuna_private.stale_trial_ids(
        storage, optuna_private.study_id(study)) or None, seconds=10, every=0.1)
    storage.patience.recovered_at = time.monotonic()  # as if the storage had just come back
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING
    storage.patience.recovered_at = time.monotonic() - 2.5  # it has answered for more than two intervals
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL
