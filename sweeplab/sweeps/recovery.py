"""Finding the trials whose process was killed, and what then happens to them.

A trial's process can die without a word: ``kill -9``, the kernel's out-of-memory killer, a
machine that loses power, a container that is stopped. Optuna then keeps the trial RUNNING and
MLflow keeps its run RUNNING forever, and ``--trials N`` would wait for it. Such trials are found
in three ways, all run between trials by every process of the sweep:

- by process: every trial records the process running it (:func:`worker_attrs`: host name, pid,
  and on Linux the boot, pid namespace and start time). A RUNNING trial of a process this process
  can see (same host, boot and pid namespace) is dead when that process is gone, is a zombie, or
  is a new process that reuses the pid (another start time); this finds a kill at once.
- by heartbeat: a running trial records a heartbeat every ``--heartbeat`` seconds
  (:func:`trial_heartbeat`; Optuna's own heartbeats on an RDB storage, judged by the database's
  clock; a counter in a user attribute on the journal file, judged by how long this process has
  seen it stand still, so that no two clocks are compared). A trial silent for twice its interval
  is dead: this finds the processes of other machines and containers, whose pids mean nothing here.
- a trial that never recorded its process (killed between Optuna's ``ask`` and the trial's first
  line) is dead after :data:`ORPHAN_SECONDS`.

Either way the trial goes to :class:`KilledTrials`: its MLflow run is closed as KILLED with the
reason and its partial curve, and its parameters are queued once more (Optuna's retry callback:
one retry, so a configuration that kills its process twice is given up), so the kill costs the
sweep the time the trial had run and nothing else. The storage lets exactly one process fail a
given trial, and only that one handles it. A trial failed while its process was in fact alive (a
lost heartbeat) is dropped by that process when it next reaches the storage (``loops.Abandoned``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.space import cell_key
from sweeplab.sweeps.storage import ReconnectingStorage
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.tracker.tags import STATE

__all__ = ["DUPLICATE", "INTERNAL_ERROR", "OUTCOMES", "UNTOLD", "KilledTrials", "close_runs_of_ended_trials", "fail_dead_trials", "process_ended",
           "fail_stale_trials", "is_duplicate_cell", "outcome", "requeue_killed_grid_cells", "trial_heartbeat", "worker_attrs"]

#: Trial user attributes that describe one attempt, not the configuration: a retry starts without them.
ATTEMPT_ATTRS = ("worker", "worker_process", "heartbeat", "heartbeat_seconds", "mlflow_run_id", "fail_reason")

#: A trial records its process within milliseconds of starting; one still without after this long is orphaned.
ORPHAN_SECONDS = 120

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

#: What became of a trial, in the words used everywhere (the run summary, ``sweep status``, the
#: ``sweeplab.state`` tag of its MLflow run): failed means the trial raised, killed that its
#: process was killed or interrupted while it ran.
OUTCOMES = ("complete", "pruned", "failed", "killed", "running", "queued")

#: Tag of a finished trial's run whose value could not be told to Optuna (the storage stayed
#: unreachable): the value, which the next start of the sweep tells Optuna from the run.
UNTOLD = "sweeplab.untold_value"


def outcome(trial: FrozenTrial) -> str:
    """``trial``'s outcome (one of :data:`OUTCOMES`), or ``"duplicate"`` for a queued grid cell
    that was dropped without running because another trial ran the cell."""
    if trial.state == TrialState.FAIL:
        reason = str(trial.user_attrs.get("fail_reason", ""))
        if reason == DUPLICATE:
            return "duplicate"
        # No reason: Optuna failed it for want of heartbeats.
        return "killed" if not reason or reason.startswith(("killed", "interrupted")) else "failed"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
            TrialState.WAITING: "queued"}[trial.state]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None (no such
    process here, or not Linux). The name may hold spaces and parentheses, hence the rpartition."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _machine() -> str:
    """This boot of this machine and this pid namespace (``BOOT-ID pid:[4026531836]``): the pid
    namespace's number alone repeats across machines (every host's own is the same). '' parts
    where there is nothing to read (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot} {namespace}"


def worker_attrs() -> dict[str, str]:
    """What a trial records about the process running it: ``worker`` (``host:pid``, for people)
    and ``worker_process`` (boot, pid namespace and start time in clock ticks since boot, so that
    a process of another machine or container, or a new process that got the same pid, is not
    taken for it)."""
    fields = _stat("self")
    started = fields[19] if fields and len(fields) > 19 else ""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_process": f"{_machine()} {started}"}


def _alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` of this pid namespace still runs, and is the one that started at
    ``started`` (when given). A zombie (killed, not yet reaped by its parent) counts as dead: it
    will never finish its trial. A process this one may not inspect counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # Linux: it ended just now; elsewhere: kill said it runs
    if fields[0] in ("Z", "X"):
        return False
    return not started or len(fields) <= 19 or fields[19] == started


def _process_of(attrs: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(host, pid, machine, start time) a trial or a study recorded (:func:`worker_attrs`); ''
    where absent."""
    host, _, pid = str(attrs.get("worker", "")).rpartition(":")
    machine, _, started = str(attrs.get("worker_process", "")).rpartition(" ")
    return host, pid, machine, started


def process_ended(attrs: Mapping[str, Any] | None) -> bool:
    """Whether the process ``attrs`` describes (:func:`worker_attrs`) is known to have ended: it
    ran on this machine and runs no more. False when that cannot be told (another machine,
    nothing recorded) and for this process."""
    if not attrs or _process_of(attrs)[1] == str(os.getpid()):
        return False
    return _dead_here(attrs, socket.gethostname(), _machine()) is True


def _dead_here(attrs: Mapping[str, Any], host: str, machine: str) -> bool | None:
    """True or False when this process can tell whether the process that recorded ``attrs`` (a
    trial's user attributes) runs (same host, boot and pid namespace); None when it cannot
    (another machine or container)."""
    worker_host, pid, recorded_machine, started = _process_of(attrs)
    if worker_host != host or not pid.isdigit() or recorded_machine != machine:
        return None
    # Between trials this process runs none, so a trial that names it is left from an earlier
    # life of its pid (a restarted container's pid 1).
    return int(pid) == os.getpid() or not _alive(int(pid), started)


class KilledTrials:
    """What happens to a trial whose process was killed, however it was found (see the module
    docstring): close its MLflow run as KILLED with the reason, then queue its parameters once
    more (``system_attrs["failed_trial"]`` on the retry names the killed trial). Optuna calls it
    for trials it fails for want of heartbeats (the RDB storage's stale-trial callback);
    :func:`fail_dead_trials` calls it for the trials it fails itself.

    The retry does not inherit the killed attempt's intermediate values: it trains with its own
    seed, and Optuna would ignore its reports at those steps and prune it on the dead attempt's."""

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self.silent = f"killed: no heartbeat from its worker for {2 * heartbeat:g} s"
        self.beats: dict[int, tuple[object, float]] = {}  # journal: trial id -> (last beat seen, monotonic time it was first seen)
        self.recorder: SweepRecorder | None = None  # set once the parent run is open
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = retry(max_retry=1, inherit_intermediate_values=False)

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
        self.retry(study, attempt)

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
    host, machine = socket.gethostname(), _machine()
    journal = not optuna_private.has_heartbeat(optuna_private.storage_of(study))
    failed = 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for gone in set(on_killed.beats) - {optuna_private.trial_id(t) for t in running}:
        del on_killed.beats[gone]
    for trial in running:
        dead = _dead_here(trial.user_attrs, host, machine)
        # A pid check without a start time (not Linux) cannot tell a reused pid: heartbeats decide too.
        judged_by_beats = journal and (dead is None or not _process_of(trial.user_attrs)[3])
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
    try:
        tags = recorder.trial(run_id).stored().data.tags
    except MlflowException:  # the run is not in this store (another --tracking-uri, or deleted)
        return False
    if UNTOLD not in tags or tags.get(STATE) not in ("complete", "pruned"):
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


@contextlib.contextmanager
def trial_heartbeat(study: optuna.Study, trial_id: int, seconds: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``seconds`` while the block runs: Optuna's heartbeat
    thread on an RDB storage, else a thread that counts up the trial's ``heartbeat`` user
    attribute on the journal file (with ``heartbeat_seconds``, so that every reader judges the
    silence by this trial's own interval). It stops once the trial is no longer RUNNING."""
    if optuna_private.has_heartbeat(optuna_private.storage_of(study)):
        with optuna_private.heartbeat_thread(trial_id, optuna_private.storage_of(study)):
            yield
        return
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            try:
                if count == 0:
                    optuna_private.storage_of(study).set_trial_user_attr(trial_id, "heartbeat_seconds", seconds)
                optuna_private.storage_of(study).set_trial_user_attr(trial_id, "heartbeat", count)
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            except Exception as exc:  # a full disk...: the trial goes on; a peer may fail it as silent
                logging.getLogger(__name__).warning("could not record the heartbeat of a trial: %s", exc)
            count += 1
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=beat, name="sweeplab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


def _cell(trial: FrozenTrial) -> tuple:
    return cell_key(trial.system_attrs.get("fixed_params") or trial.params)


#: The ``fail_reason`` prefix of a trial failed by sweeplab's own error (``InternalError``), not
#: by its trainer.
INTERNAL_ERROR = "internal error"

#: Reasons that say nothing against a trial's configuration: its process was killed or
#: interrupted, or sweeplab failed around it. A grid cell failed only for these runs again.
_NOT_THE_CELLS_FAULT = ("killed", "interrupted", INTERNAL_ERROR)


def requeue_killed_grid_cells(study: optuna.Study) -> int:
    """Queue once more, when a sweep starts, the grid cells whose every attempt was killed,
    interrupted or failed by sweeplab's own error (none finished, failed on its own, or is queued
    or running), so that a rerun completes the grid: a rerun is the user's word that the cell
    should run. (Within a run a killed trial is retried once, by :class:`KilledTrials`; a cell
    whose trial fails on its own is not run again.) Returns how many were queued."""
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


#: The ``fail_reason`` of a queued grid cell that another trial ran.
DUPLICATE = "duplicate: another trial ran this grid cell"


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
