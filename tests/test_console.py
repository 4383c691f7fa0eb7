"""What ``sweep status`` shows stays whole in an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from sweeplab.console import sweep_panels
from sweeplab.tracker.query import SweepRow


def test_sweep_panels_keep_names_ids_and_counts_whole_in_80_columns() -> None:
    row = SweepRow(run_id="7be5f674c7a846919cff207a9c28744b", experiment="sweeplab-sentiment",
                   study="sentiment-refine-grid-long-name", task="sentiment", status="RUNNING", target=24,
                   counts={"complete": 11, "pruned": 2, "failed": 1, "killed": 1, "running": 3},
                   metric="best_val_accuracy", best_value=0.73751, best_trial=7, start_time=0)
    console = Console(width=80, record=True)
    for table in sweep_panels([row]):
        console.print(table)
    text = console.export_text()
    assert "…" not in text
    for whole in ("sentiment-refine-grid-long-name", "7be5f674c7a846919cff207a9c28744b", "13 of 24 trials",
                  "11 complete", "1 killed", "3 running", "best_val_accuracy 0.7375 (trial 7)", "running)"):
        assert whole in text, (whole, text)


def test_a_resumed_sweep_says_so_and_a_new_one_does_not() -> None:
    from sweeplab.console import RichObserver

    console = Console(width=80, record=True)
    with RichObserver(console, "val_accuracy") as observer:
        observer.sweep_started("news-tpe", 8, 3)
    with RichObserver(console, "val_accuracy") as observer:
        observer.sweep_started("fresh-tpe", 8, 0)
    text = console.export_text()
    assert "resuming study news-tpe: 3 of 8 trials done" in text
    assert "resuming study fresh-tpe" not in text
