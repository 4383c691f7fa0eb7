"""What became of a trial, in the words used everywhere: the run summary, ``sweep status``, the
``sweeplab.state`` tag of its MLflow run, and the counts on the sweep's parent run."""

from __future__ import annotations

from collections.abc import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["DUPLICATE", "INTERNAL_ERROR", "OUTCOMES", "UNTOLD", "count_outcomes", "outcome", "retried_numbers"]

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


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of the trials that another of ``trials`` retries: every number in a trial's
    ``system_attrs["retry_history"]``, the list of earlier attempts that Optuna's retry callbacks
    (:class:`sweeplab.sweeps.recovery.KilledTrials`) put on a retry. Such an attempt and its retry
    are one trial of the sweep: the attempt's process died and the retry carries on in its place."""
    return {number for trial in trials for number in trial.system_attrs.get("retry_history", ())}


def count_outcomes(study: optuna.Study) -> dict[str, int]:
    """The study's trials by outcome, each trial once: an attempt that a retry replaced is not
    counted (its retry is), and neither are queued grid cells that another trial ran."""
    counts = dict.fromkeys(OUTCOMES, 0)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for trial in trials:
        if trial.number in retried:
            continue
        word = outcome(trial)
        if word in counts:
            counts[word] += 1
    return counts
