"""Seeded, stratified splits of labelled rows, fixed for a whole sweep so trials are comparable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sklearn.model_selection import train_test_split

from sweeplab.datasets.errors import DataError

__all__ = ["majority_share", "stratified_split"]


def majority_share(labels: Sequence[int]) -> float | None:
    """The share of the most frequent label: the accuracy of always answering it (``None`` for no
    labels)."""
    if not labels:
        return None
    return Counter(labels).most_common(1)[0][1] / len(labels)


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded, stratified train/validation split (scikit-learn's
    ``train_test_split``); classes too small to stratify fall back to a plain seeded split."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    index = list(range(len(labels)))
    if len(index) < 2:
        raise DataError(f"{len(index)} usable row(s): too few to hold out a {val_fraction:.0%} split")
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError:
        try:
            train, val = train_test_split(index, test_size=val_fraction, random_state=seed)
        except ValueError:
            raise DataError(f"{len(index)} usable rows: too few to hold out a {val_fraction:.0%} split") from None
    return sorted(train), sorted(val)
