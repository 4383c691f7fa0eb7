"""The summary of a finished trial's curve, as the metrics and tags MLflow stores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sweeplab.core import Direction
from sweeplab.core.curves import Onset, OnsetRule, best_index, generalization_loss, overfit_onset

__all__ = ["TrialSummary", "summarise"]


@dataclass(frozen=True)
class TrialSummary:
    """Best evaluation and overfitting onset of one trial (definitions in
    :mod:`sweeplab.core.curves`). ``value`` is the metric at the best evaluation: the trial's
    value for Optuna, not the last evaluation's."""

    value: float | None
    best: int | None
    onset: Onset | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def summarise(
    history: Sequence[Mapping[str, float]],
    metric: str,
    direction: Direction,
    rule: OnsetRule,
    x_axis: str = "epoch",
) -> TrialSummary:
    """Summary metrics of a curve (one mapping per evaluation, each with ``step``).

    Logged metrics: ``best_{x_axis}`` (the step of the best evaluation), ``best_{metric}``, the
    other validation metrics at that evaluation as ``best_...``, ``overfit_{x_axis}`` (the step of
    the onset, only when there is one), ``gl_final`` and ``gl_max`` (generalization loss at the last
    evaluation and its maximum) and ``{x_axis}s_run``. Tags: ``sweeplab.overfit`` is ``none`` or
    the half of the criterion that fired, ``sweeplab.overfit_criterion`` the rule itself.
    """
    values = [p.get(metric, math.nan) for p in history]
    best = best_index(values, direction)
    losses = [p.get("val_loss", math.nan) for p in history]
    onset = overfit_onset(losses, rule) if any("val_loss" in p for p in history) else None
    metrics: dict[str, float] = {f"{x_axis}s_run": float(len(history))}
    if best is not None:
        point = history[best]
        metrics[f"best_{x_axis}"] = point["step"]
        for key, value in point.items():
            if (key.startswith("val_") or key == metric) and math.isfinite(value):
                metrics[f"best_{key}"] = value
    gl = [g for g in generalization_loss(losses) if math.isfinite(g)]
    if gl:
        metrics["gl_final"] = gl[-1]
        metrics["gl_max"] = max(gl)
    tags = {"sweeplab.overfit_criterion": rule.name, "sweeplab.overfit": "none"}
    if onset is not None:
        metrics[f"overfit_{x_axis}"] = history[onset.index]["step"]
        metrics[f"overfit_detected_{x_axis}"] = history[onset.detected_at]["step"]
        tags["sweeplab.overfit"] = onset.criterion
    return TrialSummary(
        value=None if best is None else values[best], best=best, onset=onset, metrics=metrics, tags=tags
    )
