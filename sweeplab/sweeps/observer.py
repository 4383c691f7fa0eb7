"""Who hears a sweep's progress: the command line renders it with rich; tests may record it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Silent", "SweepObserver"]


class SweepObserver(Protocol):
    """Hears the sweep's progress (the CLI renders it with rich; tests may record it)."""

    def sweep_started(self, study: str, total: int, done: int) -> None: ...

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        """A trial's training begins; ``rounds`` evaluations are planned (0: not known)."""

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None: ...

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None: ...

    # Optional: ``preparing(label, total)``, a context for one data preparation (decoding,
    # tokenising, feature extraction) that gives the function counting its items
    # (:data:`sweeplab.datasets.cache.Preparing`); an observer without it shows none.


class Silent:
    """An observer that shows nothing (``sweeplab.run`` without one)."""

    def sweep_started(self, study: str, total: int, done: int) -> None:
        pass

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        pass

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        pass
