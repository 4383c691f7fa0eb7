from __future__ import annotations

import math

import pytest

from sweeplab.core.curves import Onset, OnsetRule, best_index, generalization_loss, overfit_onset


def test_best_index_takes_the_earliest_of_ties_and_skips_nan() -> None:
    assert best_index([0.5, 0.7, 0.7, 0.6]) == 1
    assert best_index([math.nan, 0.2, math.nan, 0.3]) == 3
    assert best_index([0.9, 0.4, 0.4, 0.5], "minimize") == 1
    assert best_index([math.nan, math.inf]) is None
    assert best_index([]) is None


def test_best_index_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        best_index([1.0], "up")  # type: ignore[arg-type]


def test_generalization_loss_follows_prechelt() -> None:
    # E_opt: 1.0, 0.8, 0.8, 0.8, 0.5 -> GL = 100 * (E / E_opt - 1)
    gl = generalization_loss([1.0, 0.8, 0.88, 1.2, 0.5])
    assert gl == pytest.approx([0.0, 0.0, 10.0, 50.0, 0.0])


def test_generalization_loss_nan_does_not_move_the_optimum() -> None:
    gl = generalization_loss([1.0, math.nan, 1.1])
    assert gl[0] == 0.0 and math.isnan(gl[1]) and gl[2] == pytest.approx(10.0)


def test_up_s_onset_is_the_start_of_s_successive_rises() -> None:
    losses = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9, 1.0]
    assert overfit_onset(losses, OnsetRule(s=3, alpha=None)) == Onset(index=2, detected_at=5, criterion="UP")
    # two rises then a fall: no UP_3
    assert overfit_onset([1.0, 0.9, 0.95, 1.0, 0.8, 0.7], OnsetRule(s=3, alpha=None)) is None
    assert overfit_onset([1.0, 0.9, 0.95, 1.0, 0.8, 0.7], OnsetRule(s=2, alpha=None)) == Onset(1, 3, "UP")


def test_gl_alpha_onset_is_the_first_evaluation_over_alpha() -> None:
    losses = [1.0, 0.8, 0.82, 0.85, 0.7]  # GL: 0, 0, 2.5, 6.25, 0
    assert overfit_onset(losses, OnsetRule(s=None, alpha=5.0)) == Onset(index=3, detected_at=3, criterion="GL")
    assert overfit_onset(losses, OnsetRule(s=None, alpha=10.0)) is None


def test_combined_rule_takes_the_earlier_onset() -> None:
    losses = [1.0, 0.8, 0.81, 0.82, 0.83, 0.95]  # UP_3 at index 1; GL_5 only at index 5
    onset = overfit_onset(losses, OnsetRule(s=3, alpha=5.0))
    assert onset == Onset(index=1, detected_at=4, criterion="UP")


def test_falling_curve_has_no_onset() -> None:
    assert overfit_onset([1.0, 0.9, 0.8, 0.7, 0.6]) is None


@pytest.mark.parametrize("kwargs", [{"s": 0}, {"alpha": 0.0}, {"s": None, "alpha": None}])
def test_onset_rule_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        OnsetRule(**kwargs)


def test_onset_rule_is_recorded_with_its_name() -> None:
    assert OnsetRule(s=3, alpha=5).as_params() == {
        "overfit_criterion": "UP_3 or GL_5",
        "overfit_up_s": "3",
        "overfit_gl_alpha": "5",
    }
