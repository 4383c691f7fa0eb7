"""What ``sweep status`` shows stays whole in an 80-column terminal."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from sweeplab.console import sweep_panels, trial_panels
from sweeplab.tracker.query import SweepRow, TrialRow


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


def _trial(trial: int, checkpoint: str | None = None, predictions: str | None = None) -> TrialRow:
    return TrialRow(run_id=f"run{trial}", run_name=f"trial-{trial:03d}", experiment="e", study="s", trial=trial,
                    state="complete", metric="best_val_accuracy", value=0.9 - trial / 100, params={"lr": "0.1"},
                    summary={"best_epoch": 3.0}, checkpoint=checkpoint, predictions=predictions, overfit="none")


def _checkpoint_line(rows: list[TrialRow], rank: int = 0) -> str:
    console = Console(width=300, record=True)
    console.print(trial_panels(rows)[rank])
    return next(line for line in console.export_text().splitlines() if line.strip().startswith("checkpoint"))


def test_best_says_why_a_trial_has_no_checkpoint() -> None:
    # Its predictions were kept, so its checkpoint was due: the trainer handed over no state.
    assert "no checkpoint: the training function passed no state to report()" in _checkpoint_line(
        [_trial(1, predictions="runs:/run1/predictions/test_predictions.txt")])
    # Another trial of the study has one: this one was not among those kept (--checkpoints best).
    kept = _checkpoint_line([_trial(1, checkpoint="runs:/run1/checkpoint"), _trial(2)], rank=1)
    assert "not kept: --checkpoints best" in kept and "passed none" not in kept
    # None has one: no state, or --checkpoints none (the trial's run does not record the option).
    none = _checkpoint_line([_trial(1)])
    assert "the trainer passed none" in none and "checkpoint=PATH" in none and "--checkpoints none" in none
    assert "runs:/run1/checkpoint" in _checkpoint_line([_trial(1, checkpoint="runs:/run1/checkpoint")])
    # The trial's run says why (sweeplab.no_checkpoint): that is said, not guessed.
    recorded = replace(_trial(1), no_checkpoint="--checkpoints none")
    assert "no checkpoint: --checkpoints none" in _checkpoint_line([recorded]) and "passed none" not in _checkpoint_line([recorded])
