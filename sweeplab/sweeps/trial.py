"""One trial, from a suggested configuration to its value.

Optuna suggests a configuration from the space -> the tracker opens a child run under the sweep's
parent run -> the task's trainer fits, through the trial's :class:`~sweeplab.boundary.Boundary`,
and after every evaluation the reporter logs the curve point and reports the task metric to
Optuna (which may prune) -> the tracker summarises the finished curve (best evaluation,
overfitting onset), logs the summary and artifacts -> the trial's value is the metric at the
best evaluation, not the last one.

How a trial ends is a value, not a guess from an exception type (:mod:`sweeplab.boundary`):

* :class:`Finished` -- complete or pruned, with every summary and artifact on its run;
* :class:`Failed` -- the trainer or the task's code raised (a
  :class:`~sweeplab.errors.TrainerError`): its run is closed as failed with the reason, and the
  sweep goes on (unless the error is the user's input, ``stop``);
* run again at once, in a new run (:class:`_Again`): a GPU out of memory on a card shared with
  other workers (alone on the card this time), or a resume state that no longer loads into the
  trainer (from the start this time);
* anything :class:`Objective` raises is sweeplab's own error (its run closed as failed), an
  outage (:class:`~sweeplab.errors.Unreachable`), an interruption, or
  :class:`Abandoned`; the run loop (:mod:`sweeplab.sweeps.loops`) tells
  Optuna and stops the sweep.

Each trial trains with its resume state (:mod:`sweeplab.core.resume`, kept where
:mod:`sweeplab.sweeps.resume_states` says), so that a retry of a killed or interrupted trial
(:mod:`sweeplab.sweeps.recovery`) goes on from it; the state is deleted once the trial has ended
on its own (finished, or failed by its trainer) and Optuna is told so. A stop signal while it
trains is answered at its next step (:func:`~sweeplab.sweeps.signals.stop_at_next_step`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from sweeplab.boundary import Boundary
from sweeplab.core import Resumption, TrialEnv
from sweeplab.errors import SweeplabError, TrainerError, Unreachable, UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.artifacts import log_trial_artifacts
from sweeplab.sweeps.checks import Checked
from sweeplab.sweeps.failures import drop_locals, failure_reason, internal_reason
from sweeplab.sweeps.observer import SweepObserver
from sweeplab.sweeps.processes import worker_attrs
from sweeplab.sweeps.pruners import prunes
from sweeplab.sweeps.ray_workers import NODE_ENV
from sweeplab.sweeps.reporter import TrialReporter
from sweeplab.sweeps.resume_states import AttemptsResume, resume_store
from sweeplab.sweeps.samplers import sampler_name
from sweeplab.sweeps.recovery import PREVIOUS_RUN, first_attempt
from sweeplab.sweeps.sharing import Card
from sweeplab.sweeps.signals import stop_at_next_step
from sweeplab.tracker.runs import SweepRecorder, TrialRecorder
from sweeplab.tracker.summary import summarise
from sweeplab.tracker.tags import DEVICE, GPUS, NODE, RETRIED_BY, RETRY_OF
from sweeplab.trainers.device import device_label, memory_now, peak_memory, release_memory, reset_peak_memory
from sweeplab.trainers.loop import StaleResumeState
from sweeplab.trainers.oom import out_of_memory

__all__ = ["Abandoned", "Failed", "Finished", "Objective", "still_running"]


def still_running(trial: optuna.Trial) -> bool:
    """Whether the trial is still RUNNING in the storage, so that no other process has failed it
    meanwhile."""
    storage = optuna_private.storage_of(trial.study)
    return storage.get_trial(optuna_private.trial_id(trial)).state == optuna.trial.TrialState.RUNNING


def _nothing() -> None:
    """No resume state to forget."""


@dataclass(frozen=True)
class Finished:
    """A trial that ran to its end, complete or pruned, with every summary and artifact on its
    run: the run loop tells Optuna first and closes the run after, with the same state, so that
    the run never says complete for a trial another process failed meanwhile. ``forget`` deletes
    the trial's resume state, once Optuna is told (no attempt will go on from it)."""

    value: float
    pruned: bool
    run: TrialRecorder
    forget: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Failed:
    """A trial its trainer or its task's code failed: ``reason`` is on the trial and its run
    (closed as failed); ``stop``, the user's bad input, stops the sweep once Optuna is told."""

    reason: str
    stop: SweeplabError | None = None
    forget: Callable[[], None] = _nothing  # as Finished's


@dataclass(frozen=True)
class _Again:
    """An attempt whose run (``run_id``) was closed as killed, to be run once more at once:
    ``alone`` on the card after it ran out of GPU memory on a card it shared with other workers
    (see :mod:`sweeplab.sweeps.sharing`), or from the start after its resume state no longer
    loaded."""

    run_id: str
    alone: bool


class Abandoned(Exception):
    """Another process failed this process's trial while it ran (its heartbeats looked stopped):
    that process closed the trial's run and queued its retry, so this one drops the trial."""

    def __init__(self, run: TrialRecorder | None = None) -> None:
        super().__init__()
        self.run = run


class Objective:
    """One call is one trial of the sweep ``checked`` (see the module docstring)."""

    def __init__(self, checked: Checked, env: TrialEnv, recorder: SweepRecorder, observer: SweepObserver,
                 staging: Path, deadline: float | None = None) -> None:
        self.checked, self.task, self.options = checked, checked.task, checked.options
        self.env, self.recorder, self.observer, self.staging = env, recorder, observer, staging
        self.deadline = deadline  # time.monotonic() at which the sweep's time budget is spent
        self.errors_log = checked.store.root / "logs" / "errors.log"  # tracebacks of sweeplab's own errors
        self.best: float | None = None
        self.calls = 0  # trials this process started
        self.card = Card.of_this_worker(checked.store.root / "locks")  # several workers on one GPU (--gpus)

    def __call__(self, trial: optuna.Trial) -> Finished | Failed:
        for key, value in worker_attrs().items():  # first: a kill after this point is found by its process
            trial.set_user_attr(key, value)
        self.calls += 1
        store = resume_store(self.checked, self.recorder, trial.study.study_name, optuna_private.study_id(trial.study),
                             first_attempt(trial))
        resume = AttemptsResume(store, lambda: still_running(trial))
        with self.card.beside_others():
            ended = self._attempt(trial, resume, may_retry=self.card.shared)
        while isinstance(ended, _Again):
            with self.card.alone() if ended.alone else contextlib.nullcontext():
                ended = self._attempt(trial, resume, may_retry=False, retry_of=ended.run_id)
        return replace(ended, forget=resume.delete)  # the trial ended on its own: deleted once Optuna is told

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.task.direction == "maximize" else value < self.best

    def _attempt(self, trial: optuna.Trial, resume: AttemptsResume, may_retry: bool,
                 retry_of: str | None = None) -> Finished | Failed | _Again:
        """Run the trial once, in a child run of its own, going on from ``resume`` when an
        earlier attempt saved a state there; ``may_retry``: an out-of-GPU-memory error closes
        the run as killed and asks for a retry alone on the card instead of failing the trial;
        ``retry_of``: the run of the attempt this one repeats (else the trial's previous attempt's,
        when it is a retry)."""
        release_memory()  # whatever the previous trial (or a failed one's traceback) kept alive
        device = self.env.device
        at_start = {f"{k}_start": v for k, v in memory_now(device).items()}  # flat from trial to trial: nothing leaks
        reset_peak_memory(device)
        config = {**self.task.defaults, **self.checked.space.suggest(trial)}
        run = self._start_run(trial, config, device, retry_of or trial.user_attrs.get(PREVIOUS_RUN))
        try:
            finished = self._train(trial, run, config, device, at_start, resume)
            if not finished.pruned and self._better(finished.value):
                self.best = finished.value
            self.observer.trial_finished(trial.number, "pruned" if finished.pruned else "complete", finished.value, self.best)
        except TrainerError as failed:
            return self._failed(trial, run, failed, may_retry, device, resume)
        except Unreachable as exc:
            # The trial stays RUNNING in Optuna (it cannot be told); the next start of the sweep
            # fails it as killed and runs its parameters again.
            with contextlib.suppress(Unreachable):
                run.close("killed", f"interrupted: {exc}")
            self.observer.trial_finished(trial.number, "killed", None, self.best)
            raise
        except KeyboardInterrupt:
            if still_running(trial):
                trial.set_user_attr("fail_reason", "interrupted")
                run.close("killed", "interrupted")
            self.observer.trial_finished(trial.number, "killed", None, self.best)
            raise
        except Exception as exc:  # sweeplab's own: the run loop stops the sweep
            drop_locals(exc)
            if not still_running(trial):  # reporting to a trial another process failed raised
                raise Abandoned(run) from None
            with contextlib.suppress(Exception):  # the run loop stops the sweep with the fault, not a second error
                self._close_failed(run, internal_reason(exc), device)
            with contextlib.suppress(Exception):
                self.observer.trial_finished(trial.number, "failed", None, self.best)
            raise
        return finished

    def _start_run(self, trial: optuna.Trial, config: Mapping[str, Any], device: Any, retry_of: str | None) -> TrialRecorder:
        """Open the trial's child run with its parameters (those the trainer uses) and tags."""
        options = self.options
        tags = {"sweeplab.sampler": sampler_name(options), "sweeplab.space": self.checked.space.name,
                "sweeplab.compile": str(self.env.compile).lower()}
        if not self.task.own_process:  # a command's program picks its own device
            tags[DEVICE] = device_label(device)
        if retry_of:
            tags[RETRY_OF] = retry_of
        if self.card.name is not None:
            tags[GPUS] = self.card.name
        if os.environ.get(NODE_ENV):  # a worker on a Ray node (sweep run --ray)
            tags[NODE] = os.environ[NODE_ENV]
        inactive = self.checked.space.inactive(config)  # another family's settings: the trainer ignores them
        params = {**{k: v for k, v in config.items() if k not in inactive}, **self.checked.rule.as_params(),
                  "seed": options.search.seed}
        run = self.recorder.start_trial(trial.number, params, tags, options.tracking.flush_seconds)
        if retry_of:  # status and the report count the trial once: its latest attempt
            try:
                self.recorder.trial(retry_of).set_tags({RETRIED_BY: run.run_id})
            except Unreachable:
                raise
            except Exception as exc:  # the earlier run was deleted: nothing to count twice
                logging.getLogger(__name__).warning("trial %d: could not tag its earlier run %s: %s", trial.number,
                                                    retry_of, exc)
        return run

    def _train(self, trial: optuna.Trial, run: TrialRecorder, config: Mapping[str, Any], device: Any,
               at_start: Mapping[str, float], resume: AttemptsResume) -> Finished:
        """Fit, summarise the curve and log the summary and artifacts; what the trainer's or the
        task's code raised comes out as :class:`~sweeplab.errors.TrainerError`."""
        loaded, task, options = self.checked.loaded, self.task, self.options
        majority = {} if loaded.majority is None else {"val_majority_accuracy": loaded.majority}
        run.log_summary({**at_start, **majority}, {})
        trial.set_user_attr("mlflow_run_id", run.run_id)
        env = replace(self.env, trial_seed=options.search.seed * 100_003 + first_attempt(trial),
                      resume=Resumption(resume, options.runtime.checkpoint_minutes * 60))
        reporter = TrialReporter(trial, run, self.observer, task.metric, prunes(options), config, self.deadline)
        boundary = Boundary()
        with stop_at_next_step():
            result = boundary.call("fit", task.fit, loaded, config, env, reporter)
        summary = summarise(result.history, task.metric, task.direction, self.checked.rule, result.x_axis or task.x_axis)
        if summary.value is None:
            raise TrainerError(RuntimeError(f"no finite {task.metric} in any evaluation"), "fit")
        stop = {"sweeplab.stopped": result.stopped or "none"}
        if result.stop_reason:
            stop["sweeplab.stop_reason"] = result.stop_reason
        run.log_summary({**summary.metrics, **peak_memory(device)}, {**summary.tags, **stop})
        pruned = result.stopped == "pruned"
        checkpoints = options.tracking.checkpoints
        kept = checkpoints == "all" or (checkpoints == "best" and not pruned and self._better(summary.value))
        keep = None if kept else ("--checkpoints none" if checkpoints == "none" else "pruned (--checkpoints best keeps "
                                  "complete trials)" if pruned else "not kept: --checkpoints best keeps a trial that "
                                  "beat the sweep's best when it ended")
        log_trial_artifacts(run, task, loaded, config, self.checked.rule, result, summary, options.tracking.plots, keep,
                            self.staging, boundary)
        return Finished(summary.value, pruned, run)

    @staticmethod
    def _close_failed(run: TrialRecorder, reason: str, device: Any, state: str = "failed") -> None:
        """Close a failed attempt's run with ``reason``, after its buffered points and the peak
        memory it reached (how far an out-of-memory trial got); when what failed is the writing
        itself, the points are dropped and the run still closes."""
        try:
            run.log_summary(peak_memory(device), {})
        except Unreachable:
            raise
        except Exception:
            with contextlib.suppress(Exception):
                run.discard_points()
        run.close(state, reason)

    def _failed(self, trial: optuna.Trial, run: TrialRecorder, failed: TrainerError, may_retry: bool,
                device: Any, resume: AttemptsResume) -> Failed | _Again:
        """Close the run of a trial its trainer failed, with the reason; or, as killed, asking for
        the attempt again: for a GPU out of memory on a shared card (alone), for a resume state
        that no longer loads (from the start, the state deleted)."""
        drop_locals(failed.error)
        if not still_running(trial):  # another process failed it meanwhile, and handles it
            raise Abandoned(run) from None
        reason = failure_reason(failed)
        if isinstance(failed.error, StaleResumeState) and not resume.fresh:  # once: a fresh start cannot be stale
            logging.getLogger(__name__).warning("trial %d: %s; it runs again from the start", trial.number, failed.error)
            resume.start_afresh()
            self._close_failed(run, f"killed: {failed.error}; run again from the start", device, "killed")
            return _Again(run.run_id, alone=False)
        retry = may_retry and out_of_memory(failed.error) == "gpu"
        if not retry:
            trial.set_user_attr("fail_reason", reason)
        if retry:  # the card's other trials may have held the memory it lacked
            self._close_failed(run, self.card.retry_note(reason), device, "killed")
            return _Again(run.run_id, alone=True)
        self._close_failed(run, reason, device)
        self.observer.trial_finished(trial.number, "failed", None, self.best)
        return Failed(reason, failed.error if isinstance(failed.error, UsageError) else None)
