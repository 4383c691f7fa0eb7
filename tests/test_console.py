"""What ``sweep status`` shows stays whole in an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from sweeplab.console import sweep_panels
from sweeplab.tracker.query import SweepRow


def test_sweep_panels_keep_names_ids_and_counts_whole_in_80_columns() -> None:
    row = SweepRow(run_id="7be5f674c7a846919cff207a9c28744b", experiment="sweeplab-sentiment",
                   study="sentiment-refine-grid-long-name", task="sentiment", status="RUNNING", target=24,
                   counts={"complete": 11, "pruned": 2, "failed": 1, "killed": 1, "running": 3},
                   metric="best_val_accuracy", best_value=0.73751, best_trial=7, start_time=0,
                   running={14: "cuda:1", 12: "cuda:0", 13: ""})
    console = Console(width=80, record=True)
    for table in sweep_panels([row]):
        console.print(table)
    text = console.export_text()
    assert "…" not in text
    for whole in ("sentiment-refine-grid-long-name", "7be5f674c7a846919cff207a9c28744b", "13 of 24 trials",
                  "11 complete", "1 killed", "3 running", "best_val_accuracy 0.7375 (trial 7)", "running)",
                  "trial 12 on cuda:0, trial 13, trial 14 on cuda:1"):
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


def test_data_preparation_shows_a_bar_and_says_what_it_prepared(tmp_path) -> None:
    from sweeplab.console import RichObserver
    from sweeplab.datasets.cache import PrepCache

    console = Console(width=100, record=True)
    seen: list[tuple[str, int | None]] = []
    with RichObserver(console, "val_accuracy") as observer:
        def preparing(label: str, total: int | None):  # the observer's own, recording what it was asked
            seen.append((label, total))
            return observer.preparing(label, total)

        cache = PrepCache(tmp_path, preparing)

        def build() -> list[int]:
            for _ in range(3):
                cache.advance(4)
            return [1, 2, 3]

        assert cache.get("pixels", {"size": 8}, build, label="decoding images", total=12) == [1, 2, 3]
        assert cache.get("pixels", {"size": 8}, build, label="decoding images", total=12) == [1, 2, 3]  # a hit: no bar
        cache.advance(5)  # outside a build: counted nowhere
    assert seen == [("decoding images", 12)]
    assert "prepared data (decoding images): 12 in" in console.export_text()


def test_a_preparation_between_trials_leaves_the_sweeps_bar_whole() -> None:
    from sweeplab.console import RichObserver

    console = Console(width=100, record=True)
    with RichObserver(console, "val_accuracy") as observer:
        for label in ("decoding images at 64 px", "tokenising texts"):  # bars that come and go before the sweep's
            with observer.preparing(label, 3) as advance:
                advance(3)
        observer.sweep_started("s", 2, 0)
        observer.trial_started(0, {}, 2)
        with observer.preparing("decoding images at 96 px", 3) as advance:  # a trial's own size: prepared mid-sweep
            advance(3)
        observer.evaluated(0, 1, {"val_accuracy": 0.5})
        observer.trial_finished(0, "complete", 0.5, 0.5)
    assert "trial 0: complete val_accuracy=0.5000" in console.export_text()
