"""The bridge from a trainer's evaluations to MLflow (curve points), Optuna (pruning) and the
observer (progress): the :class:`~sweeplab.core.Reporter` a task's ``fit`` is handed.

It runs inside the trainer's call, so its work is marked as sweeplab's own
(:func:`~sweeplab.boundary.engine_code`): an error there stops the sweep, whatever the trainer
does with it. A metric name MLflow cannot take is the trainer's input, refused
(:func:`~sweeplab.boundary.refuse`): its trial fails, and the sweep stops with that line.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from sweeplab.boundary import engine_code, refuse
from sweeplab.errors import UsageError
from sweeplab.sweeps.observer import SweepObserver
from sweeplab.tracker.runs import TrialRecorder, metric_name_problem
from sweeplab.tracker.tags import RESUMED_FROM

__all__ = ["TrialReporter", "with_log_lr"]


def with_log_lr(metrics: Mapping[str, float]) -> Mapping[str, float]:
    """``metrics`` with ``lr_log10`` beside a positive ``lr``: a learning rate of 5e-5 draws as a
    flat 0 on the linear axis of MLflow's charts; its log10 (-4.3) reads at a glance."""
    lr = metrics.get("lr")
    if lr is None or not lr > 0 or "lr_log10" in metrics:
        return metrics
    return {**metrics, "lr_log10": math.log10(lr)}


class TrialReporter:
    """One trial's reporter: logs each evaluation on the trial's run, shows it, and reports the
    task's ``metric`` to Optuna, which may prune (``prune``: the sweep's pruner can). ``deadline``
    (``time.monotonic()``) is the sweep's time budget, after which the trial stops."""

    def __init__(self, trial: optuna.Trial, run: TrialRecorder, observer: SweepObserver, metric: str, prune: bool,
                 config: Mapping[str, Any], deadline: float | None = None) -> None:
        self.trial, self.run, self.observer, self.metric, self.prune = trial, run, observer, metric, prune
        self.config, self.deadline = config, deadline
        self.evaluations = 0
        self.rounds = 0

    def out_of_time(self) -> bool:
        """Whether the sweep's time budget is spent, at an evaluation that is not the trial's last
        (a trial that ran every round is complete, not stopped)."""
        last = 0 < self.rounds <= self.evaluations
        return self.deadline is not None and not last and time.monotonic() >= self.deadline

    def on_resume(self, history: list[dict[str, float]], step: float) -> None:
        """This attempt goes on from an earlier one's resume state, saved at ``step``: the run
        gets the curve up to there (each step once: the attempt logs only what comes after) and
        the tag ``sweeplab.resumed_from`` with the step; Optuna already holds those evaluations
        (the retry inherits them), so the next one is reported as the one after."""
        for point in history:
            self.run.log_point(int(point["step"]), with_log_lr({k: v for k, v in point.items() if k != "step"}))
        self.run.set_tags({RESUMED_FROM: f"{step:.6g}"})
        if history:
            self.observer.evaluated(self.trial.number, int(history[-1]["step"]), history[-1])
        self.evaluations = len(history)

    def attach(self, path: Path, artifact_dir: str) -> None:
        """Log the file ``path`` on the trial's run under ``artifact_dir`` (a command's output)."""
        with engine_code():
            self.run.log_file(path, artifact_dir)

    def on_start(self, rounds: int) -> None:
        with engine_code():
            self.rounds = rounds
            self.observer.trial_started(self.trial.number, self.config, rounds)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        bad = next(((name, why) for name in metrics if (why := metric_name_problem(name))), None)
        if bad is not None:  # the trainer's input: its trial fails, and the sweep stops with this line
            refuse(UsageError(f"reported metric {bad[0]!r}: {bad[1]}"))
        with engine_code():
            return self._on_eval(step, metrics)

    def _on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.run.log_point(step, with_log_lr(metrics))
        self.observer.evaluated(self.trial.number, step, metrics)
        self.evaluations += 1
        value = metrics.get(self.metric, math.nan)
        if not self.prune or not math.isfinite(value) or 0 < self.rounds <= self.evaluations:
            return False  # pruning at the last evaluation would save nothing and only relabel the trial
        # Optuna hears the evaluation's index (1, 2, ...), not the curve's step: trials with other
        # batch sizes evaluate at other optimizer steps, and the pruner compares trials at equal
        # keys; its warm-up then counts evaluations for every task. A retry holds the evaluations
        # its killed attempt made (one trial to the pruner); those it makes again after going on
        # from an earlier save are the same ones, which Optuna keeps and ignores here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            self.trial.report(value, self.evaluations)
        return self.trial.should_prune()
