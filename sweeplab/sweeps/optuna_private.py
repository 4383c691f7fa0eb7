"""Every use of Optuna's private API, in one place.

sweeplab needs a few things Optuna does not offer publicly: the storage and ids behind a study
and a trial (to read a trial's state fresh from the storage while another process may change
it), the atomic pop of a queued trial that ``study.ask()`` uses (so that each queued grid cell
runs once under parallel workers), a trial object for a popped id, the heartbeat machinery of
RDB storages (to beat for a trial run outside ``study.optimize`` and to find stale trials), the
trial cache ``optuna.load_study`` puts in front of an RDB storage (to put the reconnecting
wrapper around it), and a view of a study that shows a pruner only some of its trials (a study
reads its trials through its storage, and so do the brackets HyperbandPruner builds on it). When
Optuna changes any of these, this module and its contract test
(``tests/sweeps/test_optuna_private.py``, run against the journal file, SQLite and PostgreSQL
storages) are what break, and what to fix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState

__all__ = ["BaseHeartbeat", "cached", "filtered_study", "has_heartbeat", "heartbeat_thread", "pop_waiting_trial_id", "stale_trial_ids",
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


class _FilteredStorage:
    """``storage`` whose :meth:`get_all_trials` answers ``keep`` of the study's trials; every other
    call (reads of one trial or of the study, every write) goes to ``storage`` itself. Not a
    ``BaseStorage`` subclass, whose abstract methods it would have to repeat one by one:
    ``optuna.Study`` takes any object it is given as its storage."""

    def __init__(self, storage: BaseStorage, keep: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> None:
        self._storage = storage
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        # ``keep`` judges the trials whole (a retry names the attempts it replaces), states or not.
        kept = [t for t in self._keep(self._storage.get_all_trials(study_id, deepcopy=False))
                if states is None or t.state in states]
        return copy.deepcopy(kept) if deepcopy else kept


def filtered_study(study: optuna.Study, keep: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> optuna.Study:
    """A view of ``study`` whose trials (``get_trials``, ``trials``, and those of the brackets
    ``HyperbandPruner`` builds on the storage of the study it is given) are ``keep`` of all of
    ``study``'s; what a pruner writes (a trial's rung values) goes to ``study``'s storage. Each
    view reads the study's id and directions from the storage once."""
    storage = cast(BaseStorage, _FilteredStorage(storage_of(study), keep))
    return optuna.Study(study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner)
