"""A grid's cells as a queue: each cell runs exactly once, across every process of the sweep.

Optuna's GridSampler repeats cells under parallel workers and fails on re-queued ones, so a grid
sweep queues its cells (:func:`enqueue_grid_cells`) and every process takes queued trials one at
a time (:func:`sweeplab.sweeps.loops.search`). A cell whose every attempt was killed is queued
again when the sweep starts (:func:`requeue_killed_grid_cells`); a cell queued twice (two
processes that started the sweep at the same moment) runs once (:func:`is_duplicate_cell`).
"""

from __future__ import annotations

import collections
import random

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.outcomes import DUPLICATE, INTERNAL_ERROR
from sweeplab.sweeps.space import Space, cell_key

__all__ = ["enqueue_grid_cells", "is_duplicate_cell", "requeue_killed_grid_cells"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def enqueue_grid_cells(study: optuna.Study, space: Space, target: int, seed: int) -> int:
    """Queue the grid cells no trial has tried yet (in a seeded order), so that the study holds
    ``target`` trials finished, running or queued. Every process of the sweep takes queued trials
    one at a time (:func:`sweeplab.sweeps.loops.search`), so no cell runs twice, which Optuna's grid sampler does
    not ensure under parallel workers. Returns how many it queued."""
    trials = study.get_trials(deepcopy=False)
    tried = {cell_key(t.system_attrs.get("fixed_params") or t.params) for t in trials}
    fresh = [cell for cell in space.grid_cells() if cell_key(cell) not in tried]
    random.Random(seed).shuffle(fresh)
    taken = sum(1 for t in trials if t.state in (*_FINISHED, TrialState.RUNNING, TrialState.WAITING))
    for cell in fresh[:max(0, target - taken)]:
        study.enqueue_trial(cell, skip_if_exists=False)
    return len(fresh[:max(0, target - taken)])


def _cell(trial: FrozenTrial) -> tuple:
    return cell_key(trial.system_attrs.get("fixed_params") or trial.params)


#: Reasons that say nothing against a trial's configuration: its process was killed or
#: interrupted, or sweeplab failed around it. A grid cell failed only for these runs again.
_NOT_THE_CELLS_FAULT = ("killed", "interrupted", INTERNAL_ERROR)


def requeue_killed_grid_cells(study: optuna.Study) -> int:
    """Queue once more, when a sweep starts, the grid cells whose every attempt was killed,
    interrupted or failed by sweeplab's own error (none finished, failed on its own, or is queued
    or running), so that a rerun completes the grid: a rerun is the user's word that the cell
    should run. (Within a run a killed trial is retried up to ``--max-retries`` times, by
    :class:`KilledTrials`; a cell whose trial fails on its own is not run again.) Returns how many were queued."""
    attempts: dict[tuple, list[FrozenTrial]] = collections.defaultdict(list)
    for trial in study.get_trials(deepcopy=False):
        if (trial.params or trial.system_attrs.get("fixed_params")) and not _is_duplicate(trial):
            attempts[_cell(trial)].append(trial)
    count = 0
    for tried in attempts.values():
        if all(t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "killed")).startswith(_NOT_THE_CELLS_FAULT)
               for t in tried):  # no reason: failed by Optuna for want of heartbeats
            study.enqueue_trial(dict(tried[-1].system_attrs.get("fixed_params") or tried[-1].params), skip_if_exists=False)
            count += 1
    return count


def _is_duplicate(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == DUPLICATE


def is_duplicate_cell(study: optuna.Study, trial_id: int) -> bool:
    """Whether the just-taken queued trial ``trial_id`` repeats a grid cell (two processes that
    started a sweep at the same moment both queued the grid): another trial of the cell has
    finished, or is running or queued with a lower number. Of two copies taken at once, the one
    with the lower number runs; failed attempts (a killed cell and its retry) do not count."""
    trials = study.get_trials(deepcopy=False)
    this = next(t for t in trials if optuna_private.trial_id(t) == trial_id)
    return any(optuna_private.trial_id(t) != trial_id and _cell(t) == _cell(this)
               and (t.state in _FINISHED or (t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < this.number))
               for t in trials)
