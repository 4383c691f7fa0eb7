"""Optuna's own log lines (one per trial, one per study made) kept off the screen: sweeplab shows
a sweep's progress itself."""

from __future__ import annotations

import logging
from contextlib import ExitStack

import optuna  # noqa: F401  (importing it sets its logger's level, which would undo ours if it came later)

from sweeplab.tracker.store import set_level

__all__ = ["quiet_optuna"]


def quiet_optuna() -> ExitStack:
    """Set Optuna's logger to warnings at once; closing the returned stack puts its level back
    (see :func:`sweeplab.tracker.store.quiet_libraries`)."""
    undo = ExitStack()
    set_level(undo, logging.getLogger("optuna"), logging.WARNING)
    return undo
