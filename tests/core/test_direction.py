from __future__ import annotations

import pytest

from sweeplab.core import direction_of


@pytest.mark.parametrize("metric", ["val_loss", "val_error_rate", "gl_max", "epoch_time", "val_perplexity", "best_val_loss"])
def test_a_metric_named_for_a_cost_is_minimised(metric: str) -> None:
    assert direction_of(metric) == "minimize"


@pytest.mark.parametrize("metric", ["val_accuracy", "best_val_accuracy", "val_recall_mean", "val_f1"])
def test_every_other_metric_is_maximised(metric: str) -> None:
    assert direction_of(metric) == "maximize"
