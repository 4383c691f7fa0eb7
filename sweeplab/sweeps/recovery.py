"""Finding the trials whose process was killed, and what then happens to them.

A trial's process can die without a word: ``kill -9``, the kernel's out-of-memory killer, a
machine that loses power. Optuna then keeps the trial RUNNING and MLflow keeps its run RUNNING
forever, and ``--trials N`` would wait for it. Such trials are found in two ways:

- on this machine, by process id: every trial records its worker as ``host:pid`` when it starts
  (:func:`worker_id`), and a RUNNING trial of this host whose process no longer exists (or is a
  zombie) is dead (:func:`fail_dead_local_trials`). This is the only way with the embedded journal
  storage, which has no heartbeats, and the quicker one on any storage.
- on any machine, by heartbeat (RDB storage only): a running trial records a heartbeat every
  ``--heartbeat`` seconds, and Optuna fails one that has been silent for twice that
  (:func:`fail_stale_trials`).

Either way the trial goes to :class:`KilledTrials`: its MLflow run is closed as KILLED with the
reason and its partial curve, and its parameters are queued once more with the values it had
reported (Optuna's retry callback, at most one retry per trial), so the kill costs the sweep the
time the trial had run and nothing else. Every function here is safe to run in several processes
at once: the storage lets exactly one of them fail a given trial, and only that one handles it.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeplab.tracker.runs import SweepRecorder

__all__ = ["KilledTrials", "close_runs_of_ended_trials", "fail_dead_local_trials", "fail_stale_trials", "requeue_killed_grid_cells", "worker_id"]

#: Trial user attributes that describe one attempt, not the configuration: a retry starts without them.
ATTEMPT_ATTRS = ("worker", "mlflow_run_id", "fail_reason")

#: A trial gets its worker within milliseconds of starting; one still without after this long is orphaned.
ORPHAN_SECONDS = 120

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def worker_id() -> str:
    """``host:pid`` of this process, as a trial records it (``worker`` user attribute)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs. A zombie (killed, not yet reaped by its
    parent) counts as dead: it will never finish its trial."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/PID/stat: "pid (name) state ..."; the name may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # not Linux, or it ended just now: the next look decides
    return state not in ("Z", "X")


class KilledTrials:
    """What happens to a trial whose process was killed, however it was found (see the module
    docstring): close its MLflow run as KILLED with the reason, then queue its parameters once
    more with the intermediate values it had reported (``system_attrs["failed_trial"]`` on the
    retry names the killed trial). Optuna calls it for trials it fails for want of heartbeats
    (the RDB storage's stale-trial callback); :func:`fail_dead_local_trials` calls it for the
    trials it fails itself."""

    def __init__(self, heartbeat: int) -> None:
        self.silent = f"killed: no heartbeat from its worker for {2 * heartbeat} s"
        self.recorder: SweepRecorder | None = None  # set once the parent run is open
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = retry(max_retry=1, inherit_intermediate_values=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = str(trial.user_attrs.get("fail_reason") or self.silent)
        run_id = str(trial.user_attrs.get("mlflow_run_id", ""))
        if self.recorder is not None and run_id:
            try:
                self.recorder.trial(run_id).close("killed", reason)
            except Exception as exc:  # the tracking server is away: a rerun's recovery closes the run
                logging.getLogger(__name__).warning("could not close the run of killed trial %d: %s", trial.number, exc)
        attempt = copy.deepcopy(trial)
        # The retry must not inherit the dead worker: another process would take it for dead too.
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        self.retry(study, attempt)


def fail_dead_local_trials(study: optuna.Study, on_killed: KilledTrials | None = None) -> int:
    """Fail the RUNNING trials whose worker process on this host no longer exists, and those that
    never got a worker (a process killed between Optuna's ``ask`` and the trial's first line)
    after :data:`ORPHAN_SECONDS`, with ``fail_reason`` saying so; each one this process failed goes
    to ``on_killed``. Trials of other hosts are left to heartbeats. Returns how many it failed."""
    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            reason = "killed: its process ended"
        elif not worker_host and trial.datetime_start and (now - trial.datetime_start).total_seconds() > ORPHAN_SECONDS:
            reason = "killed: its process ended before the trial began"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first, and handles it
        failed += 1
        if on_killed is not None:
            on_killed(study, study._storage.get_trial(trial._trial_id))
    return failed


def close_runs_of_ended_trials(study: optuna.Study, recorder: SweepRecorder) -> int:
    """Close as KILLED the child runs still RUNNING whose trial has ended in Optuna: left behind
    when a process was killed after creating its run but before recording the run on its trial,
    or when the tracking server was away as the kill was handled. Returns how many it closed.

    Safe while other processes run trials (other machines, each of whose ``sweep run`` does this
    at start-up): MLflow is read before Optuna, and a trial exists before its run, so a run read
    here belongs to a trial that the later read of Optuna sees; a run whose trial just finished is
    read again, and left alone if its own process closed it meanwhile."""
    runs = recorder.running_trials()
    ended = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    closed = 0
    for number, run in runs.items():
        if number in ended and run.is_running():
            run.close("killed", "the process running it ended")
            closed += 1
    return closed


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose heartbeats stopped (a no-op on storages without heartbeats); each goes
    to the storage's stale-trial callback, a :class:`KilledTrials`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue_killed_grid_cells(study: optuna.Study) -> int:
    """Optuna's grid sampler counts a failed trial's cell as visited; put back the cells whose
    trial was killed or interrupted (not those that failed on their own), unless already queued
    (a retry from :class:`KilledTrials`) or finished, so that every cell of the grid is run to
    the end once. Returns how many were queued."""
    finished = {repr(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=_FINISHED)}
    queued = {
        repr(sorted((t.system_attrs.get("fixed_params") or t.params).items()))  # enqueued, or a retry of a killed trial
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    }
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        key = repr(sorted(trial.params.items()))
        reason = str(trial.user_attrs.get("fail_reason", "killed"))  # none: failed for want of heartbeats
        if trial.params and key not in finished | queued and reason.startswith(("killed", "interrupted")):
            study.enqueue_trial(trial.params, skip_if_exists=False)
            queued.add(key)
            count += 1
    return count
