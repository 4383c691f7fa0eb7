"""sweeplab: hyperparameter sweeps whose every trial's curves and artifacts live in MLflow."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
