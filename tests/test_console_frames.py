"""What ``sweep run`` leaves on the screen and in a pipe (issue 23, item 6).

Checked precisely, on the observer rendered into rich consoles of 80 columns, and on the
``run`` command's own printing (its sweep replaced by a script of observer calls, so that no
model trains):

* **final frame**: what a terminal shows once the sweep is over (its output replayed on a
  small screen model: carriage return, line feed, cursor up, erase line), and what a pipe
  holds, is the trials' result lines, the sweep's line and the summary: no per-trial bar
  (``trial N @STEP``), no bar glyphs;
* **unknown length**: a trial whose number of evaluations is not known shows the evaluations
  done and no total (never ``9/1``, nor the previous trial's total);
* **rounding**: every decimal number printed has at most 4 significant digits;
* **no leading blank line**: nothing at all on stdout when the sweep fails before it starts;
* **no mid-phrase wrap**: piped, each line printed is one physical line, however long; in 80
  columns, a line breaks only between its phrases (each phrase whole on one physical line).
"""

from __future__ import annotations

import io
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sweeplab import cli
from sweeplab.console import Phrases, RichObserver, figure, sweep_panels, sweep_summary, trial_panels
from sweeplab.errors import UsageError
from sweeplab.tracker.query import SweepRow, TrialRow

WIDTH = 80
ELAPSED = re.compile(r"\b\d+:\d\d:\d\d\b")
#: A decimal number as printed: ``0.6944``, ``12.50``, ``1.235e+06`` (not a clock, not a version in a path).
DECIMAL = re.compile(r"(?<![\w.:/])(\d+\.\d+)(?:e[-+]\d+)?(?![\w.])")
BAR_GLYPHS = set("━╸╺")

LONG_STUDY = "sentiment-refine-with-a-rather-long-study-name-tpe"
URI = "sqlite:////home/someone/projects/sentiment/mlruns/mlflow.db"


def replay(raw: str) -> list[str]:
    """The lines a terminal shows after ``raw``: carriage return, line feed (as a terminal with
    ``onlcr`` shows it), cursor up (``ESC[nA``) and erase line (``ESC[2K``) are followed;
    other escape sequences (colours, cursor visibility) change no text."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for match in re.finditer(r"\x1b\[([?\d;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]", raw):
        token = match.group(0)
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token.startswith("\x1b"):
            argument, command = match.group(1), match.group(2)
            if command == "A":
                row = max(0, row - int(argument or 1))
            elif command == "K":
                rows[row] = []
            continue
        else:
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = token
            col += 1
        rows.extend([] for _ in range(row + 1 - len(rows)))
    lines = ["".join(r).rstrip() for r in rows]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def terminal(monkeypatch: pytest.MonkeyPatch) -> Console:
    """An 80-column terminal (live display redrawn in place), writing into a string."""
    monkeypatch.setenv("TERM", "xterm-256color")
    return Console(file=io.StringIO(), width=WIDTH, force_terminal=True, force_interactive=True, color_system=None)


def pipe() -> Console:
    return Console(file=io.StringIO(), width=WIDTH)


def play_sweep(observer: Any, finish: bool = True) -> None:
    """Trial 0 of unknown length (9 evaluations, the last one not its best), complete;
    trial 1 of 8 evaluations, one made, then pruned (or, with ``finish`` false, still running);
    trial 2 failed before its first evaluation."""
    observer.sweep_started(LONG_STUDY, 3, 0)
    observer.trial_started(0, {"lr": 0.1}, 0)
    for step in range(1, 10):
        observer.evaluated(0, step, {"val_accuracy": 0.6944444444444444 if step == 5 else 0.61234567, "val_loss": 1.23456789})
    observer.trial_finished(0, "complete", 0.6944444444444444, 0.6944444444444444)
    observer.trial_started(1, {"lr": 0.2}, 8)
    observer.evaluated(1, 1, {"val_accuracy": 0.2916666666666667, "val_loss": 1.1052631578947})
    if finish:
        observer.trial_finished(1, "pruned", 0.2916666666666667, 0.6944444444444444)
        observer.trial_started(2, {"lr": 0.3}, 8)
        observer.trial_finished(2, "failed", None, 0.6944444444444444)


def outcome(**changes: Any) -> Any:
    """What ``run_sweep`` returns (its fields; the real class lives with the engine, which
    imports torch, MLflow and Optuna)."""
    fields = dict(study=LONG_STUDY, experiment="sweeplab-sentiment", parent_run_id="a3335baa1350471295ec4f0dbaffa70f",
                  tracking_uri=URI, counts={"complete": 1, "pruned": 1, "failed": 1}, best_value=0.6944444444444444, best_trial=0,
                  data_report=["train.txt: 1 malformed row (line 17: expected 2 fields, got 3)"], target=3,
                  test={"test_accuracy": 0.6666666666666666, "test_f1_macro": 0.41234567}, notes=[],
                  majority=0.5972222222222222, task="sentiment")
    return types.SimpleNamespace(**{**fields, **changes})


def too_precise(text: str) -> list[str]:
    """The decimal numbers in ``text`` with more than 4 significant digits."""
    return [n for n in DECIMAL.findall(text) if len(n.replace(".", "").lstrip("0")) > 4]


RESULTS = ["trial 0: complete val_accuracy=0.6944", "trial 1: pruned val_accuracy=0.2917", "trial 2: failed"]
#: What 80 columns end with: the trials' lines and the sweep's line, broken between its phrases.
FINAL = [*RESULTS, f"sweep {LONG_STUDY}:", "  2 of 3 trials in T, best val_accuracy 0.6944"]


def test_the_final_terminal_frame_is_the_results_and_the_sweeps_line(monkeypatch: pytest.MonkeyPatch) -> None:
    console = terminal(monkeypatch)
    with RichObserver(console, "val_accuracy") as observer:
        play_sweep(observer)
    shown = [ELAPSED.sub("T", line) for line in replay(console.file.getvalue())]
    assert shown == FINAL, shown


def test_piped_the_bars_leave_nothing_behind_but_the_sweeps_line() -> None:
    console = pipe()
    with RichObserver(console, "val_accuracy") as observer:
        play_sweep(observer)
    assert ELAPSED.sub("T", console.file.getvalue()).splitlines() == FINAL


def test_a_sweep_stopped_mid_trial_ends_on_the_sweeps_line_not_the_trials_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    for console in (terminal(monkeypatch), pipe()):
        with pytest.raises(KeyboardInterrupt), RichObserver(console, "val_accuracy") as observer:
            play_sweep(observer, finish=False)
            raise KeyboardInterrupt
        shown = replay(console.file.getvalue())
        assert ELAPSED.sub("T", "\n".join(shown[-2:])) == f"sweep {LONG_STUDY}:\n  1 of 3 trials in T, best val_accuracy 0.6944", shown
        assert not any("@" in line or BAR_GLYPHS & set(line) for line in shown), shown


def _bars(observer: RichObserver) -> str:
    """The bars as drawn now (80 columns)."""
    console = Console(file=io.StringIO(), width=WIDTH)
    console.print(observer.progress.get_renderable())
    return console.file.getvalue()


def test_a_trial_of_unknown_length_counts_its_evaluations_without_a_total() -> None:
    with RichObserver(pipe(), "val_accuracy") as observer:
        observer.sweep_started("s", 3, 0)
        observer.trial_started(0, {}, 12)  # a trainer that says how many: a total
        observer.evaluated(0, 1, {"val_accuracy": 0.5})
        assert re.search(r"trial 0 @1 .* 1/12 ", _bars(observer))
        observer.trial_finished(0, "complete", 0.5, 0.5)
        observer.trial_started(1, {}, 0)  # a function without ``epochs``: not known
        for step in range(1, 10):
            observer.evaluated(1, step, {"val_accuracy": 0.5})
        drawn = _bars(observer)
    trial = next(line for line in drawn.splitlines() if "trial 1" in line)
    assert re.search(r"trial 1 @9 val_accuracy=0\.5000 .* 9 +\d+:\d\d:\d\d$", trial), trial
    assert "/" not in trial, trial  # neither 9/1 nor the earlier trial's 9/12


def test_every_number_people_read_has_four_significant_digits() -> None:
    assert [figure(v) for v in (0.6944444444444444, 0.5, 1.23456789, 12.5, 1234.5678, 0.000123456, 1234567.0, 1234567.5,
                                1e-07, 3.0, None)] == [
        "0.6944", "0.5000", "1.235", "12.50", "1235", "0.0001235", "1234567", "1.235e+06", "1e-07", "3", "-"]
    console = pipe()
    with RichObserver(console, "val_accuracy") as observer:
        play_sweep(observer)
        observer.trial_started(2, {}, 4)
        observer.evaluated(2, 1, {"val_accuracy": 0.71234567, "val_loss": 12.3456789})
        console.print(observer.progress.get_renderable())  # the trial's bar while it runs
    for line in sweep_summary(outcome(), "val_accuracy"):
        console.print(line)
    trial = TrialRow(run_id="6daeceb15bb84038ab05984db9d4606f", run_name="trial-0", experiment="sweeplab-sentiment",
                     study=LONG_STUDY, trial=0, state="complete", metric="best_val_accuracy", value=0.6944444444444444,
                     params={"lr": "0.00020553456789", "dropout": "0.1", "epochs": "12", "weight_decay": "8.264123e-05"},
                     summary={"best_epoch": 3.0, "best_val_accuracy": 0.6944444444444444, "best_val_loss": 1.0012345,
                              "val_majority_accuracy": 0.5972222222222222, "test_accuracy": 0.6666666666666666,
                              "gl_final": 0.123456789},
                     checkpoint=None, predictions=None, overfit="")
    sweep = SweepRow(run_id="7be5f674c7a846919cff207a9c28744b", experiment="sweeplab-sentiment", study=LONG_STUDY,
                     task="sentiment", status="FINISHED", target=2, counts={"complete": 1, "pruned": 1},
                     metric="best_val_accuracy", best_value=0.6944444444444444, best_trial=0, start_time=0)
    for table in [*trial_panels([trial]), *sweep_panels([sweep])]:
        console.print(table)
    text = console.file.getvalue()
    assert not too_precise(text), too_precise(text)
    for shown in ("trial 2 @1 val_accuracy=0.7123 val_loss=12.35", "best value 0.6944 (trial 0)", "test_accuracy 0.6667  test_f1_macro 0.4123",
                  "lr=0.0002055", "dropout=0.1", "weight_decay=8.264e-05", "best_val_accuracy = 0.6944", "loss 1.001",
                  "best_val_accuracy 0.6944 (trial 0)", "gl_final                   0.1235"):
        assert shown in text, (shown, text)


def test_a_sweep_that_never_started_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error before the first trial (a space file refused, data that cannot be read) is the
    error's line alone: no empty line before it on stdout, in a terminal or a pipe."""
    for console in (terminal(monkeypatch), pipe()):
        with pytest.raises(UsageError), RichObserver(console, "val_accuracy"):
            raise UsageError("space.toml: [search.lr] has unknown key 'type'")
        assert replay(console.file.getvalue()) == []
    console = pipe()
    with RichObserver(console, "val_accuracy"):
        pass
    assert console.file.getvalue() == ""


def _phrases_whole(phrases: Phrases, printed: str) -> None:
    """Each phrase of ``phrases`` is on one physical line of ``printed``, whole."""
    lines = printed.splitlines()
    for phrase in phrases.phrases:
        plain = re.sub(r"\[/?[a-z ]*\]", "", phrase).replace("\\[", "[")
        assert any(plain in line for line in lines), (plain, printed)


def test_in_80_columns_a_line_breaks_only_between_its_phrases() -> None:
    lines = sweep_summary(outcome(), "val_accuracy")
    lines.append(Phrases("[yellow]warning:[/] 2 of 3 trials finished;", "failures are tagged sweeplab.fail_reason in MLflow;",
                         "run the same command again to retry"))
    for line in lines:
        console = pipe()
        console.print(line)
        printed = console.file.getvalue()
        assert all(len(row) <= WIDTH for row in printed.splitlines()), printed
        _phrases_whole(line, printed)
    console = pipe()
    console.print(lines[2])  # the majority line: 91 characters, two phrases
    assert console.file.getvalue().splitlines() == [
        "majority class on validation: 0.5972 (always the most frequent class);", "  9.7 points above it"]


@pytest.fixture()
def scripted_sweep(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """``sweep run``'s engine replaced by a script (``script[0]``, called with the options and
    the observer); the command's consoles made afresh (as a new process makes them, without
    ``COLUMNS``)."""
    script: list[Any] = []
    engine = types.ModuleType("sweeplab.sweeps.driver")
    engine.run_sweep = lambda options, observer: script[0](options, observer)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sweeplab.sweeps.driver", engine)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(cli, "console", cli.Screen())
    monkeypatch.setattr(cli, "errors", cli.Screen(stderr=True))
    yield script


def _run(tmp_path: Path) -> Any:
    return CliRunner().invoke(cli.app, ["run", "sentiment", "--trials", "2", "--metric", "val_accuracy",
                                        "--store-dir", str(tmp_path / "store")])


def test_sweep_run_piped_prints_whole_lines_and_a_clean_final_frame(scripted_sweep: list[Any], tmp_path: Path) -> None:
    def sweep(options: Any, observer: Any) -> Any:
        play_sweep(observer)
        return outcome()

    scripted_sweep.append(sweep)
    result = _run(tmp_path)
    assert result.exit_code == 0, result.output
    assert ELAPSED.sub("T", result.stdout).splitlines() == [  # piped: one line each, however long
        *RESULTS,
        f"sweep {LONG_STUDY}: 2 of 3 trials in T, best val_accuracy 0.6944",
        "data: train.txt: 1 malformed row (line 17: expected 2 fields, got 3)",
        f"study {LONG_STUDY}: 1 complete, 1 pruned, 1 failed; best value 0.6944 (trial 0)",
        "majority class on validation: 0.5972 (always the most frequent class); 9.7 points above it",
        "test split, best trial's checkpoint: test_accuracy 0.6667  test_f1_macro 0.4123",
        f"MLflow: {URI}  experiment sweeplab-sentiment  parent run a3335baa1350471295ec4f0dbaffa70f",
        "next: sweep best --task sentiment    sweep ui",
    ]
    assert result.stderr.splitlines() == ["warning: 2 of 3 trials finished; failures are tagged sweeplab.fail_reason in "
                                          "MLflow; run the same command again to retry"]


def test_sweep_run_failing_before_its_sweep_prints_the_error_alone(scripted_sweep: list[Any], tmp_path: Path) -> None:
    def sweep(options: Any, observer: Any) -> Any:
        raise UsageError("space.toml: [search.lr] has unknown key 'type' (allowed: choices, grid, high, log, low, step, when)")

    scripted_sweep.append(sweep)
    result = _run(tmp_path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == ("error: space.toml: [search.lr] has unknown key 'type' (allowed: choices, grid, high, log, low, "
                             "step, when)\n")


@pytest.mark.parametrize("first", range(40, 80))
def test_a_phrase_that_fits_with_its_separator_stays_whole_at_any_length(first: int) -> None:
    """The separator between two phrases counts in full when the next one is judged to fit."""
    line = Phrases("a" * first, "experiment sweeplab-sentiment", sep="  ")
    console = pipe()
    console.print(line)
    printed = console.file.getvalue()
    assert all(len(row) <= WIDTH for row in printed.splitlines()), printed
    _phrases_whole(line, printed)


def test_a_table_piped_ends_each_line_at_its_last_character() -> None:
    """rich pads a table's rows to its widest; piped (``grep``, ``diff``) the padding is gone,
    and a terminal's output is left as rich makes it."""
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    for row in (("best epoch", "10"), ("checkpoint", "file:///a/long/path/to/checkpoint/model.pt")):
        table.add_row(*row)
    piped = cli.Screen(file=io.StringIO())
    piped.print(table)
    assert piped.file.getvalue().splitlines() == ["best epoch  10", "checkpoint  file:///a/long/path/to/checkpoint/model.pt"]
    terminal = cli.Screen(file=io.StringIO(), force_terminal=True, width=60)
    terminal.print(table)
    first, second = terminal.file.getvalue().splitlines()
    assert first == "best epoch  10".ljust(len(second))  # rich's own padding, kept
