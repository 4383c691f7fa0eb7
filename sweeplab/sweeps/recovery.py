"""Finding the trials whose process was killed, and what then happens to them.

A trial's process can die without a word: ``kill -9``, the kernel's out-of-memory killer, a
machine that loses power, a container that is stopped. Optuna then keeps the trial RUNNING and
MLflow keeps its run RUNNING forever, and ``--trials N`` would wait for it. Such trials are found
in three ways, all run between trials by every process of the sweep:

- by process (:mod:`sweeplab.sweeps.processes`): a trial of a process this one can see that has
  ended is dead at once.
- by heartbeat (:mod:`sweeplab.sweeps.heartbeats`): a trial silent for twice its interval is
  dead; this finds the processes of other machines and containers.
- a trial that never recorded its process (killed between Optuna's ``ask`` and the trial's first
  line) is dead after :data:`ORPHAN_SECONDS`.

Either way the trial goes to :class:`KilledTrials`: its MLflow run is closed as KILLED with the
reason and its partial curve, and its parameters are queued once more (Optuna's retry callback,
up to ``--max-retries`` times, so a configuration that kills its process every time is given
up). The retry inherits the killed attempt's evaluations and goes on from its resume state
(:mod:`sweeplab.sweeps.trial`), so the kill costs the sweep the time since that state was saved.
A trial interrupted by Ctrl-C or a stop signal is queued again the same way
(:mod:`sweeplab.sweeps.loops`). The storage lets exactly one process fail a
given trial, and only that one handles it. A trial failed while its process was in fact alive (a
lost heartbeat) is dropped by that process when it next reaches the storage (:class:`sweeplab.sweeps.trial.Abandoned`).
"""

from __future__ import annotations

import collections
import copy
import datetime
import logging
import socket
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.outcomes import UNTOLD, outcome
from sweeplab.sweeps.processes import dead_here, process_of, this_machine
from sweeplab.sweeps.storage import ReconnectingStorage
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.tracker.tags import STATE

__all__ = ["ATTEMPT_ATTRS", "PREVIOUS_RUN", "KilledTrials", "close_runs_of_ended_trials", "fail_dead_trials",
           "fail_stale_trials", "first_attempt", "recover"]

#: Trial user attributes that describe one attempt, not the configuration: a retry starts without them.
ATTEMPT_ATTRS = ("worker", "worker_process", "heartbeat", "heartbeat_seconds", "mlflow_run_id", "fail_reason")

#: The user attribute of a retry naming the MLflow run of the attempt it repeats.
PREVIOUS_RUN = "previous_run"


def first_attempt(trial: optuna.Trial | FrozenTrial) -> int:
    """The number of ``trial``'s first attempt: its own, or, for a retry, the number its retries
    go back to (Optuna's retry convention, ``system_attrs["failed_trial"]``)."""
    if isinstance(trial, FrozenTrial):
        attrs = trial.system_attrs
    else:
        attrs = optuna_private.storage_of(trial.study).get_trial(optuna_private.trial_id(trial)).system_attrs
    return int(attrs.get("failed_trial", trial.number))

#: A trial records its process within milliseconds of starting; one still without after this long is orphaned.
ORPHAN_SECONDS = 120


class KilledTrials:
    """What happens to a trial whose process was killed, however it was found (see the module
    docstring): close its MLflow run as KILLED with the reason, then queue its parameters once
    more, up to ``max_retries`` times (``system_attrs["failed_trial"]`` on the retry names the
    first attempt, ``retry_history`` every earlier one). Optuna calls it for trials it fails for
    want of heartbeats (the RDB storage's stale-trial callback); :func:`fail_dead_trials` calls
    it for the trials it fails itself, and the run loop for an interrupted trial.

    The retry inherits the killed attempt's intermediate values: it trains with the first
    attempt's seed and goes on from its resume state, so its evaluations are the same ones, and
    the pruner sees one trial."""

    def __init__(self, heartbeat: float, max_retries: int = 3) -> None:
        self.heartbeat = heartbeat
        self.silent = f"killed: no heartbeat from its worker for {2 * heartbeat:g} s"
        self.beats: dict[int, tuple[object, float]] = {}  # journal: trial id -> (last beat seen, monotonic time it was first seen)
        self.recorder: SweepRecorder | None = None  # set once the parent run is open
        self.max_retries = max_retries
        #: Deletes the resume state of a trial given up (by its study and first attempt's number); set once it is known.
        self.forget: Callable[[optuna.Study, int], None] | None = None
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = retry(max_retry=max_retries, inherit_intermediate_values=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = str(trial.user_attrs.get("fail_reason") or self.silent)
        run_id = str(trial.user_attrs.get("mlflow_run_id", ""))
        if self.recorder is not None and run_id:
            try:
                run = self.recorder.trial(run_id)
                if run.is_running():  # its process may have closed it (as failed, with its reason) just before dying
                    run.close("killed", reason)
            except Exception as exc:  # the tracking server is away: a rerun's recovery closes the run
                logging.getLogger(__name__).warning("could not close the run of killed trial %d: %s", trial.number, exc)
        attempt = copy.deepcopy(trial)
        # The retry must not inherit the dead worker: another process would take it for dead too.
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        if run_id:
            attempt.user_attrs[PREVIOUS_RUN] = run_id
        if len(trial.system_attrs.get("retry_history", ())) < self.max_retries:
            self.retry(study, attempt)
        elif self.forget is not None:  # given up: no attempt will go on from its state
            try:
                self.forget(study, first_attempt(trial))
            except Exception as exc:
                logging.getLogger(__name__).warning("could not delete the resume state of trial %d: %s", trial.number, exc)

    def silent_for(self, trial: FrozenTrial) -> float:
        """Seconds this process has seen the trial's journal heartbeat stand still (0 the first
        time it looks): no clock of another process is read."""
        beat, now = trial.user_attrs.get("heartbeat"), time.monotonic()
        seen = self.beats.get(optuna_private.trial_id(trial))
        if seen is None or seen[0] != beat:
            self.beats[optuna_private.trial_id(trial)] = (beat, now)
            return 0.0
        return now - seen[1]


def _age(trial: FrozenTrial) -> float:
    """Seconds since the trial started, by this machine's clock against the writer's (used only
    for the orphan rule, whose delay dwarfs any sane clock difference)."""
    return (datetime.datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0


def fail_dead_trials(study: optuna.Study, on_killed: KilledTrials) -> int:
    """Fail the RUNNING trials whose process is dead (see the module docstring) with
    ``fail_reason`` saying why; each one this process failed goes to ``on_killed``. On an RDB
    storage Optuna judges heartbeats itself (:func:`fail_stale_trials`). Returns how many it failed."""
    host, machine = socket.gethostname(), this_machine()
    journal = not optuna_private.has_heartbeat(optuna_private.storage_of(study))
    failed = 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for gone in set(on_killed.beats) - {optuna_private.trial_id(t) for t in running}:
        del on_killed.beats[gone]
    for trial in running:
        dead = dead_here(trial.user_attrs, host, machine)
        # A pid check without a start time (not Linux) cannot tell a reused pid: heartbeats decide too.
        judged_by_beats = journal and (dead is None or not process_of(trial.user_attrs)[3])
        interval = float(trial.user_attrs.get("heartbeat_seconds", on_killed.heartbeat))
        if dead and _tell_from_run(study, trial, on_killed.recorder):
            continue
        if dead:
            # A reason already recorded (the trial failed, and its process died before telling
            # Optuna) is the true one.
            reason = str(trial.user_attrs.get("fail_reason") or "killed: its process ended")
        elif judged_by_beats and on_killed.silent_for(trial) > 2 * interval:
            reason = f"killed: no heartbeat from its worker for {2 * interval:g} s"
        elif not journal and dead is None and "worker" not in trial.user_attrs and _age(trial) > ORPHAN_SECONDS:
            reason = "killed: its process ended before the trial began"
        else:
            continue
        try:
            optuna_private.storage_of(study).set_trial_user_attr(optuna_private.trial_id(trial), "fail_reason", reason)
            optuna_private.storage_of(study).set_trial_state_values(optuna_private.trial_id(trial), state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first, and handles it
        failed += 1
        on_killed(study, optuna_private.storage_of(study).get_trial(optuna_private.trial_id(trial)))
    return failed


def _tell_from_run(study: optuna.Study, trial: FrozenTrial, recorder: SweepRecorder | None) -> bool:
    """Tell Optuna how a dead process's trial ended when its MLflow run says it finished and holds
    the value the storage could not take (:data:`UNTOLD`: the process stopped because the storage
    stayed unreachable after the trial had trained), so that the finished trial is kept, not run
    again. Returns whether it did."""
    run_id = str(trial.user_attrs.get("mlflow_run_id", ""))
    if recorder is None or not run_id or trial.state != TrialState.RUNNING:
        return False
    tags = recorder.trial_tags(run_id)
    if tags is None or UNTOLD not in tags or tags.get(STATE) not in ("complete", "pruned"):
        return False
    try:
        if tags[STATE] == "pruned":
            study.tell(trial.number, state=TrialState.PRUNED)
        else:
            study.tell(trial.number, float(tags[UNTOLD]))
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False  # another process ended it first
    logging.getLogger(__name__).info("trial %d: told Optuna its value from its run", trial.number)
    return True


def close_runs_of_ended_trials(study: optuna.Study, recorder: SweepRecorder) -> int:
    """Close the child runs still RUNNING whose trial has ended in Optuna, with the state Optuna
    recorded: a failed trial's run as KILLED (its process was killed after creating the run but
    before recording it on the trial, or the tracking server was away as the kill was handled), a
    complete or pruned trial's run as such (its process was killed after telling Optuna, which
    comes after every summary and artifact of the run, and before closing it). Returns how many
    it closed.

    Safe while other processes run trials (other machines, each of whose ``sweep run`` does this
    at start-up): MLflow is read before Optuna, and a trial exists before its run, so a run read
    here belongs to a trial that the later read of Optuna sees; a run is read again just before it
    is closed, and left alone if its own process closed it meanwhile."""
    runs = recorder.running_trials()
    ended = {t.number: t for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    closed = 0
    for number, run in runs.items():
        if number in ended and run.is_running():
            word = outcome(ended[number])
            if word in ("failed", "killed"):
                reason = ended[number].user_attrs.get("fail_reason") or "killed: the process running it ended"
                run.close(word, str(reason))
            else:
                run.close(word)
            closed += 1
    return closed


def fail_stale_trials(study: optuna.Study, recorder: SweepRecorder | None = None) -> None:
    """Fail the trials whose Optuna heartbeats stopped (RDB storage only; a no-op elsewhere); each
    goes to the storage's stale-trial callback, a :class:`KilledTrials`. A stale trial whose run
    holds a value the storage could not take (:data:`UNTOLD`) is told that value instead.

    Nothing is judged until the storage has answered for twice the heartbeat interval after an
    outage: no trial could record a heartbeat while it was away, and live trials would be failed
    before their heartbeat threads are through to it again."""
    storage = optuna_private.storage_of(study)
    interval = storage.get_heartbeat_interval() if optuna_private.has_heartbeat(storage) else None
    if interval is None:
        return
    if isinstance(storage, ReconnectingStorage) and storage.patience.answered_for() < 2 * interval:
        return
    for trial_id in optuna_private.stale_trial_ids(storage, optuna_private.study_id(study)):
        _tell_from_run(study, storage.get_trial(trial_id), recorder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)




def recover(study: optuna.Study, killed: KilledTrials) -> collections.Counter:
    """Fail the trials of dead processes (see the module docstring); returns the trials by state
    afterwards."""
    fail_dead_trials(study, killed)
    fail_stale_trials(study, killed.recorder)
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False))
