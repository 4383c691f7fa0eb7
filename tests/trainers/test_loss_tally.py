"""LossTally: a round's mean training loss, summed as tensors, divergence noticed periodically."""

from __future__ import annotations

import math

import pytest
import torch

from sweeplab.trainers.model_trainer import LossTally


def test_the_mean_is_weighted_by_batch_size() -> None:
    tally = LossTally()
    assert math.isnan(tally.mean())
    assert tally.add(torch.tensor(1.0), 3) is False
    assert tally.add(torch.tensor(2.0, requires_grad=True) * 1, 1) is False  # a loss still in the graph
    assert tally.mean() == pytest.approx((1.0 * 3 + 2.0) / 4)


def test_a_non_finite_loss_is_noticed_at_the_next_check() -> None:
    tally = LossTally(check_every=3)
    answers = [tally.add(torch.tensor(v)) for v in (1.0, float("nan"), 1.0, 1.0)]
    assert answers == [False, False, True, False]  # checked at the 3rd step only
    assert math.isnan(tally.mean())
