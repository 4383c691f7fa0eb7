"""How a process of a sweep takes its share of the trials, alone or beside other processes.

Sampled trials (TPE, random): :func:`search` asks the sampler for one trial at a time until the
study holds ``--trials`` finished ones, waiting rather than starting one more when the trials
still needed are running elsewhere, so that ``--trials`` is a total across workers and machines.
A grid: the cells are queued once (:func:`enqueue_grid_cells`) and every process takes queued
cells one at a time, so every cell runs exactly once. Before each trial the trials of dead
processes are failed (:mod:`sweeplab.sweeps.recovery`), and each trial runs with its heartbeat.
"""

from __future__ import annotations

import collections
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.trial import TrialState

from sweeplab.errors import Unreachable
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.recovery import (
    DUPLICATE,
    UNTOLD,
    KilledTrials,
    fail_dead_trials,
    fail_stale_trials,
    is_duplicate_cell,
    trial_heartbeat,
)
from sweeplab.sweeps.space import Space, cell_key
from sweeplab.tracker.runs import TrialRecorder

if TYPE_CHECKING:
    from sweeplab.sweeps.driver import SweepObserver

__all__ = ["FINISHED", "Abandoned", "Finished", "Objective", "enqueue_grid_cells", "finished_trials", "recover", "search",
           "still_ours"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Finished:
    """A trial that ran to its end, complete or pruned, with every summary and artifact on its
    run: :func:`_run_one` tells Optuna first and closes the run after, with the same state, so
    that the run never says complete for a trial another process failed meanwhile."""

    value: float
    pruned: bool
    run: TrialRecorder


class Objective(Protocol):
    """One call runs one trial (``driver._Objective``); what the loops read of it."""

    best: float | None
    calls: int
    stop_error: Exception | None  # raised by the loop once the trial that met it is recorded

    def __call__(self, trial: optuna.Trial) -> Finished: ...


class Abandoned(Exception):
    """Another process failed this process's trial while it ran (its heartbeats looked stopped):
    that process closed the trial's run and queued its retry, so this one drops the trial."""

    def __init__(self, run: TrialRecorder | None = None) -> None:
        super().__init__()
        self.run = run


def _let_go(study: optuna.Study, trial: optuna.Trial, run: TrialRecorder | None) -> None:
    """Drop a trial another process failed; close its run as killed if that process could not
    (it had no run id yet, or the tracking server was away)."""
    if run is not None and run.is_running():
        reason = optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)).user_attrs.get("fail_reason")
        run.close("killed", str(reason or "killed: failed by another process (no heartbeat seen)"))


def still_ours(trial: optuna.Trial) -> bool:
    """Whether the trial is still RUNNING, so that no other process has failed it meanwhile."""
    return optuna_private.storage_of(trial.study).get_trial(optuna_private.trial_id(trial)).state == TrialState.RUNNING


def finished_trials(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in FINISHED)


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective, heartbeat: int) -> None:
    """Run one trial (asked from the sampler or taken from the queue) with its heartbeat, then tell
    Optuna how it ended: complete with its value, pruned, or failed (the reason is on the trial
    and its run; Ctrl-C is told FAIL before the interruption goes on). A trial that ran to its end
    is told first and its run closed after (:class:`Finished`); one another process failed
    meanwhile is left as that process recorded it."""
    with trial_heartbeat(study, optuna_private.trial_id(trial), heartbeat):
        try:
            finished = objective(trial)
        except Abandoned as exc:
            _let_go(study, trial, exc.run)
            return
        except Unreachable:
            raise  # the storage or the tracking store is away: the trial stays RUNNING, a rerun handles it
        except (Exception, KeyboardInterrupt) as exc:
            if "fail_reason" not in optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)).user_attrs:  # raised before its run began
                text = str(exc).strip().splitlines()
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {text[0] if text else ''}"
                trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
        try:
            if finished.pruned:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, finished.value)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # "Cannot tell a FAIL trial": failed meanwhile
            _let_go(study, trial, finished.run)
            return
        except Unreachable:
            # The trial trained to its end: its run keeps the value, which the next start of the
            # sweep tells Optuna (recovery.fail_dead_trials), so that it is not run again.
            finished.run.set_tags({UNTOLD: repr(finished.value)})
            finished.run.close("pruned" if finished.pruned else "complete")
            raise
    finished.run.close("pruned" if finished.pruned else "complete")


def recover(study: optuna.Study, killed: KilledTrials) -> collections.Counter:
    """Fail the trials of dead processes (see :mod:`sweeplab.sweeps.recovery`); returns the
    trials by state afterwards."""
    fail_dead_trials(study, killed)
    fail_stale_trials(study, killed.recorder)
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False))


def _out_of_time(deadline: float | None) -> bool:
    """Whether the sweep's time budget (``--timeout``, a ``time.monotonic()`` deadline) is spent:
    then no trial starts, and a running one finishes."""
    return deadline is not None and time.monotonic() >= deadline


def _optimise(study: optuna.Study, objective: Objective, target: int, observer: SweepObserver, killed: KilledTrials,
              heartbeat: int, deadline: float | None = None) -> None:
    """Run trials, one at a time, until the study holds ``target`` finished ones, counting the
    trials other processes (``--workers``, other machines) finish too.

    Before each trial the trials of dead processes are failed, and when the trials still needed
    are all running elsewhere this process waits rather than start one more, so that
    ``--trials`` is a total and not exceeded by up to K-1; if one of those fails, a waiting process
    runs its replacement (a killed trial's retry is queued, and Optuna's ``ask`` takes queued
    trials first). Failed trials are replaced, up to ``max(3, target)`` extra attempts by this
    process."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        objective.best = study.best_value
    observer.sweep_started(study.study_name, target, finished_trials(study))
    while objective.calls < target + max(3, target):
        states = recover(study, killed)
        finished = sum(states[s] for s in FINISHED)
        if finished >= target or _out_of_time(deadline):
            return
        if finished + states[TrialState.RUNNING] >= target:
            time.sleep(_WAIT_SECONDS)
            continue
        with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize": _run_one beats
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        _run_one(study, trial, objective, heartbeat)
        if objective.stop_error is not None:
            raise objective.stop_error


#: How often a process whose remaining trials are all running elsewhere looks again.
_WAIT_SECONDS = 1.0


def enqueue_grid_cells(study: optuna.Study, space: Space, target: int, seed: int) -> int:
    """Queue the grid cells no trial has tried yet (in a seeded order), so that the study holds
    ``target`` trials finished, running or queued. Every process of the sweep takes queued trials
    one at a time (:func:`_drain_queue`), so no cell runs twice, which Optuna's grid sampler does
    not ensure under parallel workers. Returns how many it queued."""
    trials = study.get_trials(deepcopy=False)
    tried = {cell_key(t.system_attrs.get("fixed_params") or t.params) for t in trials}
    fresh = [cell for cell in space.grid_cells() if cell_key(cell) not in tried]
    random.Random(seed).shuffle(fresh)
    taken = sum(1 for t in trials if t.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    for cell in fresh[:max(0, target - taken)]:
        study.enqueue_trial(cell, skip_if_exists=False)
    return len(fresh[:max(0, target - taken)])


def _drain_queue(study: optuna.Study, objective: Objective, observer: SweepObserver, target: int,
                 killed: KilledTrials, heartbeat: int, refill: Callable[[], int], deadline: float | None = None) -> None:
    """A grid's loop: take queued cells one by one (Optuna pops a waiting trial atomically in
    the storage) and stop when none is left and none runs elsewhere. While others still run, it
    waits: a killed process's cell is queued again (see :mod:`sweeplab.sweeps.recovery`) and a
    waiting process takes it. When the queue is empty and fewer than ``target`` trials finished
    (a cell failed on its own), ``refill`` queues untried cells in their place. A cell queued
    twice (two processes that started the sweep at the same moment) is failed as a duplicate
    without running."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        objective.best = study.best_value
    observer.sweep_started(study.study_name, target, finished_trials(study))
    while not _out_of_time(deadline):
        states = recover(study, killed)
        if sum(states[s] for s in FINISHED) >= target:  # cells left queued by a --timeout or Ctrl-C wait for a larger --trials
            return
        trial_id = optuna_private.pop_waiting_trial_id(study)  # the atomic pop study.ask() uses
        if trial_id is None:
            if states[TrialState.RUNNING]:
                time.sleep(_WAIT_SECONDS)
                continue
            if sum(states[s] for s in FINISHED) < target and refill():
                continue
            return
        if is_duplicate_cell(study, trial_id):
            optuna_private.storage_of(study).set_trial_user_attr(trial_id, "fail_reason", DUPLICATE)
            optuna_private.storage_of(study).set_trial_state_values(trial_id, state=TrialState.FAIL)
            continue
        _run_one(study, optuna_private.trial_by_id(study, trial_id), objective, heartbeat)
        if objective.stop_error is not None:
            raise objective.stop_error


def search(study: optuna.Study, objective: Objective, observer: SweepObserver, target: int, killed: KilledTrials,
           heartbeat: int, grid: Space | None = None, seed: int = 0, deadline: float | None = None) -> None:
    """This process's share of the search: the queued cells of ``grid`` (with ``seed`` ordering
    any cells queued later), or sampled trials when there is no grid; no trial starts after
    ``deadline`` (``time.monotonic()``; ``None``: no time budget)."""
    if grid is None:
        _optimise(study, objective, target, observer, killed, heartbeat, deadline)
    else:
        _drain_queue(study, objective, observer, target, killed, heartbeat,
                     lambda: enqueue_grid_cells(study, grid, target, seed), deadline)
