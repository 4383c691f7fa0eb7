"""What became of a trial, in the words used everywhere: the run summary, ``sweep status``, the
``sweeplab.state`` tag of its MLflow run, and the counts on the sweep's parent run."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["DUPLICATE", "INTERNAL_ERROR", "OUTCOMES", "UNTOLD", "count_outcomes", "outcome"]

#: What became of a trial: failed means the trial raised, killed that its process was killed or
#: interrupted while it ran.
OUTCOMES = ("complete", "pruned", "failed", "killed", "running", "queued")

#: Tag of a finished trial's run whose value could not be told to Optuna (the storage stayed
#: unreachable): the value, which the next start of the sweep tells Optuna from the run.
UNTOLD = "sweeplab.untold_value"

#: The ``fail_reason`` prefix of a trial failed by sweeplab's own error (``InternalError``), not
#: by its trainer.
INTERNAL_ERROR = "internal error"

#: The ``fail_reason`` of a queued grid cell that another trial ran.
DUPLICATE = "duplicate: another trial ran this grid cell"


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


def count_outcomes(study: optuna.Study) -> dict[str, int]:
    """The study's trials by outcome; queued grid cells that another trial ran are not counted."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for trial in study.get_trials(deepcopy=False):
        word = outcome(trial)
        if word in counts:
            counts[word] += 1
    return counts
