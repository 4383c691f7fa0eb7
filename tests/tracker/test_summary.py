from __future__ import annotations

from sweeplab.core.curves import OnsetRule
from sweeplab.tracker.summary import summarise


def _history(acc: list[float], loss: list[float]) -> list[dict[str, float]]:
    return [{"step": float(i + 1), "val_accuracy": a, "val_loss": l} for i, (a, l) in enumerate(zip(acc, loss))]


def test_summary_reports_the_best_epoch_not_the_last() -> None:
    history = _history([0.5, 0.7, 0.72, 0.65, 0.6], [1.0, 0.8, 0.7, 0.75, 0.9])
    summary = summarise(history, "val_accuracy", "maximize", OnsetRule(s=2, alpha=None))
    assert summary.value == 0.72
    assert summary.metrics["best_epoch"] == 3.0
    assert summary.metrics["best_val_loss"] == 0.7
    assert summary.metrics["overfit_epoch"] == 3.0
    assert summary.metrics["overfit_detected_epoch"] == 5.0
    assert summary.metrics["gl_final"] == (0.9 / 0.7 - 1) * 100
    assert summary.tags == {"sweeplab.overfit_criterion": "UP_2", "sweeplab.overfit": "UP"}


def test_summary_without_onset_has_no_overfit_metric() -> None:
    summary = summarise(_history([0.5, 0.6], [1.0, 0.9]), "val_accuracy", "maximize", OnsetRule())
    assert "overfit_epoch" not in summary.metrics
    assert summary.tags["sweeplab.overfit"] == "none"
    assert summary.metrics["epochs_run"] == 2.0
