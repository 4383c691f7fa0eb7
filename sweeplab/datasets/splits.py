"""Seeded, stratified splits of labelled rows, fixed for a whole sweep so trials are comparable."""

from __future__ import annotations

from sklearn.model_selection import train_test_split

from sweeplab.datasets.report import DataError

__all__ = ["stratified_split"]


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded, stratified train/validation split (scikit-learn's
    ``train_test_split``); classes too small to stratify fall back to a plain seeded split."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    index = list(range(len(labels)))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed)
    return sorted(train), sorted(val)
