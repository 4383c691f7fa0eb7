"""The contract sweeplab relies on for Optuna's private API (sweeplab.sweeps.optuna_private),
held against every storage a sweep can use: the journal file, SQLite and PostgreSQL. When
Optuna changes what this module touches, these tests fail first."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.storage import close_storage
from tests.checks import wait_for
from tests.storages import SweepStorage, storages


@pytest.fixture()
def storage(sweep_storage: SweepStorage) -> optuna.storages.BaseStorage:
    """Each kind of storage as a sweep opens it (``sweep_storage``: PostgreSQL skips, saying why,
    without a server), with a 1-second heartbeat where the storage keeps heartbeats."""
    return sweep_storage.open(heartbeat_seconds=1)


def test_ids_and_storage_behind_a_study_and_its_trials(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="contract")
    assert optuna_private.storage_of(study) is storage
    assert storage.get_study_name_from_id(optuna_private.study_id(study)) == "contract"
    first, second = study.ask(), study.ask()
    frozen = study.get_trials(deepcopy=False)
    for trial, seen in zip((first, second), frozen):
        assert optuna_private.trial_id(trial) == optuna_private.trial_id(seen)
        assert storage.get_trial(optuna_private.trial_id(trial)).number == trial.number
    assert optuna_private.trial_id(first) != optuna_private.trial_id(second)


def test_a_queued_trial_is_popped_once_and_runs_as_a_trial(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage)
    assert optuna_private.pop_waiting_trial_id(study) is None  # nothing queued
    study.enqueue_trial({"x": 0.25})
    taken = optuna_private.pop_waiting_trial_id(study)
    assert taken is not None and storage.get_trial(taken).state == TrialState.RUNNING
    assert optuna_private.pop_waiting_trial_id(study) is None  # taken once only
    trial = optuna_private.trial_by_id(study, taken)
    assert trial.suggest_float("x", 0.0, 1.0) == 0.25  # the queued value
    study.tell(trial, 1.5)
    assert study.best_trial.value == 1.5 and study.best_trial.params == {"x": 0.25}


def test_heartbeats_where_the_storage_keeps_them(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    keeps = optuna_private.has_heartbeat(storage)
    assert keeps == (not isinstance(storage, optuna.storages.JournalStorage))
    if not keeps:
        return  # the journal file: sweeplab keeps heartbeats itself (sweeps.recovery)
    with optuna_private.heartbeat_thread(optuna_private.trial_id(trial), storage):
        pass  # one heartbeat recorded, then the thread stops
    stale = wait_for("the trial's heartbeat to go stale", lambda: optuna_private.stale_trial_ids(
        storage, optuna_private.study_id(study)) or None, seconds=30)
    assert stale == [optuna_private.trial_id(trial)]


@storages("sqlite")  # Optuna's cache class, whatever the database
def test_the_cached_rdb_storage_is_a_storage(sweep_storage: SweepStorage) -> None:
    rdb = optuna.storages.RDBStorage(sweep_storage.spec)
    try:
        cached = optuna_private.cached(rdb)
        assert isinstance(cached, optuna.storages.BaseStorage)
        study = optuna.create_study(storage=cached)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(rdb.get_all_trials(optuna_private.study_id(study))) == 2  # written through to the database
    finally:
        close_storage(rdb)


def test_a_filtered_study_shows_a_pruner_and_hyperbands_brackets_only_the_trials_kept(
        storage: optuna.storages.BaseStorage) -> None:
    """HyperbandPruner builds its brackets on the storage of the study it is given, so a view
    whose storage leaves trials out leaves them out of every bracket; what the pruner writes (a
    trial's rung value) still reaches the storage."""
    study = optuna.create_study(storage=storage, direction="maximize")
    for value in (0.9, 0.8):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={1: value},
                                                  system_attrs={"completed_rung_0": value}))
    among_all, alone = study.ask(), study.ask()
    for trial in (among_all, alone):
        trial.report(0.5, 1)
    view = optuna_private.filtered_study(study, lambda trials: [t for t in trials if t.number == alone.number])
    assert [t.number for t in view.trials] == [alone.number] and view.get_trials(states=(TrialState.COMPLETE,)) == []
    assert view.direction == study.direction and len(study.trials) == 4  # the study itself is untouched
    hyperband = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=1, reduction_factor=2)  # one bracket
    frozen = {t.number: t for t in study.get_trials()}
    assert hyperband.prune(study, frozen[among_all.number])  # 0.5 below 0.9 and 0.8: stopped at the first rung
    assert not hyperband.prune(view, frozen[alone.number])  # alone at the rung: promoted
    assert storage.get_trial(optuna_private.trial_id(alone)).system_attrs["completed_rung_0"] == 0.5
