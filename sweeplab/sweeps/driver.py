"""A sweep's story: check, open, search, close.

1. **Check** (:mod:`~sweeplab.sweeps.checks`): everything a user can get wrong (task, data, space,
   flags) is checked before the store is touched, so a bad command writes nothing.
2. **Open** (:mod:`~sweeplab.sweeps.study`): the study and its parent run are made, or found again
   by name, so that the same command run again resumes: ``--trials N`` is the number of
   finished (complete or pruned) trials the study should hold. The main process recovers the
   trials of killed processes and queues a grid's cells.
3. **Search** (:mod:`~sweeplab.sweeps.loops`, one trial in :mod:`~sweeplab.sweeps.trial`): this
   process's share of the trials, or ``--workers`` processes that share them.
4. **Close** (:mod:`~sweeplab.sweeps.closing`): the best trial is scored once on the test split
   (:mod:`~sweeplab.sweeps.test_split`) and the parent run closed with its counts, description
   and pictures, however the search ended.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from optuna.trial import TrialState

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.errors import SweepFailed, SweeplabError, Unreachable
from sweeplab.sweeps.checks import Checked, check, check_prepared, problem_lines, task_call
from sweeplab.sweeps.closing import close_sweep, describer, drawer
from sweeplab.sweeps.failures import internal_error
from sweeplab.sweeps.grid_cells import enqueue_grid_cells, requeue_killed_grid_cells
from sweeplab.sweeps.loops import search
from sweeplab.sweeps.observer import Silent, SweepObserver
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.optuna_logs import quiet_optuna
from sweeplab.sweeps.outcomes import count_outcomes, outcome
from sweeplab.sweeps.storage import close_storage
from sweeplab.sweeps.recovery import close_runs_of_ended_trials, recover
from sweeplab.sweeps.resume_states import share_local_states
from sweeplab.sweeps.study import Opened, open_sweep, study_name
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.ray_cluster import on_cluster
from sweeplab.sweeps.ray_workers import run_ray_workers
from sweeplab.sweeps.test_split import score_best_on_test
from sweeplab.sweeps.trial import Objective
from sweeplab.sweeps.workers import run_workers
from sweeplab.tracker.reconnect import bound_http_retries
from sweeplab.tracker.store import quiet_libraries
from sweeplab.trainers.device import frozen_long_lived

__all__ = ["SweepOutcome", "run_sweep"]


@dataclass
class SweepOutcome:
    """What a finished ``run_sweep`` reports."""

    study: str
    experiment: str
    parent_run_id: str
    tracking_uri: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    data_report: list[str]
    target: int = 0
    test: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    majority: float | None = None  # validation accuracy of always answering the most frequent class
    task: str = ""  # the task's name, as `sweep best --task` takes it


def _trial_env(checked: Checked, observer: SweepObserver) -> TrialEnv:
    """Where and how every trial of the sweep runs (its seed is set per trial)."""
    options, task, rule = checked.options, checked.task, checked.rule
    cache = PrepCache(options.tracking.cache_dir or checked.store.root / "cache", getattr(observer, "preparing", None))
    return TrialEnv(device=checked.device, precision=options.runtime.precision, cache=cache, seed=options.search.seed,
                    trial_seed=options.search.seed, early_stop=rule if options.search.early_stop else None,
                    keep_state=options.tracking.checkpoints != "none", metric=task.metric, direction=task.direction,
                    compile=options.runtime.compile)


def _target(checked: Checked) -> int:
    """The finished trials the study should hold: ``--trials``, or fewer when a grid has fewer cells."""
    trials = checked.options.search.trials
    return min(trials, len(checked.space.grid_cells())) if checked.options.search.sampler == "grid" else trials


def _start_up(checked: Checked, opened: Opened) -> None:
    """What the main process does once before the trials: recover the trials of killed processes
    (telling Optuna the values that finished trials could not tell it), queue a grid's cells,
    close the runs of ended trials, and log the data report, the majority baseline and the space
    file on the parent run."""
    study, recorder, loaded = opened.study, opened.recorder, checked.loaded
    recover(study, opened.killed)
    if checked.options.search.sampler == "grid":
        requeue_killed_grid_cells(study)
        enqueue_grid_cells(study, checked.space, _target(checked), checked.options.search.seed)
    close_runs_of_ended_trials(study, recorder)
    recorder.log_dict({"reports": [r.as_dict() for r in loaded.reports]}, "data_report.json")
    if loaded.majority is not None:
        recorder.log_summary({"val_majority_accuracy": loaded.majority}, {})
    recorder.log_file(checked.space.path)


def _search(checked: Checked, opened: Opened, env: TrialEnv, observer: SweepObserver, staging: Path,
            deadline: float | None) -> list[str]:
    """This process's share of the trials, or the ``--workers`` processes' (each worker on its
    card with ``--gpus``), or the workers on the ``--ray`` cluster's nodes; returns a note for
    each worker that died."""
    options, study = opened.options, opened.study
    if options.role == "main" and (options.runtime.workers > 1 or options.runtime.gpus or options.runtime.ray):
        start = run_ray_workers if options.runtime.ray else run_workers
        if options.runtime.ray and options.runtime.ray != "local" and checked.store.is_default:
            # The nodes read resume states among the parent run's artifacts, through the head's server.
            share_local_states(checked, opened.recorder, study.study_name, optuna_private.study_id(study))
        notes = start(options, study, _target(checked), observer, checked.store.root / "workers")
        recover(study, opened.killed)  # the last worker killed mid-trial: its trial and its run
        close_runs_of_ended_trials(study, opened.recorder)
        return notes
    objective = Objective(checked, env, opened.recorder, observer, staging, deadline)
    grid = checked.space if options.search.sampler == "grid" else None
    search(study, objective, observer, _target(checked), opened.killed, options.tracking.heartbeat, grid,
           options.search.seed, deadline)
    return []


def run_sweep(options: SweepOptions, observer: SweepObserver | None = None) -> SweepOutcome:
    """Run (or resume) a sweep until the study holds ``options.search.trials`` finished trials
    (see the module docstring for its four steps). The Optuna storage's connections are given
    back, and what was frozen out of the garbage collector's view for the trials is back in it,
    when it returns or raises. With ``--ray`` the cluster is reached first, and left after
    (:func:`~sweeplab.sweeps.ray_workers.on_cluster`)."""
    with on_cluster(options) as options:  # an address nothing answers at, a resource it lacks: one line, before any work
        return _run_sweep(options, observer or Silent())


def _run_sweep(options: SweepOptions, observer: SweepObserver) -> SweepOutcome:
    """:func:`run_sweep`, on the cluster when there is one."""
    if options.search.timeout is not None and options.deadline is None:
        options = options.with_(deadline=time.time() + options.search.timeout)
    deadline = None if options.deadline is None else time.monotonic() + (options.deadline - time.time())
    checked = check(options)

    # Nothing above writes anything; from here on the store exists.
    quiet_libraries()
    quiet_optuna()
    bound_http_retries()
    try:
        env = _trial_env(checked, observer)
        seen = problem_lines(checked.loaded)
        task_call("prepare", checked.task.prepare, checked.loaded, {**checked.task.defaults, **checked.space.fixed}, env)
        check_prepared(checked.loaded, checked.options, seen)  # images that do not decode: said before any trial
        opened = open_sweep(checked)
        try:
            return _run_opened(replace(checked, options=opened.options), opened, env, observer, deadline)
        finally:
            close_storage(optuna_private.storage_of(opened.study))
    except (SweeplabError, KeyboardInterrupt):
        raise
    except Exception as exc:  # sweeplab's own, outside any trial (opening the study, recovery, the data cache...)
        raise internal_error(exc, study_name(checked.options, checked.space), None,
                             checked.store.root / "logs" / "errors.log") from None


def _run_opened(checked: Checked, opened: Opened, env: TrialEnv, observer: SweepObserver,
                deadline: float | None) -> SweepOutcome:
    """Search and close an opened sweep (steps 2 to 4 of the module docstring)."""
    options, study, recorder, task, store = opened.options, opened.study, opened.recorder, checked.task, checked.store
    describe = describer(task, checked.space, options, checked.data_dir, recorder, store.tracking_uri, opened.name)
    if options.role == "main":  # start-up recovery and the grid's queue are the main process's; workers find dead trials as they go
        try:
            _start_up(checked, opened)
        except Unreachable as exc:
            close_sweep(study, recorder, "FAILED", exc, describe)
            raise
    report_lines = [line for r in checked.loaded.reports for line in r.lines()]
    (store.root / "staging").mkdir(parents=True, exist_ok=True)
    if options.role == "worker":
        with frozen_long_lived(), tempfile.TemporaryDirectory(dir=store.root / "staging") as staging:
            _search(checked, opened, env, observer, Path(staging), deadline)
        return SweepOutcome(opened.name, opened.experiment, recorder.parent_run_id, store.tracking_uri,
                            count_outcomes(study), None, None, report_lines, _target(checked))
    status, stopped_by, test, why_not = "FAILED", None, None, None
    try:
        with frozen_long_lived(), tempfile.TemporaryDirectory(dir=store.root / "staging") as staging:
            notes = _search(checked, opened, env, observer, Path(staging), deadline)
            try:
                test, why_not = score_best_on_test(study, task, checked.loaded, env, recorder, Path(staging),
                                                   options.tracking.plots)
            except Unreachable:
                raise
            except Exception as exc:  # sweeplab's own, after the trials: they are done and kept, the sweep with them
                error = internal_error(exc, opened.name, None, store.root / "logs" / "errors.log")
                why_not = f"the test split was not scored: {error}"
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Unreachable as exc:
        stopped_by = exc
        raise
    finally:
        counts = close_sweep(study, recorder, status, stopped_by, describe, drawer(recorder, store.tracking_uri)
                             if options.tracking.plots else None)
    failures = [t.user_attrs.get("fail_reason", "unknown") for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if outcome(t) == "failed"]
    if counts["complete"] + counts["pruned"] == 0 and failures:
        raise SweepFailed(f"every trial failed; last reason: {failures[-1]}")
    return SweepOutcome(study=opened.name, experiment=opened.experiment, parent_run_id=recorder.parent_run_id,
                        tracking_uri=store.tracking_uri, counts=counts,
                        best_value=study.best_value if counts["complete"] else None,
                        best_trial=study.best_trial.number if counts["complete"] else None, data_report=report_lines,
                        target=_target(checked), test=test, notes=[*notes, *([why_not] if why_not else [])],
                        majority=checked.loaded.majority, task=task.name)
