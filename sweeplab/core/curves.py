"""Summaries of a learning curve: best evaluation, generalization loss, overfitting onset.

Every function here takes plain sequences (one value per evaluation, in order) and returns plain
values, so the same definitions serve the trainers (early stopping while a trial runs), the
tracker (the summary logged when it ends) and the tests (hand-made curves).

Definitions (DESIGN.md section 4):

* **best evaluation** -- the evaluation with the best value of the task's metric (highest for
  ``maximize``, lowest for ``minimize``); ties go to the earliest.
* **generalization loss**, after Prechelt, "Early Stopping -- But When?" (1998): with
  ``E_va(t)`` the validation loss at evaluation ``t`` and ``E_opt(t) = min_{t' <= t} E_va(t')``,
  ``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)``.
* **overfitting onset** -- the first evaluation ``t`` after which the validation loss rises in
  ``s`` successive evaluations (Prechelt's ``UP_s``, here on single evaluations), or the first
  evaluation with ``GL(t) > alpha`` (``GL_alpha``), whichever comes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sweeplab.core.direction import Direction

__all__ = [
    "OnsetRule",
    "Onset",
    "best_index",
    "generalization_loss",
    "overfit_onset",
]


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def best_index(values: Sequence[float], direction: Direction = "maximize") -> int | None:
    """Index of the best finite value; ties go to the earliest; ``None`` if none is finite.

    >>> best_index([0.5, 0.7, 0.7, 0.6])
    1
    >>> best_index([0.9, 0.4, 0.4], "minimize")
    1
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    best: int | None = None
    for i, value in enumerate(values):
        if not _finite(value):
            continue
        if best is None:
            best = i
        elif (value > values[best]) if direction == "maximize" else (value < values[best]):
            best = i
    return best


def generalization_loss(val_losses: Sequence[float]) -> list[float]:
    """``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)`` for every evaluation ``t`` (Prechelt 1998).

    ``E_opt(t)`` is the lowest validation loss up to and including ``t``. A non-finite loss gives
    ``nan`` at that point and does not move ``E_opt``; a non-positive ``E_opt`` gives ``nan``
    (the ratio is undefined).

    >>> [round(g, 1) for g in generalization_loss([1.0, 0.8, 0.88, 1.0])]
    [0.0, 0.0, 10.0, 25.0]
    """
    out: list[float] = []
    e_opt = math.inf
    for loss in val_losses:
        if not _finite(loss):
            out.append(math.nan)
            continue
        e_opt = min(e_opt, loss)
        out.append(100.0 * (loss / e_opt - 1.0) if e_opt > 0 else math.nan)
    return out


@dataclass(frozen=True)
class OnsetRule:
    """Parameters of the overfitting-onset criterion ``UP_s or GL_alpha``.

    ``s`` is the number of successive rises of the validation loss (``UP_s``); ``alpha`` is the
    generalization-loss threshold in percent (``GL_alpha``). Either may be ``None`` to switch
    that half of the criterion off.
    """

    s: int | None = 3
    alpha: float | None = 5.0

    def __post_init__(self) -> None:
        if self.s is not None and self.s < 1:
            raise ValueError(f"OnsetRule.s must be >= 1 or None, got {self.s}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"OnsetRule.alpha must be > 0 or None, got {self.alpha}")
        if self.s is None and self.alpha is None:
            raise ValueError("OnsetRule needs s or alpha (or both)")

    @property
    def name(self) -> str:
        """The criterion in Prechelt's notation, e.g. ``UP_3 or GL_5``."""
        parts = []
        if self.s is not None:
            parts.append(f"UP_{self.s}")
        if self.alpha is not None:
            parts.append(f"GL_{self.alpha:g}")
        return " or ".join(parts)

    def as_params(self) -> dict[str, str]:
        """The rule as MLflow params, so an onset is never read without its definition."""
        return {
            "overfit_criterion": self.name,
            "overfit_up_s": str(self.s),
            "overfit_gl_alpha": str(self.alpha),
        }


@dataclass(frozen=True)
class Onset:
    """Where overfitting began: ``index`` is the onset evaluation, ``detected_at`` the evaluation
    at which the criterion could first tell (``index + s`` for ``UP_s``), ``criterion`` which
    half fired (``"UP"`` or ``"GL"``)."""

    index: int
    detected_at: int
    criterion: str


def overfit_onset(val_losses: Sequence[float], rule: OnsetRule = OnsetRule()) -> Onset | None:
    """First overfitting onset in a validation-loss curve, or ``None`` if there is none yet.

    ``UP_s`` fires at ``t`` when ``E(t) < E(t+1) < ... < E(t+s)``; ``GL_alpha`` fires at the first
    ``t`` with ``GL(t) > alpha``. When both fire, the earlier onset wins. Non-finite losses break
    a run of rises.

    >>> overfit_onset([1.0, 0.8, 0.7, 0.75, 0.8, 0.9], OnsetRule(s=3, alpha=None))
    Onset(index=2, detected_at=5, criterion='UP')
    >>> overfit_onset([1.0, 0.8, 0.7, 0.8], OnsetRule(s=None, alpha=5))
    Onset(index=3, detected_at=3, criterion='GL')
    """
    found: list[Onset] = []
    if rule.s is not None:
        rises = 0
        for t in range(1, len(val_losses)):
            prev, cur = val_losses[t - 1], val_losses[t]
            rises = rises + 1 if _finite(prev) and _finite(cur) and cur > prev else 0
            if rises == rule.s:
                found.append(Onset(index=t - rule.s, detected_at=t, criterion="UP"))
                break
    if rule.alpha is not None:
        for t, gl in enumerate(generalization_loss(val_losses)):
            if _finite(gl) and gl > rule.alpha:
                found.append(Onset(index=t, detected_at=t, criterion="GL"))
                break
    if not found:
        return None
    return min(found, key=lambda o: (o.index, o.detected_at))
