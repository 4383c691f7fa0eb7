"""The sweep's description on its parent run: markdown that keeps its table whole."""

from __future__ import annotations

from sweeplab.tracker.note import comparison_link, sweep_note
from sweeplab.tracker.query import TrialRow


def _row(trial: int, value: float, params: dict[str, str]) -> TrialRow:
    return TrialRow(run_id=f"run{trial}", run_name=f"trial-{trial:03d}", experiment="e", study="s", trial=trial,
                    state="complete", metric="best_val_accuracy", value=value, params=params,
                    summary={"best_epoch": 3.0, "overfit_epoch": 5.0}, checkpoint=None, predictions=None, overfit="UP")


def test_the_table_has_one_row_per_trial_whatever_the_parameter_values() -> None:
    rows = [_row(4, 0.91, {"model": "a|b", "note": "*bold* _it_", "seed": "0", "overfit_up_s": "3"}), _row(1, 0.8, {"lr": "0.1"})]
    note = sweep_note({"task": "t (x|y)"}, {"complete": 2, "failed": 1}, rows, "7", "epoch",
                      comparison_link("7", "s", "best_val_accuracy", "maximize"))
    table = [line for line in note.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and all(line.count(" | ") == table[0].count(" | ") for line in table)  # header + 2 rows
    assert "[trial 4](#/experiments/7/runs/run4)" in table[1] and "a\\|b" in table[1] and "\\*bold\\*" in table[1]
    assert "seed" not in table[1] and "overfit_up_s" not in table[1]  # the sweep's settings, not the trial's
    assert "**trials**: 2 complete, 1 failed" in note and "compareRunsMode=CHART" in note


def test_the_comparison_link_orders_a_minimised_metric_ascending() -> None:
    assert "orderByAsc=true" in comparison_link("1", "s", "best_val_loss", "minimize")
    assert "orderByAsc=false" in comparison_link("1", "s", "best_val_accuracy", "maximize")
