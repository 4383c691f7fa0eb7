"""Every use of Optuna's private API, in one place.

sweeplab needs a few things Optuna does not offer publicly: the storage and ids behind a study
and a trial (to read a trial's state fresh from the storage while another process may change
it), the atomic pop of a queued trial that ``study.ask()`` uses (so that each queued grid cell
runs once under parallel workers), a trial object for a popped id, the heartbeat machinery of
RDB storages (to beat for a trial run outside ``study.optimize`` and to find stale trials), and
the trial cache ``optuna.load_study`` puts in front of an RDB storage (to put the reconnecting
wrapper around it). When Optuna changes any of these, this module and its contract test
(``tests/sweeps/test_optuna_private.py``, run against the journal file, SQLite and PostgreSQL
storages) are what break, and what to fix.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import optuna
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["BaseHeartbeat", "cached", "has_heartbeat", "heartbeat_thread", "pop_waiting_trial_id", "stale_trial_ids",
           "storage_of", "study_id", "trial_by_id", "trial_id"]


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage behind ``study``."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (unique across studies; a trial's number is per study)."""
    return trial._trial_id


def trial_by_id(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A :class:`optuna.Trial` for a trial the storage holds (one taken from the queue)."""
    return optuna.Trial(study, trial_id)


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """Take one queued (WAITING) trial and make it RUNNING, atomically in the storage, as
    ``study.ask()`` does; ``None`` when none is queued."""
    return study._pop_waiting_trial_id()


def has_heartbeat(storage: BaseStorage) -> bool:
    """Whether ``storage`` keeps trials' heartbeats itself (an RDB storage does, the journal file
    does not)."""
    return isinstance(storage, BaseHeartbeat)


def heartbeat_thread(trial_id: int, storage: BaseStorage) -> AbstractContextManager[None]:
    """Optuna's thread that records the trial's heartbeat while the block runs (what
    ``study.optimize`` runs around each trial)."""
    return get_heartbeat_thread(trial_id, storage)


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """The RUNNING trials of the study whose heartbeats stopped longer ago than the storage's
    grace period."""
    return list(storage._get_stale_trial_ids(study_id))


def cached(rdb: optuna.storages.RDBStorage) -> BaseStorage:
    """``rdb`` behind the trial cache ``optuna.load_study`` puts in front of an RDB storage."""
    return _CachedStorage(rdb)

