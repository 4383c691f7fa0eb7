"""The test split, scored once after the search: the best trial's checkpoint, by the task's
own ``evaluate_test`` (called through a :class:`~sweeplab.boundary.Boundary`: what it raises
is the task's, and leaves the sweep's trials as they are)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeplab.boundary import Boundary
from sweeplab.core import Evaluation, Loaded, Task, TrialEnv
from sweeplab.errors import TrainerError
from sweeplab.sweeps.artifacts import log_class_outputs
from sweeplab.tracker.runs import SweepRecorder

__all__ = ["score_best_on_test"]


def score_best_on_test(study: optuna.Study, task: Task, loaded: Loaded, env: TrialEnv, recorder: SweepRecorder,
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
        try:
            evaluation = Boundary().call("evaluate_test", _checked_evaluation, task, loaded, config, folder, env)
        except TrainerError as exc:  # the trials are done and kept: say why the score is missing
            return None, f"the test split was not scored: {exc}"
        if evaluation is None:
            return None, "the data has no test split"
        scored = {k: float(v) for k, v in evaluation.metrics.items() if math.isfinite(v)}
        run.log_summary(scored, {"sweeplab.test_scored": "checkpoint"})
        log_class_outputs(run, evaluation.outputs, loaded.class_names,
                           f"test split, checkpoint of trial {best.number}", "test_", figures)
    recorder.log_summary(scored, {"sweeplab.test_trial": str(best.number)})
    return scored, None


def _checked_evaluation(task: Task, loaded: Loaded, config: Mapping[str, Any], folder: Path, env: TrialEnv) -> Evaluation | None:
    """The task's ``evaluate_test``, with what it returns checked as its own: numbers by metric
    name, and ``y_true`` with ``y_pred`` when it gives class outputs."""
    assert task.evaluate_test is not None
    evaluation = task.evaluate_test(loaded, config, folder, env)
    if evaluation is None:
        return None
    bad = [name for name, value in evaluation.metrics.items()
           if isinstance(value, bool) or not isinstance(value, (int, float))]
    if bad:
        raise TypeError(f"evaluate_test gave metrics that are not numbers: {', '.join(sorted(bad))}")
    if loaded.class_names and evaluation.outputs and not {"y_true", "y_pred"} <= set(evaluation.outputs):
        raise TypeError("evaluate_test gave class outputs without both y_true and y_pred")
    return evaluation
