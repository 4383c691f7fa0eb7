"""What a finished trial leaves on its run besides its curve: the resolved config, the curves
and confusion-matrix pictures, the per-class report, and (when it is kept) the best checkpoint
and the test predictions.

The task's own code here (``save_checkpoint``, ``format_predictions``) is called through the
trial's :class:`~sweeplab.boundary.Boundary`: what it raises fails the trial; an error in the
logging around it is sweeplab's.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplab.boundary import Boundary
from sweeplab.core import FitResult, Loaded, Task
from sweeplab.errors import TrainerError
from sweeplab.tracker import plots
from sweeplab.core.curves import OnsetRule
from sweeplab.tracker.runs import TrialRecorder
from sweeplab.tracker.summary import TrialSummary
from sweeplab.tracker.tags import NO_CHECKPOINT
from sweeplab.trainers.checkpoint import save_model_pt
from sweeplab.trainers.metrics import per_class_report

__all__ = ["log_class_outputs", "log_trial_artifacts"]


def log_class_outputs(run: TrialRecorder, outputs: Mapping[str, Any], class_names: tuple[str, ...], where: str,
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


def log_trial_artifacts(run: TrialRecorder, task: Task, loaded: Loaded, config: Mapping[str, Any], rule: OnsetRule,
                        result: FitResult, summary: TrialSummary, figures: bool, keep: str | None, staging: Path,
                        boundary: Boundary) -> None:
    """Log a finished trial's artifacts on ``run``: always the config, the curves (``figures``)
    and the per-class outputs at the best evaluation; the checkpoint and the test predictions
    when ``keep`` is ``None`` (else it says why not). Why the trial has no checkpoint is its
    run's tag ``sweeplab.no_checkpoint`` (``sweep best`` says it)."""
    x_axis = result.x_axis or task.x_axis
    run.log_dict({"task": task.name, "config": dict(config), "onset_rule": rule.as_params()}, "config.json")
    if figures:
        fig = plots.curves_figure(result.history, summary, task.metric, x_axis, loaded.majority)
        run.log_figure(fig, "curves.png")
        plots.close(fig)
    if "y_true" in result.outputs:
        where = f"validation, best {x_axis} {result.history[summary.best]['step']:g}"
        log_class_outputs(run, result.outputs, loaded.class_names, where, "", figures)
    if keep is not None:
        run.set_tags({NO_CHECKPOINT: keep})
        return
    tags = {}
    if result.state is not None:
        tags["sweeplab.checkpoint"] = _log_checkpoint(run, task, loaded, config, result, summary, staging, boundary)
    else:
        tags[NO_CHECKPOINT] = "the trainer passed no state (report(..., state=...); a command: trial.report(..., checkpoint=PATH))"
    if result.predictions is not None and task.format_predictions is not None:
        text = boundary.call("format_predictions", task.format_predictions, result.predictions)
        tags["sweeplab.predictions"] = run.log_text(text, "predictions/test_predictions.txt")
    if tags:
        run.set_tags(tags)


def _log_checkpoint(run: TrialRecorder, task: Task, loaded: Loaded, config: Mapping[str, Any], result: FitResult,
                    summary: TrialSummary, staging: Path, boundary: Boundary) -> str:
    """Log the state kept at the best evaluation under ``checkpoint/``: in the task's own format
    when it has one (a ``save_pretrained`` folder...), else ``model.pt`` holding the state dict
    with its config and best step. Returns the artifact URI of the folder or the file."""
    folder = staging / "checkpoint"
    folder.mkdir()
    try:
        if task.save_checkpoint is not None:
            boundary.call("save_checkpoint", task.save_checkpoint, loaded, config, result.state, folder)
            return run.log_folder(folder, "checkpoint")
        try:
            save_model_pt(result.state, config, task.name, result.history[summary.best]["step"], folder / "model.pt")
        except (pickle.PicklingError, AttributeError, TypeError) as exc:  # a state the trainer gave that cannot be saved
            raise TrainerError(exc, "state") from exc
        return run.log_file(folder / "model.pt", "checkpoint")
    finally:
        shutil.rmtree(folder)
