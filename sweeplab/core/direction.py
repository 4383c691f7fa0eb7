"""Which way a metric is better: the type of a direction and the one rule that reads it from a
metric's name. A module of its own because both the task types and the curve analysis need it,
and neither should import the other for it."""

from __future__ import annotations

from typing import Literal

__all__ = ["LOWER_IS_BETTER", "Direction", "direction_of"]

Direction = Literal["maximize", "minimize"]

#: Words in a metric's name that mean lower is better (``val_loss``, ``val_error_rate``, ``gl_max``,
#: ``epoch_time``, ``val_perplexity``); every other metric is better higher.
LOWER_IS_BETTER = ("loss", "error", "gl_", "time", "perplexity")


def direction_of(metric: str) -> Direction:
    """Whether a metric is maximised or minimised, from its name: ``minimize`` when the name
    holds one of :data:`LOWER_IS_BETTER`, else ``maximize``. The one rule sweeplab uses wherever a
    metric's direction is not recorded (``--metric``, ``sweep best --metric``, a trainer that
    names its metric without a direction).

    >>> direction_of("val_loss"), direction_of("best_val_accuracy")
    ('minimize', 'maximize')
    """
    return "minimize" if any(word in metric for word in LOWER_IS_BETTER) else "maximize"
