"""How a process of a sweep takes its share of the trials, alone or beside other processes.

Sampled trials (TPE, random): :func:`search` asks the sampler for one trial at a time until the
study holds ``--trials`` finished ones, waiting rather than starting one more when the trials
still needed are running elsewhere, so that ``--trials`` is a total across workers and machines.
A grid: the cells are queued once (:mod:`sweeplab.sweeps.grid_cells`) and every process takes
queued cells one at a time, so every cell runs exactly once. Before each trial the trials of dead
processes are failed (:mod:`sweeplab.sweeps.recovery`), and each trial runs with its heartbeat.

:func:`_run_one` is where Optuna hears how a trial ended, and the one place that decides what
stops the sweep, as ``catch`` does in Optuna's ``study.optimize``: a trial its trainer failed
(:class:`~sweeplab.sweeps.trial.Failed`) is told FAIL and the search goes on; sweeplab's own
error, anywhere in the trial (suggesting its configuration, opening its run, taking its card,
inside the trainer's call, logging its artifacts, telling Optuna), is told FAIL with its reason,
its traceback goes to ``STORE/logs/errors.log`` and the sweep stops with
:class:`~sweeplab.errors.InternalError` (exit 70). A trial interrupted (Ctrl-C, a stop signal)
is told FAIL as ``interrupted`` and queued again (:class:`~sweeplab.sweeps.recovery.KilledTrials`),
so that the same command goes on with it from its resume state.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import optuna
from optuna.trial import TrialState

from sweeplab.errors import Unreachable
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.failures import internal_error, internal_reason
from sweeplab.sweeps.grid_cells import enqueue_grid_cells, is_duplicate_cell
from sweeplab.sweeps.heartbeats import trial_heartbeat
from sweeplab.sweeps.observer import SweepObserver
from sweeplab.sweeps.outcomes import DUPLICATE, UNTOLD
from sweeplab.sweeps.recovery import KilledTrials, recover
from sweeplab.sweeps.signals import stop_requested
from sweeplab.sweeps.space import Space
from sweeplab.sweeps.trial import Abandoned, Failed, Finished, still_running
from sweeplab.tracker.runs import TrialRecorder

__all__ = ["FINISHED", "Objective", "finished_trials", "search"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Objective(Protocol):
    """One call runs one trial (:class:`sweeplab.sweeps.trial.Objective`); what the loops read
    of it."""

    best: float | None
    calls: int
    errors_log: Path

    def __call__(self, trial: optuna.Trial) -> Finished | Failed: ...


def _let_go(study: optuna.Study, trial: optuna.Trial, run: TrialRecorder | None) -> None:
    """Drop a trial another process failed; close its run as killed if that process could not
    (it had no run id yet, or the tracking server was away)."""
    if run is not None and run.is_running():
        reason = optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)).user_attrs.get("fail_reason")
        run.close("killed", str(reason or "killed: failed by another process (no heartbeat seen)"))


def finished_trials(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in FINISHED)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> bool:
    """Tell Optuna the trial failed, with ``reason`` unless it already has one (recorded where
    it failed); a trial another process ended meanwhile is left as it is. Returns whether this
    process failed it."""
    stored = optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial))
    if stored.state.is_finished():
        return False
    if "fail_reason" not in stored.user_attrs:
        trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    return True


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective, heartbeat: int,
             killed: KilledTrials) -> None:
    """Run one trial (asked from the sampler or taken from the queue) with its heartbeat, then tell
    Optuna how it ended (see the module docstring). A trial that ran to its end is told first and
    its run closed after (:class:`~sweeplab.sweeps.trial.Finished`); one another process failed
    meanwhile is left as that process recorded it. A stop signal that came as the trial ended
    (it was answered by a trial that finished there) stops the search here: no other starts."""
    _run_and_tell(study, trial, objective, heartbeat, killed)
    stop_requested()


def _run_and_tell(study: optuna.Study, trial: optuna.Trial, objective: Objective, heartbeat: int,
                  killed: KilledTrials) -> None:
    """:func:`_run_one` up to the stop."""
    ended: Finished | Failed | None = None
    with trial_heartbeat(study, optuna_private.trial_id(trial), heartbeat):
        try:
            ended = objective(trial)
            if isinstance(ended, Failed):
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            elif not _tell(study, trial, ended):
                return
            _forget(ended)
        except Abandoned as exc:
            _let_go(study, trial, exc.run)
            return
        except Unreachable:
            raise  # the storage or the tracking store is away: the trial stays RUNNING, a rerun handles it
        except KeyboardInterrupt:
            if _fail(study, trial, "interrupted"):  # queued again, to go on from its resume state
                killed(study, optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)))
            raise
        except Exception as exc:
            reason = internal_reason(exc)
            _fail(study, trial, reason)
            if isinstance(ended, Finished) and ended.run.is_running():  # trained, then not told
                ended.run.close("failed", reason)
            raise internal_error(exc, study.study_name, trial.number, objective.errors_log) from None
    if isinstance(ended, Finished):
        ended.run.close("pruned" if ended.pruned else "complete")
    elif ended is not None and ended.stop is not None:  # the user's bad input: every later trial would fail alike
        raise ended.stop


def _forget(ended: Finished | Failed) -> None:
    """Delete the resume state of a trial whose outcome Optuna now holds; one that cannot be
    deleted (its store is away) is left, with a warning: it costs space, not correctness."""
    try:
        ended.forget()
    except Exception as exc:
        logging.getLogger(__name__).warning("the resume state of a finished trial was left in place: %s", exc)


def _tell(study: optuna.Study, trial: optuna.Trial, finished: Finished) -> bool:
    """Tell Optuna the trial's value (or that it was pruned); False when another process failed
    the trial meanwhile (it is let go). A value the storage cannot take now is kept on the run
    (:data:`~sweeplab.sweeps.outcomes.UNTOLD`), which the next start of the sweep tells Optuna, so
    that the trial is not run again."""
    if not finished.pruned and not math.isfinite(finished.value):
        raise ValueError(f"the trial's value {finished.value!r} is not a finite number")
    try:
        if finished.pruned:
            told = study.tell(trial, state=TrialState.PRUNED)
        else:
            told = study.tell(trial, finished.value)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if still_running(trial):
            raise
        _let_go(study, trial, finished.run)  # "Cannot tell a FAIL trial": another process failed it meanwhile
        return False
    except Unreachable:
        finished.run.set_tags({UNTOLD: repr(finished.value)})
        finished.run.close("pruned" if finished.pruned else "complete")
        raise
    if told.state == TrialState.FAIL:  # Optuna fails a trial whose value it cannot take (NaN...), with a warning
        raise ValueError(f"Optuna refused the trial's value {finished.value!r}")
    return True


def _out_of_time(deadline: float | None) -> bool:
    """Whether the sweep's time budget (``--timeout``, a ``time.monotonic()`` deadline) is spent:
    then no trial starts, and a running one stops at its next evaluation (its reporter's
    ``out_of_time``)."""
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
        _run_one(study, trial, objective, heartbeat, killed)


#: How often a process whose remaining trials are all running elsewhere looks again.
_WAIT_SECONDS = 1.0


def _drain_queue(study: optuna.Study, objective: Objective, observer: SweepObserver, target: int,
                 killed: KilledTrials, heartbeat: int, refill: Callable[[], int], deadline: float | None = None) -> None:
    """A grid's loop: take queued cells one by one (Optuna pops a waiting trial atomically in
    the storage) and stop when none is left and none runs elsewhere. While others still run, it
    waits: a killed process's cell is queued again (see :mod:`sweeplab.sweeps.recovery`) and a
    waiting process takes it. When the queue is empty and fewer than ``target`` trials finished
    (a cell failed on its own), ``refill`` queues untried cells in their place. A cell queued
    twice (two processes that started the sweep at the same moment) is failed as a duplicate
    without running."""
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
        _run_one(study, optuna_private.trial_by_id(study, trial_id), objective, heartbeat, killed)


def search(study: optuna.Study, objective: Objective, observer: SweepObserver, target: int, killed: KilledTrials,
           heartbeat: int, grid: Space | None = None, seed: int = 0, deadline: float | None = None) -> None:
    """This process's share of the search: the queued cells of ``grid`` (with ``seed`` ordering
    any cells queued later), or sampled trials when there is no grid; no trial starts after
    ``deadline`` (``time.monotonic()``; ``None``: no time budget)."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        objective.best = study.best_value
    observer.sweep_started(study.study_name, target, finished_trials(study))
    if grid is None:
        _optimise(study, objective, target, observer, killed, heartbeat, deadline)
    else:
        _drain_queue(study, objective, observer, target, killed, heartbeat,
                     lambda: enqueue_grid_cells(study, grid, target, seed), deadline)
