"""sweeplab: hyperparameter sweeps whose every trial's curves and artifacts live in MLflow.

The public surface, for notebooks and scripts (the ``sweep`` command does the same)::

    import sweeplab

    @sweeplab.trainer(metric="val_accuracy")      # optional: name, metric, space, defaults
    def fit(config, report):
        ...
        report(epoch, {"val_loss": ..., "val_accuracy": ...}, state=model.state_dict())

    sweeplab.run(fit, space="space.toml", trials=20)   # -> SweepOutcome
    sweeplab.best(fit, top=3)                          # -> [TrialRow, ...]
    sweeplab.status()                                  # -> [SweepRow, ...]

Names are imported on first use, so ``import sweeplab`` costs no torch, Optuna or MLflow.
Everything not listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "run": "sweeplab.api",
    "best": "sweeplab.api",
    "status": "sweeplab.api",
    "report": "sweeplab.api",
    "trainer": "sweeplab.trainers.function",
    "TrialStopped": "sweeplab.trainers.loop",
    "StaleResumeState": "sweeplab.trainers.loop",
    "Resumed": "sweeplab.core",
    "Task": "sweeplab.core",
    "TrialEnv": "sweeplab.core",
    "Evaluation": "sweeplab.core",
    "FitResult": "sweeplab.core",
    "Limit": "sweeplab.core",
    "register": "sweeplab.tasks",
    "SweepOutcome": "sweeplab.sweeps.driver",
    "TrialRow": "sweeplab.tracker.query",
    "SweepRow": "sweeplab.tracker.query",
    "SweeplabError": "sweeplab.errors",
    "UsageError": "sweeplab.errors",
    "Unreachable": "sweeplab.errors",
    "SweepFailed": "sweeplab.errors",
    "InternalError": "sweeplab.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sweeplab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
