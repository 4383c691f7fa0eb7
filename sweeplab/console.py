"""What the ``sweep`` command shows: a rich progress display during a sweep, tables after."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sweeplab.tracker.query import TRIAL_STATES, SweepRow, TrialRow

__all__ = ["RichObserver", "majority_line", "sweep_panels", "trial_panels"]


class RichObserver:
    """A :class:`~sweeplab.sweeps.observer.SweepObserver` drawing two bars: trials (with the best
    value so far) and the evaluations of the running trial (with its step and latest metrics)."""

    def __init__(self, console: Console, metric: str) -> None:
        self.console = console
        self.metric = metric
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self.trials: TaskID | None = None
        self.epochs: TaskID | None = None

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, task: TaskID | None) -> Any:
        """A bar by its id (``progress.tasks`` is a list, whose positions shift when a bar is removed)."""
        return next(t for t in self.progress.tasks if t.id == task)

    @contextlib.contextmanager
    def preparing(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A bar "preparing data (LABEL)" while data is decoded, tokenised or run through a
        frozen backbone; a line with the count and time when it is done."""
        task = self.progress.add_task(f"preparing data ({label})", total=total)
        start = time.monotonic()
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            done = int(self._task(task).completed)
            self.progress.remove_task(task)
        self.progress.console.print(f"prepared data ({label}): {done:,} in {time.monotonic() - start:.1f} s", highlight=False)

    def sweep_started(self, study: str, total: int, done: int) -> None:
        if 0 < done < total:
            self.progress.console.print(f"resuming study {study}: {done} of {total} trials done", highlight=False)
        self.trials = self.progress.add_task(f"sweep {study}", total=total, completed=done)
        self.epochs = self.progress.add_task("trial", total=1, visible=False)

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        self.progress.reset(self.epochs, total=rounds or None, description=f"  trial {number}", visible=True)

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("val_loss", self.metric))
        self.progress.update(self.epochs, advance=1, description=f"  trial {number} @{step} {shown}")

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        value_text = "" if value is None else f" {self.metric}={value:.4f}"
        self.progress.console.print(f"trial {number}: {state}{value_text}")
        best_text = "" if best is None else f" (best {self.metric} {best:.4f})"
        description = self._task(self.trials).description.split(" (best")[0]
        if state in ("complete", "pruned"):
            self.progress.advance(self.trials)
        self.progress.update(self.trials, description=description + best_text)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _figures(summary: Mapping[str, float], prefix: str, first: str) -> str:
    """``accuracy 0.91  f1_macro 0.90 ...`` for the summary metrics that start with ``prefix``,
    ``first`` (the ranking metric, without prefix) first."""
    order = tuple(dict.fromkeys((first, "accuracy", "recall_mean", "f1_macro", "roc_auc", "loss")))
    found = {k.removeprefix(prefix): v for k, v in summary.items() if k.startswith(prefix)}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    return "  ".join(f"{name} {_fmt(found[name])}" for name in names)


def majority_line(accuracy: float, majority: float) -> str:
    """How far a validation accuracy is above (or below) always answering the most frequent class."""
    gap = 100 * (accuracy - majority)
    return f"{majority:.4f} (always the most frequent class); {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} it"


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
            title=f"#{rank}  {row.metric} = {row.value:.4f}   (trial {row.trial} of study {row.study})",
            title_justify="left", show_header=False, box=None, padding=(0, 2),
        )
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        onset = row.summary.get(f"overfit_{x_axis}")
        criterion = row.params.get("overfit_criterion", "")
        table.add_row(f"best {x_axis}", _fmt(row.summary.get(f"best_{x_axis}")))
        table.add_row("overfit onset", f"none ({criterion})" if onset is None else f"{onset:g} ({row.overfit} of {criterion})")
        first = row.metric.removeprefix("best_").removeprefix("val_")
        table.add_row(f"validation (best {x_axis})", _figures(row.summary, "best_val_", first))
        majority = row.summary.get("val_majority_accuracy")
        if majority is not None and "best_val_accuracy" in row.summary:
            table.add_row("majority class", majority_line(row.summary["best_val_accuracy"], majority))
        test = _figures(row.summary, "test_", first)
        if test:
            table.add_row("test (best checkpoint)", test)
        if "gl_final" in row.summary:
            table.add_row("gl_final", _fmt(row.summary["gl_final"]))
        shown = {k: v for k, v in sorted(row.params.items()) if not k.startswith("overfit_")}
        table.add_row("params", "  ".join(f"{k}={v}" for k, v in shown.items()))
        table.add_row("run id", f"{row.run_id}  ({row.experiment})")
        table.add_row("checkpoint", row.checkpoint or "not logged (see --checkpoints)")
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
        states = ", ".join(f"{row.counts.get(s, 0)} {s}" for s in TRIAL_STATES)
        table.add_row("finished", f"{finished} of {row.target if row.target else '?'} trials")
        table.add_row("trials", states)
        if row.running:
            table.add_row("running", ", ".join(f"trial {n}" + (f" on {device}" if device else "")
                                                for n, device in sorted(row.running.items())))
        best = "-" if row.best_value is None else f"{row.metric} {row.best_value:.4f} (trial {row.best_trial})"
        table.add_row("best so far", best)
        table.add_row("parent run", f"{row.run_id}  ({row.experiment})")
        tables.append(table)
    return tables
