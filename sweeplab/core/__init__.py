"""The contract between sweeplab's parts, in types and rules that import nothing of sweeplab
outside this package and no heavy library, so that every part can depend on it and importing
it costs no torch, Optuna or MLflow.

* :mod:`~sweeplab.core.task` -- what a task is: :class:`Task`, :class:`TrialEnv`,
  :class:`Evaluation`, :class:`FitResult`, :class:`Loaded`, :class:`Reporter`, :class:`Limit`.
* :mod:`~sweeplab.core.direction` -- whether a metric is maximised or minimised.
* :mod:`~sweeplab.core.curves` -- summaries of a learning curve (best evaluation,
  generalization loss, overfitting onset), shared by early stopping in the trainers and the
  summary the tracker logs.
* :mod:`~sweeplab.core.data_report` -- what a data reader skipped and why.
* :mod:`~sweeplab.core.resume` -- a trial's resume state, saved as it trains and taken back by
  a later attempt; :mod:`~sweeplab.core.stopping` -- a stop asked for by a signal, answered at
  the next step.

Dependencies point here and never back (``tests/test_layers.py``). The names of the task
contract and the direction rule are importable from here (``from sweeplab.core import Task``);
the curve analysis and the read report from their modules.
"""

from __future__ import annotations

from sweeplab.core.direction import LOWER_IS_BETTER, Direction, direction_of
from sweeplab.core.resume import Resumed, Resumption, ResumeStore
from sweeplab.core.task import (
    BOOLEAN,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    DataCache,
    Evaluation,
    FitResult,
    Limit,
    Loaded,
    Reporter,
    RoundTrainer,
    Scalar,
    Task,
    TrialEnv,
    evaluations_per_epoch,
)

__all__ = [
    "BOOLEAN",
    "FRACTION",
    "LOWER_IS_BETTER",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "DataCache",
    "Direction",
    "Evaluation",
    "FitResult",
    "Limit",
    "Loaded",
    "Reporter",
    "ResumeStore",
    "Resumed",
    "Resumption",
    "RoundTrainer",
    "Scalar",
    "Task",
    "TrialEnv",
    "direction_of",
    "evaluations_per_epoch",
]
