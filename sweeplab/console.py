"""What the ``sweep`` command shows: a rich progress display during a sweep, tables after.

Numbers people read are shown by :func:`figure` (4 significant digits; ``--json`` keeps full
precision). The observer's lines are whole when the output is not a terminal (a pipe, a file);
in a terminal rich wraps them at the terminal's width."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from sweeplab.tracker.numbers import figure, param_text
from sweeplab.tracker.query import TRIAL_STATES, SweepRow, TrialRow

if TYPE_CHECKING:
    from sweeplab.sweeps.driver import SweepOutcome

__all__ = ["Phrases", "RichObserver", "figure", "majority_line", "sweep_panels", "sweep_summary", "trial_panels"]


class Phrases:
    """A line made of phrases (console markup, each with its own punctuation) with ``sep``
    between them, which breaks only between phrases: wider than its space, it goes on on the
    next line, indented, from the phrase that does not fit. Rich alone would break it at any
    space, mid-phrase (``best value 0.5972 (trial`` / ``0)``). Only a phrase wider than the
    space on its own is wrapped inside (a long path)."""

    def __init__(self, *phrases: str, sep: str = " ", indent: str = "  ") -> None:
        self.phrases = [p for p in phrases if p]
        self.sep, self.indent = sep, indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = Text(overflow="fold")
        line = 0  # cells on the current line
        for phrase in map(Text.from_markup, self.phrases):
            if line and line + len(self.sep) + phrase.cell_len > options.max_width:  # the separator as appended
                text.append(self.sep.rstrip() + "\n" + self.indent)
                line = len(self.indent)
            elif line:
                text.append(self.sep)
                line += len(self.sep)
            text.append_text(phrase)
            line += phrase.cell_len
        yield text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widths = [Text.from_markup(p).cell_len for p in self.phrases] or [0]
        narrowest = max(widths) + len(self.indent) + len(self.sep.rstrip())  # a phrase alone on a line
        return Measurement(narrowest, sum(widths) + len(self.sep) * (len(widths) - 1)).clamp(max_width=options.max_width)

    def __str__(self) -> str:
        return self.sep.join(Text.from_markup(p).plain for p in self.phrases)


class _Count(ProgressColumn):
    """``done/total``; ``done`` alone when the total is not known (a trainer that does not say
    how many evaluations it makes: not ``9/1``)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else str(done), style="progress.download")


class RichObserver:
    """A :class:`~sweeplab.sweeps.observer.SweepObserver` drawing the sweep's bar (trials, with
    the best value so far) and a bar for the running trial's evaluations (its step and latest
    metrics; a pulsing bar when its number of evaluations is not known).

    The bars are transient: a trial's bar goes when its trial ends, its result line printed
    instead (its latest evaluation, on the bar, need not be its result), and when the display
    stops all that is left is the sweep's line, printed once, before the command's summary.
    Nothing is printed at all when no sweep started (an error before it): no blank line."""

    def __init__(self, console: Console, metric: str) -> None:
        self.console = console
        self.metric = metric
        self.progress = Progress(  # one row a bar in any width: a long description is cut (…), not wrapped
            TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3)),
            BarColumn(bar_width=None, table_column=Column(ratio=1)), _Count(), TimeElapsedColumn(),
            console=console, transient=True, expand=True,
        )
        self.trials: TaskID | None = None
        self.study = ""
        self.best: float | None = None
        self.running: dict[int, TaskID] = {}

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for number in list(self.running):
            self._drop(number)
        self.progress.live.stop()  # not progress.stop(), which prints an empty line when the output is not a terminal
        if self.trials is not None:
            self.progress.console.print(self.sweep_line(), highlight=False)

    def _say(self, text: str) -> None:
        """A line above the bars (plain text), whole when the output is not a terminal."""
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=not self.progress.console.is_terminal)

    def _task(self, task: TaskID | None) -> Any:
        """A bar by its id (``progress.tasks`` is a list, whose positions shift when a bar is removed)."""
        return next(t for t in self.progress.tasks if t.id == task)

    def _drop(self, number: int) -> None:
        task = self.running.pop(number, None)
        if task is not None:
            self.progress.remove_task(task)

    def sweep_line(self) -> Phrases:
        """The sweep's bar as a line: ``sweep STUDY: 5 of 8 trials in 0:01:02, best METRIC 0.8123``."""
        task = self._task(self.trials)
        elapsed = timedelta(seconds=max(0, int(task.elapsed or 0)))
        best = "" if self.best is None else f"best {self.metric} {figure(self.best)}"
        return Phrases(escape(f"sweep {self.study}:"), f"{int(task.completed)} of {int(task.total or 0)} trials in {elapsed}{',' if best else ''}",
                       escape(best))

    @contextlib.contextmanager
    def preparing(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A bar "preparing data (LABEL)" while data is decoded, tokenised or run through a
        frozen backbone; a line with the count and time when it is done."""
        task = self.progress.add_task(escape(f"preparing data ({label})"), total=total)
        start = time.monotonic()
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            done = int(self._task(task).completed)
            self.progress.remove_task(task)
        self._say(f"prepared data ({label}): {done:,} in {time.monotonic() - start:.1f} s")

    def sweep_started(self, study: str, total: int, done: int) -> None:
        if 0 < done < total:
            self._say(f"resuming study {study}: {done} of {total} trials done")
        self.study = study
        self.trials = self.progress.add_task(escape(f"sweep {study}"), total=total, completed=done)

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        self._drop(number)  # a retry of the trial starts its bar again
        self.running[number] = self.progress.add_task(f"  trial {number}", total=rounds if rounds and rounds > 0 else None)

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        task = self.running.get(number)
        if task is None:  # a trial this process does not run (another worker's)
            return
        shown = " ".join(f"{k}={figure(v)}" for k, v in metrics.items() if k in ("val_loss", self.metric))
        self.progress.update(task, advance=1, description=f"  trial {number} @{step} {shown}".rstrip())

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        self._drop(number)
        value_text = "" if value is None else f" {self.metric}={figure(value)}"
        self._say(f"trial {number}: {state}{value_text}")
        if self.trials is None:
            return
        self.best = best
        best_text = "" if best is None else f" (best {self.metric} {figure(best)})"
        if state in ("complete", "pruned"):
            self.progress.advance(self.trials)
        self.progress.update(self.trials, description=escape(f"sweep {self.study}{best_text}"))


def _figures(summary: Mapping[str, float], prefix: str, first: str) -> Phrases:
    """``accuracy 0.91  f1_macro 0.90 ...`` for the summary metrics that start with ``prefix``,
    ``first`` (the ranking metric, without prefix) first."""
    order = tuple(dict.fromkeys((first, "accuracy", "recall_mean", "f1_macro", "roc_auc", "loss")))
    found = {k.removeprefix(prefix): v for k, v in summary.items() if k.startswith(prefix)}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    return Phrases(*(escape(f"{name} {figure(found[name])}") for name in names), sep="  ", indent="")


def _majority(accuracy: float, majority: float, label: str = "") -> Phrases:
    """:func:`majority_line` in its two phrases, after ``label``."""
    floor, gap = majority_line(accuracy, majority).split("; ")
    return Phrases(escape(f"{label}{floor};"), gap)


def majority_line(accuracy: float, majority: float) -> str:
    """How far a validation accuracy is above (or below) always answering the most frequent class."""
    gap = 100 * (accuracy - majority)
    return f"{figure(majority)} (always the most frequent class); {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} it"


def _no_checkpoint(row: TrialRow, rows: Sequence[TrialRow]) -> str:
    """Why trial ``row`` has no checkpoint, as far as the store tells: its test predictions were
    kept, so the checkpoint was due and the trainer passed no state; another trial of its study
    has one, so it was not among those kept (``--checkpoints best`` keeps a trial that beats the
    sweep's best when it ends); else either (a run recorded before sweeplab recorded the reason,
    ``sweeplab.no_checkpoint``, which is said first when present)."""
    if row.no_checkpoint:
        return f"no checkpoint: {row.no_checkpoint}"
    if row.predictions is not None:
        return "no checkpoint: the training function passed no state to report()"
    if any(other.checkpoint and other.study == row.study for other in rows):
        return "not kept: --checkpoints best keeps a trial that beat the sweep's best when it ended (all: every trial)"
    return ("no checkpoint: the trainer passed none (report(..., state=...); a command: "
            "trial.report(..., checkpoint=PATH)), or the sweep ran with --checkpoints none")


def trial_panels(rows: Sequence[TrialRow], x_axis: str | None = None) -> list[Table]:
    """One key/value table per trial, best first: value, best step, overfitting onset, the
    validation figures at the best step beside the test figures (when the checkpoint was scored),
    parameters, run id, checkpoint and predictions locations. ``x_axis`` names the curves' step
    (``epoch``, ``step``); by default each row's summary says which (``best_step`` or ``best_epoch``)."""
    tables = []
    chosen = x_axis
    for rank, row in enumerate(rows, start=1):
        x_axis = chosen or ("step" if "best_step" in row.summary else "epoch")
        table = Table(
            title=f"#{rank}  {row.metric} = {figure(row.value)}   (trial {row.trial} of study {row.study})",
            title_justify="left", show_header=False, box=None, padding=(0, 2),
        )
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        onset = row.summary.get(f"overfit_{x_axis}")
        criterion = row.params.get("overfit_criterion", "")
        table.add_row(f"best {x_axis}", figure(row.summary.get(f"best_{x_axis}")))
        table.add_row("overfit onset", f"none ({criterion})" if onset is None else f"{figure(onset)} ({row.overfit} of {criterion})")
        first = row.metric.removeprefix("best_").removeprefix("val_")
        table.add_row(f"validation (best {x_axis})", _figures(row.summary, "best_val_", first))
        majority = row.summary.get("val_majority_accuracy")
        if majority is not None and "best_val_accuracy" in row.summary:
            table.add_row("majority class", _majority(row.summary["best_val_accuracy"], majority))
        test = _figures(row.summary, "test_", first)
        if test.phrases:
            table.add_row("test (best checkpoint)", test)
        if "gl_final" in row.summary:
            table.add_row("gl_final", figure(row.summary["gl_final"]))
        shown = {k: v for k, v in sorted(row.params.items()) if not k.startswith("overfit_")}
        table.add_row("params", Phrases(*(escape(f"{k}={param_text(v)}") for k, v in shown.items()), sep="  ", indent=""))
        table.add_row("run id", Phrases(row.run_id, escape(f"({row.experiment})"), sep="  ", indent=""))
        table.add_row("checkpoint", row.checkpoint or _no_checkpoint(row, rows))
        if row.predictions:
            table.add_row("predictions", row.predictions)
        tables.append(table)
    return tables


def sweep_panels(rows: Sequence[SweepRow]) -> list[Table]:
    """One key/value table per sweep, newest first: its task and MLflow status, finished trials
    against the target with the trials in each state, the best value so far with its trial, and
    the parent run; each running trial with the device it runs on. Key/value rows keep names and run ids whole in an 80-column terminal, where
    a table with a column per state would cut them."""
    tables = []
    for row in rows:
        table = Table(title=f"{row.study}   (task {row.task}, {row.status.lower()})", title_justify="left",
                      show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        finished = row.counts.get("complete", 0) + row.counts.get("pruned", 0)
        states = Phrases(*(f"{row.counts.get(s, 0)} {s}" for s in TRIAL_STATES), sep=", ", indent="")
        table.add_row("finished", f"{finished} of {row.target if row.target else '?'} trials")
        table.add_row("trials", states)
        if row.running:
            table.add_row("running", Phrases(*(escape(f"trial {n}" + (f" on {device}" if device else ""))
                                               for n, device in sorted(row.running.items())), sep=", ", indent=""))
        best = "-" if row.best_value is None else f"{row.metric} {figure(row.best_value)} (trial {row.best_trial})"
        table.add_row("best so far", best)
        table.add_row("parent run", Phrases(row.run_id, escape(f"({row.experiment})"), sep="  ", indent=""))
        tables.append(table)
    return tables


def sweep_summary(outcome: SweepOutcome, metric: str, timeout: float | None = None) -> list[Phrases]:
    """What ``sweep run`` prints after the sweep's line, a :class:`Phrases` a line: the data
    report, a sweep cut short by ``--timeout``, the trials in each state with the best value,
    the majority-class floor (for accuracy), the test figures, notes, and where to look next.
    Values by :func:`figure`."""
    lines = [Phrases("[yellow]data:[/] " + escape(line)) for line in outcome.data_report]  # a reader's line: one phrase
    finished = outcome.counts.get("complete", 0) + outcome.counts.get("pruned", 0)
    if finished < outcome.target and timeout is not None:
        lines.append(Phrases(f"{finished} of {outcome.target} trials finished within --timeout {timeout:g} s;",
                             "the same command resumes the sweep"))
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items() if v)
    lines.append(Phrases(f"study [bold]{escape(outcome.study)}[/]:", f"{counts};",
                         "no trial completed" if outcome.best_value is None
                         else f"best value {figure(outcome.best_value)} (trial {outcome.best_trial})"))
    if outcome.majority is not None and outcome.best_value is not None and metric in (None, "val_accuracy"):
        lines.append(_majority(outcome.best_value, outcome.majority, "majority class on validation: "))
    if outcome.test:
        first, *rest = (escape(f"{k} {figure(v)}") for k, v in sorted(outcome.test.items()))
        lines.append(Phrases(f"test split, best trial's checkpoint: {first}", *rest, sep="  "))
    lines += [Phrases("[yellow]note:[/] " + escape(note)) for note in outcome.notes]  # one phrase each
    lines.append(Phrases(escape(f"MLflow: {outcome.tracking_uri}"), escape(f"experiment {outcome.experiment}"),
                         f"parent run {outcome.parent_run_id}", sep="  "))
    lines.append(Phrases(escape(f"next: sweep best --task {outcome.task}"), "sweep ui", sep="    "))
    return lines
