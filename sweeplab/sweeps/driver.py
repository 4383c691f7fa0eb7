"""The Optuna driver: one study per sweep, one MLflow child run per trial.

Path of one trial: Optuna suggests a configuration from the space -> the tracker opens a child
run under the sweep's parent run -> the task's trainer fits, and after every evaluation the
reporter logs the curve point and reports the task metric to Optuna (which may prune) -> the
tracker summarises the finished curve (best evaluation, overfitting onset), logs the summary and
artifacts -> the objective returns the metric at the best evaluation, not the last one.

Everything a user can get wrong (task, data, space, flags) is checked before the store is touched,
so a bad command writes nothing. The study and the parent run are found again by name, so the
same command run again resumes: ``--trials N`` is the number of finished (complete or pruned)
trials the study should hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from optuna.trial import TrialState

from sweeplab.core import Evaluation, FitResult, Loaded, Task, TrialEnv, direction_of
from sweeplab.datasets.cache import PrepCache
from sweeplab.errors import InternalError, SweepFailed, Unreachable, UsageError
from sweeplab.sweeps.limits import check_space
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.loops import Abandoned, Finished, enqueue_grid_cells, recover, search, still_ours
from sweeplab.sweeps.recovery import (
    INTERNAL_ERROR,
    OUTCOMES,
    KilledTrials,
    close_runs_of_ended_trials,
    outcome,
    process_ended,
    requeue_killed_grid_cells,
    worker_attrs,
)
from sweeplab.sweeps.sharing import Card, device_label, out_of_gpu_memory
from sweeplab.sweeps.space import Space, load_space
from sweeplab.sweeps.storage import open_optuna_storage
from sweeplab.sweeps.workers import run_workers
from sweeplab.tasks import get_task, spec_name
from sweeplab.tracker import plots
from sweeplab.tracker.curves import OnsetRule
from sweeplab.tracker.embedded import ensure_tracking_db
from sweeplab.tracker.preflight import check_store
from sweeplab.tracker.provenance import provenance_tags
from sweeplab.tracker.reconnect import bound_http_retries
from sweeplab.tracker.note import NOTE, comparison_link, sweep_note
from sweeplab.tracker.query import best_trials, sweep_trials
from sweeplab.tracker.runs import SweepRecorder, TrialRecorder, metric_name_problem
from sweeplab.tracker.tags import DEVICE, DIRECTION, METRIC, RETRY_OF, SPEC, TARGET
from sweeplab.tracker.store import Store, quiet_libraries, resolve_store
from sweeplab.tracker.summary import TrialSummary, summarise
from sweeplab.trainers.device import freeze_long_lived, memory_now, peak_memory, pick_device, release_memory, reset_peak_memory
from sweeplab.trainers.metrics import per_class_report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["SweepObserver", "SweepOutcome", "run_sweep"]

PARENT_RUN = "sweeplab.parent_run_id"  # study user attribute: the sweep's MLflow parent run
PRUNER = "sweeplab.pruner"  # study user attribute: the pruner the sweep runs with
CREATOR = "sweeplab.creator"  # study user attribute: the process that created the study (recovery.worker_attrs)


class SweepObserver(Protocol):
    """Hears the sweep's progress (the CLI renders it with rich; tests may record it)."""

    def sweep_started(self, study: str, total: int, done: int) -> None: ...

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        """A trial's training begins; ``rounds`` evaluations are planned."""

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None: ...

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None: ...

    # Optional: ``preparing(label, total)``, a context for one data preparation (decoding,
    # tokenising, feature extraction) that gives the function counting its items
    # (:data:`sweeplab.datasets.cache.Preparing`); an observer without it shows none.


class _Silent:
    def sweep_started(self, study: str, total: int, done: int) -> None:
        pass

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        pass

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        pass


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


def _with_metric(task: Task, metric: str | None) -> Task:
    """The task judged by another validation metric (``--metric val_f1_macro``): it picks each
    trial's best evaluation, its value and the best trial; its direction follows
    :func:`~sweeplab.tracker.curves.direction_of`."""
    if metric is None or metric == task.metric:
        return task
    if not task.open and not metric.startswith("val_"):
        raise UsageError(f"--metric {metric}: expected a validation metric such as val_accuracy, val_f1_macro or val_loss")
    return replace(task, metric=metric, direction=direction_of(metric))


def _parse_override(task: Task, key: str, value: Any) -> Any:
    """Coerce a ``--set key=value`` string to the type of the task's default; for a parameter an
    open task does not declare, read it as a TOML value (``3``, ``0.1``, ``true``, ``"a"``), else
    as the string itself."""
    if task.open and key not in task.defaults:
        if not isinstance(value, str):
            return value
        if value in ("True", "False"):  # Python's spelling of TOML's true / false
            return value == "True"
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
    if key not in task.defaults:
        raise UsageError(f"--set {key}: unknown parameter for task {task.name} (known: {', '.join(sorted(task.defaults))})")
    default = task.defaults[key]
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise UsageError(f"--set {key}={value}: expected a {type(default).__name__}") from None
    return value


def _sampler(options: SweepOptions, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``--sampler`` names, seeded with ``seed`` (see :func:`_sampler_seed`)."""
    if options.search.sampler == "grid":
        # A grid is a queue of its cells (see enqueue_grid_cells), each with every parameter fixed;
        # Optuna's GridSampler repeats cells under parallel workers and fails on re-queued ones.
        space.grid_cells()  # a continuous range without grid values: a one-line error, before the store is touched
        return optuna.samplers.RandomSampler(seed=seed)
    if options.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # A space with parameters of one model family only is searched with the multivariate, grouped
    # TPE: it models each family's parameters jointly, from the trials where they were sampled.
    with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna 5, and well used
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, options.search.trials // 4)),
                                          multivariate=space.conditional, group=space.conditional)


def _sampler_seed(seed: int, created: bool, trials: int) -> int:
    """The seed of this process's sampler: ``--seed`` itself in the process that creates the
    study, so that one process started from scratch proposes the same configurations every time.
    A process that joins the study (started with the same command at the same moment, on this
    machine or another, a ``--workers`` worker, or a rerun) mixes in its host name, its pid and
    the number of trials the study holds, so that it does not propose the configurations the
    first process proposed (a wasted trial each)."""
    if created:
        return seed
    mixed = hashlib.sha256(f"{seed}:{socket.gethostname()}:{os.getpid()}:{trials}".encode()).digest()
    return int.from_bytes(mixed[:4], "little")


def _planned_evaluations(space: Space, defaults: Mapping[str, Any]) -> int | None:
    """The most evaluations a trial of ``space`` can make when it evaluates once per epoch: the
    largest ``epochs`` the space can give; ``None`` when evaluations are counted in optimizer
    steps (``eval_every``) or the task has no ``epochs``."""
    every = space.params.get("eval_every") or space.fixed.get("eval_every", defaults.get("eval_every", 0))
    param = space.params.get("epochs")
    known = {**defaults, **space.fixed}
    if every or ("epochs" not in known and param is None):
        return None
    if param is None:
        return int(known["epochs"])
    return int(max(v for v in (param.high, *param.choices, *param.grid) if v is not None))


def _pruner_name(options: SweepOptions, recorded: str | None) -> str:
    """The pruner of a sweep: the one ``--pruner`` names; else the one the study was started with
    (a resumed sweep keeps its rules); else ``none`` for a grid, whose cells each run their full
    epochs as the report's did, and ``hyperband`` for sampled searches: with TPE it matched the
    median pruner's best in fewer epochs (``benchmarks/search_efficiency.py``)."""
    return options.search.pruner or recorded or ("none" if options.search.sampler == "grid" else "hyperband")


def _pruner(options: SweepOptions, space: Space, defaults: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner ``--pruner`` names. Every pruner hears the trial's evaluation index (1, 2, ...;
    see _Reporter), so a rung or a warm-up is counted in evaluations for every task.

    * ``median``: a trial is "far behind" when its metric is below the median of earlier trials at
      the same evaluation, judged after 3 finished trials and from the 3rd evaluation on.
    * ``asha``: asynchronous successive halving (Li et al. 2020): at rungs of 1, 3, 9...
      evaluations a trial goes on only if it is in the best third of the trials that reached the
      rung.
    * ``hyperband`` (Li et al. 2018): several successive-halving brackets, from aggressive (first
      rung at 1 evaluation) to none, between 1 evaluation and the most a trial of the space can
      make (found from the first finished trial when that is not known from the space).
    """
    if options.search.pruner == "none":
        return optuna.pruners.NopPruner()
    if options.search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if options.search.pruner == "hyperband":
        most = _planned_evaluations(space, defaults)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=most if most and most > 1 else "auto",
                                              reduction_factor=3)
    if options.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
    raise ValueError(f"unknown pruner {options.search.pruner!r}")


class _EngineFault(Exception):
    """An error of sweeplab's own while a trainer ran (logging a curve point, reporting to
    Optuna), carried through the trainer's code so that it is not taken for the trainer's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class _TrainerFailed(Exception):
    """What the trainer raised (``error``), told apart from sweeplab's own errors."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _RetryAlone(Exception):
    """A trial ran out of GPU memory on a card it shared with other workers: its run (``run_id``)
    is closed as killed, and the trial runs once more alone on the card (see
    :mod:`sweeplab.sweeps.sharing`)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def with_log_lr(metrics: Mapping[str, float]) -> Mapping[str, float]:
    """``metrics`` with ``lr_log10`` beside a positive ``lr``: a learning rate of 5e-5 draws as a
    flat 0 on the linear axis of MLflow's charts; its log10 (-4.3) reads at a glance."""
    lr = metrics.get("lr")
    if lr is None or not lr > 0 or "lr_log10" in metrics:
        return metrics
    return {**metrics, "lr_log10": math.log10(lr)}


class _Reporter:
    """Bridges the trainer's evaluations to MLflow (curve points), Optuna (pruning) and the
    observer (progress)."""

    def __init__(self, trial: optuna.Trial, run: TrialRecorder, observer: SweepObserver, metric: str, prune: bool,
                 config: Mapping[str, Any]) -> None:
        self.trial, self.run, self.observer, self.metric, self.prune = trial, run, observer, metric, prune
        self.config = config
        self.evaluations = 0
        self.rounds = 0
        self.error: Exception | None = None  # what on_eval raised, kept in case the trainer swallowed it

    def on_start(self, rounds: int) -> None:
        self.rounds = rounds
        self.observer.trial_started(self.trial.number, self.config, rounds)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        bad = next(((name, why) for name in metrics if (why := metric_name_problem(name))), None)
        if bad is not None:  # the trainer's input: a one-line error that stops the sweep
            self.error = UsageError(f"reported metric {bad[0]!r}: {bad[1]}")
            raise self.error
        try:
            return self._on_eval(step, metrics)
        except (Unreachable, KeyboardInterrupt):
            raise
        except Exception as exc:  # sweeplab's, not the trainer's: the trainer passes it on
            self.error = _EngineFault(exc)
            raise self.error from exc

    def _on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.run.log_point(step, with_log_lr(metrics))
        self.observer.evaluated(self.trial.number, step, metrics)
        self.evaluations += 1
        value = metrics.get(self.metric, math.nan)
        if not self.prune or not math.isfinite(value) or 0 < self.rounds <= self.evaluations:
            return False  # pruning at the last evaluation would save nothing and only relabel the trial
        # Optuna hears the evaluation's index (1, 2, ...), not the curve's step: trials with other
        # batch sizes evaluate at other optimizer steps, and the pruner compares trials at equal
        # keys; its warm-up then counts evaluations for every task.
        self.trial.report(value, self.evaluations)
        return self.trial.should_prune()


#: How PyTorch's CPU allocator words a failed allocation (a RuntimeError, not OutOfMemoryError).
_HOST_OOM = "can't allocate memory"


def _failure_reason(exc: BaseException) -> str:
    """The ``fail_reason`` of a trial that raised ``exc``: the exception's type and first line,
    prefixed with ``out of memory:`` when the GPU (``torch.OutOfMemoryError``) or the host
    (``MemoryError``, or the CPU allocator's RuntimeError) ran out, so that such trials can be
    found by a query and told apart from bugs."""
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or _HOST_OOM in text:
        return f"out of memory: {reason}"
    return reason


def _drop_locals(exc: BaseException) -> None:
    """Clear the local variables of the finished frames in ``exc``'s traceback (and those of the
    exceptions it chains), so that a failed trial's model and batches are freed even when
    something keeps the exception: a log handler holding the record Optuna logs, or a notebook's
    last traceback. The text of the traceback is kept."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


class _Objective:
    """One call is one trial; see the module docstring for the path it takes."""

    def __init__(self, checked: _Checked, env: TrialEnv, recorder: SweepRecorder, observer: SweepObserver, staging: Path) -> None:
        self.task, self.space, self.loaded, self.options, self.rule = (checked.task, checked.space, checked.loaded,
                                                                        checked.options, checked.rule)
        self.env, self.recorder, self.observer, self.staging = env, recorder, observer, staging
        self.errors_log = checked.store.root / "logs" / "errors.log"  # tracebacks of sweeplab's own errors (InternalError)
        self.best: float | None = None
        self.stop_error: UsageError | InternalError | None = None
        self.calls = 0  # trials this process started
        self.card = Card.of_this_worker(checked.store.root / "locks")  # several workers on one GPU (--gpus)

    def _majority(self) -> dict[str, float]:
        """``val_majority_accuracy`` (see :class:`~sweeplab.core.Loaded`) for classification tasks,
        on every trial's run, so that a query for the best trial also says how far it is above
        always answering the most frequent class."""
        return {} if self.loaded.majority is None else {"val_majority_accuracy": self.loaded.majority}

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.task.direction == "maximize" else value < self.best

    def __call__(self, trial: optuna.Trial) -> Finished:
        for key, value in worker_attrs().items():  # first: a kill after this point is found by its process
            trial.set_user_attr(key, value)
        self.calls += 1
        try:
            with self.card.beside_others():
                return self._attempt(trial, may_retry=self.card.shared)
        except _RetryAlone as retry:
            first_run = retry.run_id
        # Out of the handler, the first attempt's frames and the memory they held are gone.
        with self.card.alone(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored")  # the first run's evaluations, told again
            return self._attempt(trial, may_retry=False, retry_of=first_run)

    def _attempt(self, trial: optuna.Trial, may_retry: bool, retry_of: str | None = None) -> Finished:
        """Run the trial once, in a child run of its own; ``may_retry``: an out-of-GPU-memory
        error closes the run as killed and raises :class:`_RetryAlone` instead of failing the
        trial; ``retry_of``: the run of the attempt this one repeats."""
        release_memory()  # whatever the previous trial (or a failed one's traceback) kept alive
        device = self.env.device
        at_start = {f"{k}_start": v for k, v in memory_now(device).items()}  # flat from trial to trial: nothing leaks
        reset_peak_memory(device)
        config = {**self.task.defaults, **self.space.suggest(trial)}
        tags = {"sweeplab.sampler": self.options.search.sampler, "sweeplab.space": self.space.name,
                DEVICE: device_label(device), "sweeplab.compile": str(self.env.compile).lower()}
        if retry_of is not None:
            tags[RETRY_OF] = retry_of
        inactive = self.space.inactive(config)  # another family's settings: the trainer ignores them
        params = {**{k: v for k, v in config.items() if k not in inactive}, **self.rule.as_params(), "seed": self.options.search.seed}
        run = self.recorder.start_trial(trial.number, params, tags, self.options.tracking.flush_seconds)
        try:
            run.log_summary({**at_start, **self._majority()}, {})
            trial.set_user_attr("mlflow_run_id", run.run_id)
            env = replace(self.env, trial_seed=self.options.search.seed * 100_003 + trial.number)
            reporter = _Reporter(trial, run, self.observer, self.task.metric, self.options.search.pruner != "none", config)
            result = self._fit(config, env, reporter)
            summary = summarise(result.history, self.task.metric, self.task.direction, self.rule, self.task.x_axis)
            if summary.value is None:
                raise _TrainerFailed(RuntimeError(f"no finite {self.task.metric} in any evaluation"))
            state = "pruned" if result.stopped == "pruned" else "complete"
            stop = {"sweeplab.stopped": result.stopped or "none"}
            if result.stop_reason:
                stop["sweeplab.stop_reason"] = result.stop_reason
            run.log_summary({**summary.metrics, **peak_memory(device)}, {**summary.tags, **stop})
            self._artifacts(run, config, result, summary, state)
        except Unreachable as exc:
            # The trial stays RUNNING in Optuna (it cannot be told); the next start of the sweep
            # fails it as killed and runs its parameters again.
            with contextlib.suppress(Unreachable):
                run.close("killed", f"interrupted: {exc}")
            self.observer.trial_finished(trial.number, "killed", None, self.best)
            raise
        except KeyboardInterrupt:
            if still_ours(trial):
                trial.set_user_attr("fail_reason", "interrupted")
                run.close("killed", "interrupted")
            self.observer.trial_finished(trial.number, "killed", None, self.best)
            raise
        except Exception as caught:
            exc = caught.error if isinstance(caught, _TrainerFailed) else caught
            _drop_locals(exc)
            if not still_ours(trial):  # reporting to a trial another process failed raised
                raise Abandoned(run) from None
            if isinstance(caught, _TrainerFailed):
                reason = _failure_reason(exc)
                if isinstance(exc, UsageError):  # bad input (a missing model...): stop the sweep
                    self.stop_error = exc  # the search loop raises it after this trial
            else:  # sweeplab's own error: every later trial would meet it too
                reason = f"{INTERNAL_ERROR}: {_failure_reason(exc)}"
                self.stop_error = self._internal_error(trial, exc)
            retry = may_retry and isinstance(caught, _TrainerFailed) and out_of_gpu_memory(exc)
            if not retry:
                trial.set_user_attr("fail_reason", reason)
            try:
                run.log_summary(peak_memory(device), {})  # how far an out-of-memory trial got
            except Unreachable:
                raise
            except Exception:  # what failed may be the buffered points themselves: the run still closes
                run.discard_points()
            if retry:  # the card's other trials may have held the memory it lacked
                run.close("killed", self.card.retry_note(reason))
                raise _RetryAlone(run.run_id) from None
            run.close("failed", reason)
            self.observer.trial_finished(trial.number, "failed", None, self.best)
            raise exc from None
        if state == "complete" and self._better(summary.value):
            self.best = summary.value
        self.observer.trial_finished(trial.number, state, summary.value, self.best)
        return Finished(summary.value, state == "pruned", run)

    def _fit(self, config: Mapping[str, Any], env: TrialEnv, reporter: _Reporter) -> FitResult:
        """The task's fit; what it raises is wrapped in :class:`_TrainerFailed`, except sweeplab's
        own errors met inside it (:class:`_EngineFault`), an outage and an interruption."""
        try:
            result = self.task.fit(self.loaded, config, env, reporter)
        except _EngineFault as fault:
            raise fault.error from fault
        except (Unreachable, InternalError):
            raise
        except Exception as exc:
            raise _TrainerFailed(exc) from exc
        if isinstance(reporter.error, _EngineFault):  # the trainer caught what reporting raised and went on
            raise reporter.error.error
        if reporter.error is not None:
            raise _TrainerFailed(reporter.error)
        return result

    def _internal_error(self, trial: optuna.Trial, exc: Exception) -> InternalError:
        """Append the traceback of sweeplab's own error in ``trial`` to the store's error log;
        returns the one-line error that stops the sweep."""
        number = trial.number
        self.errors_log.parent.mkdir(parents=True, exist_ok=True)
        with self.errors_log.open("a", encoding="utf-8") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} study {trial.study.study_name} trial {number}\n")
            out.write("".join(traceback.format_exception(exc)))
        return InternalError(f"trial {number}: sweeplab failed while recording it ({_failure_reason(exc)}); "
                             f"traceback in {self.errors_log}; the same command resumes the sweep")

    def _artifacts(self, run: TrialRecorder, config: Mapping[str, Any], result: FitResult, summary: TrialSummary, state: str) -> None:
        x_axis = self.task.x_axis
        run.log_dict({"task": self.task.name, "config": dict(config), "onset_rule": self.rule.as_params()}, "config.json")
        if self.options.tracking.plots:
            fig = plots.curves_figure(result.history, summary, self.task.metric, x_axis, self.loaded.majority)
            run.log_figure(fig, "curves.png")
            plots.close(fig)
        if "y_true" in result.outputs:
            where = f"validation, best {x_axis} {result.history[summary.best]['step']:g}"
            _log_class_outputs(run, result.outputs, self.loaded.class_names, where, "", self.options.tracking.plots)
        keep = self.options.tracking.checkpoints == "all" or (
            self.options.tracking.checkpoints == "best" and state == "complete" and self._better(summary.value)
        )
        if not keep:
            return
        tags = {}
        if result.state is not None:
            tags["sweeplab.checkpoint"] = self._log_checkpoint(run, config, result, summary)
        if result.predictions is not None and self.task.format_predictions is not None:
            tags["sweeplab.predictions"] = run.log_text(
                self.task.format_predictions(result.predictions), "predictions/test_predictions.txt"
            )
        if tags:
            run.set_tags(tags)

    def _log_checkpoint(self, run: TrialRecorder, config: Mapping[str, Any], result: FitResult, summary: TrialSummary) -> str:
        """Log the state kept at the best evaluation under ``checkpoint/``: in the task's own format
        when it has one (a ``save_pretrained`` folder...), else ``model.pt`` holding the state dict
        with its config and best step. Returns the artifact URI of the folder or the file."""
        folder = self.staging / "checkpoint"
        folder.mkdir()
        try:
            if self.task.save_checkpoint is not None:
                self.task.save_checkpoint(self.loaded, config, result.state, folder)
                return run.log_folder(folder, "checkpoint")
            try:
                torch.save({"state_dict": result.state, "config": dict(config), "task": self.task.name,
                            "best_step": result.history[summary.best]["step"]}, folder / "model.pt")
            except (pickle.PicklingError, AttributeError, TypeError) as exc:  # a state the trainer gave that cannot be saved
                raise _TrainerFailed(exc) from exc
            return run.log_file(folder / "model.pt", "checkpoint")
        finally:
            shutil.rmtree(folder)


def _log_class_outputs(run: TrialRecorder, outputs: Mapping[str, Any], class_names: tuple[str, ...], where: str,
                       prefix: str, figures: bool) -> None:
    """The per-class report (JSON and text) and the confusion matrix of one set of predictions."""
    if not class_names:
        return
    as_dict, as_text = per_class_report(outputs["y_true"], outputs["y_pred"], class_names)
    run.log_dict(as_dict, f"{prefix}classification_report.json")
    run.log_text(f"{where}\n\n{as_text}", f"{prefix}classification_report.txt")
    if figures:
        fig = plots.confusion_figure(outputs["y_true"], outputs["y_pred"], class_names, where)
        run.log_figure(fig, f"{prefix}confusion_matrix.png")
        plots.close(fig)


def _settings(task: Task, space: Space, options: SweepOptions, data_dir: Path | None) -> dict[str, str]:
    """What makes trials of one study comparable: a resumed study must have been made with the
    same task, data, split, seed and space (searched ranges and fixed values)."""
    return {
        "task": task.name,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else "",
        "seed": str(options.search.seed),
        "split_seed": str(options.search.split_seed),
        "val_fraction": str(options.search.val_fraction),
        "metric": f"{task.metric} ({task.direction})",
        "search": repr(sorted((k, v.signature()) for k, v in space.params.items())),
        "fixed": repr(sorted((k, repr(v)) for k, v in space.fixed.items())),
    }


def _check_same_settings(study: optuna.Study, settings: Mapping[str, str]) -> None:
    """Record the settings on a new study; refuse to resume one made with other settings."""
    previous = study.user_attrs.get("sweeplab.settings")
    if previous is None:
        study.set_user_attr("sweeplab.settings", dict(settings))
        return
    differ = [key for key in settings if previous.get(key, settings[key]) != settings[key]]  # absent: made before the key
    if differ:
        raise UsageError(
            f"study {study.study_name!r} was made with other settings ({', '.join(differ)} "
            f"{'differs' if len(differ) == 1 else 'differ'}); "
            "pass --study NAME to start a new sweep, or repeat the original command to resume it"
        )


def _score_best_on_test(study: optuna.Study, task: Task, loaded: Loaded, env: TrialEnv, recorder: SweepRecorder,
                        staging: Path, figures: bool) -> tuple[dict[str, float] | None, str | None]:
    """Score the best trial's checkpoint on the test split, once: the figures (``test_accuracy``
    ...) go on its child run and on the parent run. Returns them, or ``None`` and why not.

    Only the best trial is scored, after the search, so the test split never takes part in a
    choice; a rerun that finds the same best trial already scored reuses the figures."""
    if task.evaluate_test is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, None
    best = study.best_trial
    run_id = str(best.user_attrs.get("mlflow_run_id", ""))
    if not run_id:
        return None, f"trial {best.number} has no MLflow run to score"
    run = recorder.trial(run_id)
    stored = run.stored().data
    scored = {k: v for k, v in stored.metrics.items() if k.startswith("test_")}
    if not scored:
        if "sweeplab.checkpoint" not in stored.tags:
            recorder.log_summary({}, {"sweeplab.test_trial": f"none (best trial {best.number} kept no checkpoint)"})
            return None, f"trial {best.number} kept no checkpoint (--checkpoints none), so the test split was not scored"
        folder = run.download("checkpoint", staging)
        config = json.loads(run.download("config.json", staging).read_text(encoding="utf-8"))["config"]
        evaluation: Evaluation | None = task.evaluate_test(loaded, config, folder, env)
        if evaluation is None:
            return None, "the data has no test split"
        scored = {k: v for k, v in evaluation.metrics.items() if math.isfinite(v)}
        run.log_summary(scored, {"sweeplab.test_scored": "checkpoint"})
        _log_class_outputs(run, evaluation.outputs, loaded.class_names,
                           f"test split, checkpoint of trial {best.number}", "test_", figures)
    recorder.log_summary(scored, {"sweeplab.test_trial": str(best.number)})
    return scored, None


def _open_study(storage: optuna.storages.BaseStorage, name: str, pruner: optuna.pruners.BasePruner,
                direction: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when an earlier run or another machine made it; also says
    whether this process created it. The storage lets exactly one process create a study name, and
    that process alone makes the sweep's parent run: machines started at the same moment would
    otherwise each make one."""
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection[direction.upper()]], name)
        storage.set_study_user_attr(study_id, CREATOR, worker_attrs())  # who to wait for (see _recorded_parent)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    return optuna.load_study(study_name=name, storage=storage, pruner=pruner), created


def _recorded_parent(study: optuna.Study, seconds: float) -> str | None:
    """The parent run the study records, waiting up to ``seconds`` for the process that created
    the study (started at the same moment, on another machine) to record it; None if it never does
    (it was killed first), and then the parent run is found by its tags or made. A creator that
    ran on this machine and has ended (a first start killed early) is not waited for."""
    deadline = time.monotonic() + seconds
    while True:
        attrs = study.user_attrs
        run_id = attrs.get(PARENT_RUN)
        if run_id or time.monotonic() >= deadline or process_ended(attrs.get(CREATOR)):
            return run_id
        time.sleep(0.5)


#: How long a process that found the study made waits for its creator to record the parent run.
_PARENT_WAIT_SECONDS = 60.0


def _counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by outcome, in the words ``sweep status`` uses (see
    :func:`~sweeplab.sweeps.recovery.outcome`); queued grid cells that another trial ran are not
    counted."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for trial in study.get_trials(deepcopy=False):
        word = outcome(trial)
        if word in counts:
            counts[word] += 1
    return counts


def _close_sweep(study: optuna.Study, recorder: SweepRecorder, status: str, stopped_by: Unreachable | None,
                 describe: Callable[[Mapping[str, int]], str] | None = None,
                 draw: Callable[[], None] | None = None) -> dict[str, int]:
    """Log the sweep's counts and best trial on its parent run, with its description
    (``describe(counts)``, see :mod:`sweeplab.tracker.note`) and its pictures (``draw()``, not
    when interrupted: Ctrl-C should not wait on them), and close it with ``status``;
    FAILED when no trial finished and some failed. A store that stopped answering
    (``stopped_by``, or now) is skipped: the parent run keeps what it had, and the next start of
    the sweep writes it. Returns the counts (empty when the storage is away)."""
    try:
        counts = _counts(study)
        best = study.best_trial if counts["complete"] else None
    except Unreachable:
        if stopped_by is None:  # the storage went away just now: say so, after closing what can be closed
            with contextlib.suppress(Unreachable):
                recorder.close(status)
            raise
        counts, best = {}, None
    summary = {f"trials_{k}": float(v) for k, v in counts.items()}
    tags = {}
    if best is not None:
        summary["best_value"] = float(best.value)
        tags["sweeplab.best_trial"] = str(best.number)
        tags["sweeplab.best_run_id"] = str(best.user_attrs.get("mlflow_run_id", ""))
    if counts and counts["complete"] + counts["pruned"] == 0 and counts["failed"]:
        status = "FAILED"
    if stopped_by is not None:
        tags["sweeplab.stop_reason"] = str(stopped_by)
    try:
        note = _described(describe, counts) if describe is not None and counts else None
        if note is not None:
            tags[NOTE] = note
        recorder.log_summary(summary, tags)
        try:
            if draw is not None and counts and status != "KILLED":
                _drawn(draw)
        finally:  # a Ctrl-C while drawing still closes the parent run
            recorder.close(status)
    except Unreachable:
        if stopped_by is None:  # the sweep's end could not be recorded: say so (the same command records it)
            raise
    return counts


def _described(describe: Callable[[Mapping[str, int]], str], counts: Mapping[str, int]) -> str | None:
    """The sweep's description, or ``None`` when it cannot be made now (the store is away, a
    query failed): the sweep's records stand without it, and the parent run keeps the one it had."""
    try:
        return describe(counts)
    except Exception as exc:  # Unreachable included: closing the sweep must not wait on its description
        logging.getLogger(__name__).warning("could not describe the sweep on its parent run: %s", exc)
        return None


def _drawn(draw: Callable[[], None]) -> None:
    """Draw the sweep's pictures; a failure is a warning: the sweep's records stand without them."""
    try:
        draw()
    except Exception as exc:  # Unreachable included, as for the description
        logging.getLogger(__name__).warning("could not draw the sweep's pictures on its parent run: %s", exc)


def _drawer(recorder: SweepRecorder, tracking_uri: str) -> Callable[[], None]:
    """What draws the sweep's pictures on its parent run (``sweep/*.png``, see
    :mod:`sweeplab.tracker.sweep_plots`), from the store, as ``sweep report`` reads them."""

    def draw() -> None:
        from sweeplab.tracker.plots import close
        from sweeplab.tracker.report import FOLDER, PICTURES, signature
        from sweeplab.tracker.sweep_plots import sweep_figures

        sweep = sweep_trials(tracking_uri, parent_run_id=recorder.parent_run_id)
        if sweep is None:
            return
        figures = sweep_figures(sweep)
        try:
            for name, figure in figures.items():
                recorder.log_figure(figure, f"{FOLDER}/{name}.png")
        finally:
            for figure in figures.values():
                close(figure)
        recorder.log_summary({}, {PICTURES: signature(sweep)})  # what they show: sweep report redraws others

    return draw


def _describer(task: Task, space: Space, options: SweepOptions, data_dir: Path | None, recorder: SweepRecorder,
               tracking_uri: str, study_name: str) -> Callable[[Mapping[str, int]], str]:
    """What the parent run's description says (see :func:`sweeplab.tracker.note.sweep_note`):
    the sweep's settings, and its top 5 complete trials, read back from the store."""
    rule = OnsetRule(s=options.search.onset_s, alpha=options.search.onset_alpha)
    settings = {
        "task": f"{task.name} ({task.summary})",
        "data": str(data_dir) if data_dir is not None else "read by the trainer",
        "space": str(space.path),
        "sampler": options.search.sampler,
        "pruner": str(options.search.pruner),
        "metric": f"{task.metric} ({task.direction})",
        "seed": str(options.search.seed),
        "overfitting onset": rule.name + ("; trials stop there" if options.search.early_stop else ""),
    }

    def describe(counts: Mapping[str, int]) -> str:
        rows = best_trials(tracking_uri, task.name, task.best_metric, top=5, study=study_name, direction=task.direction,
                           parent_run_id=recorder.parent_run_id)
        compare = comparison_link(recorder.experiment_id, study_name, task.best_metric, task.direction)
        return sweep_note(settings, counts, rows, recorder.experiment_id, task.x_axis, compare)

    return describe


def _start_up(study: optuna.Study, space: Space, options: SweepOptions, target: int, killed: KilledTrials,
              recorder: SweepRecorder, loaded: Loaded) -> None:
    """What the main process does once before the trials: recover the trials of killed processes
    (telling Optuna the values that finished trials could not tell it), queue a grid's cells,
    close the runs of ended trials, and log the data report, the majority baseline and the space
    file on the parent run."""
    recover(study, killed)
    if options.search.sampler == "grid":
        requeue_killed_grid_cells(study)
        enqueue_grid_cells(study, space, target, options.search.seed)
    close_runs_of_ended_trials(study, recorder)
    recorder.log_dict({"reports": [r.as_dict() for r in loaded.reports]}, "data_report.json")
    if loaded.majority is not None:
        recorder.log_summary({"val_majority_accuracy": loaded.majority}, {})
    recorder.log_file(space.path)


def _study_name(options: SweepOptions, space: Space) -> str:
    return options.search.study or f"{space.name}-{options.search.sampler}"


@dataclass(frozen=True)
class _Checked:
    """A sweep after every check, before anything is written: its options (the split seed
    resolved), task, store, space (overrides applied, widened to a grid's values), onset rule,
    device, data folder (``None``: the trainer reads its own) and data as read."""

    options: SweepOptions
    task: Task
    store: Store
    space: Space
    rule: OnsetRule
    device: torch.device
    data_dir: Path | None
    loaded: Loaded


def _check(options: SweepOptions) -> _Checked:
    """Everything a user can get wrong, checked before the store is touched: the task, the
    stores, the space against the task's limits, the sampler's arguments, the data. Nothing is
    written."""
    task = _with_metric(get_task(options.task), options.search.metric)
    store: Store = resolve_store(options.tracking.store_dir, options.tracking.tracking_uri, options.tracking.storage)
    check_store(store, options.tracking.cache_dir)  # unreachable, unwritable, unknown scheme: one line within seconds
    overrides = {k: _parse_override(task, k, v) for k, v in options.search.overrides.items()}
    if not (options.search.space or task.default_space):
        raise UsageError(f"task {task.name} has no default space: pass --space FILE.toml ([search.NAME] tables, see the README)")
    space = load_space(options.search.space or task.default_space, None if task.open else task.defaults,
                       task.name).with_overrides(overrides)
    check_space(space, task.limits, overrides)  # --set, [fixed], ranges and grid values against what the task accepts
    if options.search.sampler == "grid":
        space = space.widened_to_grid()
    _sampler(options, space, options.search.seed)  # its arguments are checked before the store is touched
    if options.search.split_seed is None:
        options = options.with_(split_seed=options.search.seed)
    device = pick_device(options.runtime.device)
    data_dir = Path(options.search.data_dir) if options.search.data_dir else task.sample_data
    loaded = task.load(data_dir, options.search.split_seed, options.search.val_fraction, {**task.defaults, **space.fixed})
    return _Checked(options, task, store, space, OnsetRule(s=options.search.onset_s, alpha=options.search.onset_alpha),
                    device, data_dir, loaded)


@dataclass(frozen=True)
class _Opened:
    """A sweep's study and parent run, made or found again; ``options`` carries the pruner the
    study runs with."""

    options: SweepOptions
    study: optuna.Study
    name: str
    killed: KilledTrials
    recorder: SweepRecorder
    experiment: str


def _open(checked: _Checked) -> _Opened:
    """Create or resume the study (refusing one made with other settings) and its parent run."""
    options, task, store, space = checked.options, checked.task, checked.store, checked.space
    study_name = _study_name(options, space)
    killed = KilledTrials(options.tracking.heartbeat)
    storage = open_optuna_storage(store.optuna_storage, options.tracking.heartbeat, killed, options.tracking.outage_limit)
    study, created = _open_study(storage, study_name, optuna.pruners.NopPruner(), task.direction)
    _check_same_settings(study, _settings(task, space, options, checked.data_dir))  # a refused resume changes nothing
    # A resumed sweep's pruner is on its study; one made before sweeplab recorded it ran with
    # the median pruner, the default then.
    recorded = study.user_attrs.get(PRUNER) or (None if created or not study.get_trials(deepcopy=False) else "median")
    pruner = _pruner_name(options, recorded)
    options = options.with_(pruner=pruner)
    sampler = _sampler(options, space, _sampler_seed(options.search.seed, created, len(study.get_trials(deepcopy=False))))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=_pruner(options, space, task.defaults))
    if study.user_attrs.get(PRUNER) != pruner:
        study.set_user_attr(PRUNER, pruner)
    experiment = options.tracking.experiment or f"sweeplab-{task.name}"
    sweep_params = {"task": task.name, "space": str(space.path), "sampler": options.search.sampler, "pruner": pruner,
                    "seed": options.search.seed, "split_seed": options.search.split_seed, "data_dir": str(checked.data_dir or ""),
                    "trials": options.search.trials, "device": str(checked.device), "precision": options.runtime.precision,
                    "compile": options.runtime.compile,
                    **checked.rule.as_params()}
    base_tags = {"sweeplab.task": task.name, "sweeplab.study": study_name, METRIC: task.metric, DIRECTION: task.direction,
                 TARGET: str(options.search.trials), **provenance_tags()}
    if ":" in options.task:  # a trainer named by its file or module: the read commands find its runs by that name
        base_tags[SPEC] = spec_name(options.task)
    if store.is_default:  # built under a temporary name and moved into place: a kill leaves no half-made store
        ensure_tracking_db(store.root / "mlflow.db", store.artifact_root)
    known_parent = study.user_attrs.get(PARENT_RUN) or (None if created else _recorded_parent(study, _PARENT_WAIT_SECONDS))
    recorder = SweepRecorder.open(store.tracking_uri, experiment, store.artifact_root, study_name, base_tags, sweep_params,
                                  known_run_id=known_parent, outage_limit=options.tracking.outage_limit)
    if study.user_attrs.get(PARENT_RUN) != recorder.parent_run_id:
        study.set_user_attr(PARENT_RUN, recorder.parent_run_id)  # later workers join this run
    killed.recorder = recorder
    return _Opened(options, study, study_name, killed, recorder, experiment)


def run_sweep(options: SweepOptions, observer: SweepObserver | None = None) -> SweepOutcome:
    """Run (or resume) a sweep until the study holds ``options.search.trials`` finished trials:
    check everything (:func:`_check`), prepare the data, open the study and its parent run
    (:func:`_open`), run this process's share of the trials (or start the workers), score the
    best on the test split and close the parent run."""
    observer = observer or _Silent()
    if options.search.timeout is not None and options.deadline is None:
        options = options.with_(deadline=time.time() + options.search.timeout)
    deadline = None if options.deadline is None else time.monotonic() + (options.deadline - time.time())
    checked = _check(options)

    # Nothing above writes anything; from here on the store exists.
    quiet_libraries()
    bound_http_retries()
    options, task, store, space, loaded = checked.options, checked.task, checked.store, checked.space, checked.loaded
    env = TrialEnv(device=checked.device, precision=options.runtime.precision,
                   cache=PrepCache(options.tracking.cache_dir or store.root / "cache", getattr(observer, "preparing", None)),
                   seed=options.search.seed,
                   trial_seed=options.search.seed, early_stop=checked.rule if options.search.early_stop else None,
                   keep_state=options.tracking.checkpoints != "none", metric=task.metric, direction=task.direction,
                   compile=options.runtime.compile)
    task.prepare(loaded, {**task.defaults, **space.fixed}, env)
    opened = _open(checked)
    checked = replace(checked, options=opened.options)
    options, study, recorder, killed = opened.options, opened.study, opened.recorder, opened.killed
    describe = _describer(task, space, options, checked.data_dir, recorder, store.tracking_uri, opened.name)
    draw = _drawer(recorder, store.tracking_uri) if options.tracking.plots else None
    worker = options.role == "worker"
    target = min(options.search.trials, len(space.grid_cells())) if options.search.sampler == "grid" else options.search.trials
    if not worker:  # start-up recovery and the grid's queue are the main process's; workers find dead trials as they go
        try:
            _start_up(study, space, options, target, killed, recorder, loaded)
        except Unreachable as exc:
            _close_sweep(study, recorder, "FAILED", exc, describe)
            raise
    report_lines = [line for r in loaded.reports for line in r.lines()]
    grid = space if options.search.sampler == "grid" else None

    freeze_long_lived()
    staging_root = store.root / "staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    if worker:
        with tempfile.TemporaryDirectory(dir=staging_root) as staging:
            objective = _Objective(checked, env, recorder, observer, Path(staging))
            search(study, objective, observer, target, killed, options.tracking.heartbeat, grid, options.search.seed, deadline)
        return SweepOutcome(opened.name, opened.experiment, recorder.parent_run_id, store.tracking_uri, _counts(study), None, None,
                            report_lines, target)
    status, stopped_by = "FAILED", None
    try:
        with tempfile.TemporaryDirectory(dir=staging_root) as staging:
            if options.runtime.workers > 1 or options.runtime.gpus:  # --gpus: each worker on its card
                worker_notes = run_workers(options, study, target, observer, store.root / "workers")
                recover(study, killed)  # the last worker killed mid-trial: its trial and its run
                close_runs_of_ended_trials(study, recorder)
            else:
                worker_notes = []
                objective = _Objective(checked, env, recorder, observer, Path(staging))
                search(study, objective, observer, target, killed, options.tracking.heartbeat, grid, options.search.seed, deadline)
            try:
                test, why_not = _score_best_on_test(study, task, loaded, env, recorder, Path(staging), options.tracking.plots)
            except Unreachable:
                raise
            except Exception as exc:  # the trials are done and kept: say why the score is missing
                test, why_not = None, f"the test split was not scored: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Unreachable as exc:
        stopped_by = exc
        raise
    finally:
        counts = _close_sweep(study, recorder, status, stopped_by, describe, draw)
    failures = [t.user_attrs.get("fail_reason", "unknown") for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if outcome(t) == "failed"]
    if counts["complete"] + counts["pruned"] == 0 and failures:
        raise SweepFailed(f"every trial failed; last reason: {failures[-1]}")
    return SweepOutcome(
        study=opened.name,
        experiment=opened.experiment,
        parent_run_id=recorder.parent_run_id,
        tracking_uri=store.tracking_uri,
        counts=counts,
        best_value=study.best_value if counts["complete"] else None,
        best_trial=study.best_trial.number if counts["complete"] else None,
        data_report=report_lines,
        target=target,
        test=test,
        notes=[*worker_notes, *([why_not] if why_not else [])],
        majority=loaded.majority,
        task=task.name,
    )
