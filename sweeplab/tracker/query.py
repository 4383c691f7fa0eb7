"""Questions asked of the tracking store after a sweep, answered from MLflow alone.

"Which configuration, at which epoch, scored best, and where is its checkpoint?" needs no Optuna
and no process that ran the sweep: every trial's child run carries its params, its summary
metrics (``best_epoch``, ``best_val_accuracy``, ``overfit_epoch``...) and a tag with its
checkpoint's location. The store is read through :func:`reader_for`,
which asks an SQL store's tables for the rows needed (no MLflow import) and a server its client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sweeplab.core import direction_of
from sweeplab.tracker.reading import Curve, Reader, StoredRun
from sweeplab.tracker.tags import (DEVICE, DIRECTION, METRIC, NO_CHECKPOINT, OVERFIT, PARENT, RETRIED_BY, RETRY_OF, ROLE, SPEC, STATE, STUDY, TARGET,
                                   TASK, TRIAL)

__all__ = ["SweepRow", "SweepTrials", "TrialCurve", "TrialRow", "best_trials", "metric_direction", "recorded_metric", "sweep_trials",
           "sweeps", "task_of_spec"]


@dataclass(frozen=True)
class TrialRow:
    """One trial as found in the store, in plain values (ready for a table or JSON)."""

    run_id: str
    run_name: str
    experiment: str
    study: str
    trial: int
    state: str
    metric: str
    value: float
    params: dict[str, str]
    summary: dict[str, float]
    checkpoint: str | None
    predictions: str | None
    overfit: str
    no_checkpoint: str | None = None  # why the trial kept none, as its run records it (older runs: not recorded)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_sql(uri: str) -> bool:
    """Whether ``uri`` names an SQLite or PostgreSQL database holding MLflow's tables, which
    :mod:`~sweeplab.tracker.sql_reader` reads (its SQL is written for those two)."""
    return uri.split(":", 1)[0].split("+", 1)[0] in {"sqlite", "postgresql", "postgres"}


def reader_for(tracking_uri: str) -> Reader:
    """The reader for a tracking URI: the tables themselves for SQLite and PostgreSQL, else (a
    server, MySQL...) the MLflow client."""
    if is_sql(tracking_uri):
        from sweeplab.tracker.sql_reader import SqlReader

        return SqlReader(tracking_uri)
    from sweeplab.tracker.client_reader import ClientReader

    return ClientReader(tracking_uri)


def metric_direction(metric: str, direction: str | None = None) -> str:
    """The SQL order of a metric's best values first: ``ASC`` for a minimised metric, ``DESC``
    for a maximised one, by ``direction`` when the sweep recorded it, else by the metric's name
    (:func:`~sweeplab.core.direction_of`)."""
    return "ASC" if (direction or direction_of(metric)) == "minimize" else "DESC"


def _sweep_filter(task: str | None, study: str | None) -> dict[str, str]:
    tags = {ROLE: "sweep"}
    if task:
        tags[TASK] = task
    if study:
        tags[STUDY] = study
    return tags


def recorded_metric(tracking_uri: str, task: str, study: str | None = None) -> tuple[str, str | None] | None:
    """The summary metric (``best_val_accuracy``) of the newest sweep of ``task`` (of one
    study) and its direction (``maximize``, ``minimize``; ``None`` when not recorded), from what
    its parent run records; ``None`` when no sweep records a metric (made before sweeplab recorded
    it), and then the task's own metric applies."""
    newest = reader_for(tracking_uri).runs(_sweep_filter(task, study), limit=1)
    metric = newest[0].tags.get(METRIC) if newest else None
    return (f"best_{metric}", newest[0].tags.get(DIRECTION)) if metric else None


def task_of_spec(tracking_uri: str, spec: str) -> str | None:
    """The task name the newest sweep started as ``spec`` (``FILE.py:FUNCTION``, as
    :func:`sweeplab.tasks.spec_name` gives it) recorded, so that a read command finds a trainer's
    runs by its file without importing it; ``None`` when no sweep was started so."""
    newest = reader_for(tracking_uri).runs({ROLE: "sweep", SPEC: spec}, limit=1)
    return newest[0].tags.get(TASK) if newest else None


def _trial_row(run: StoredRun, metric: str) -> TrialRow:
    tags = run.tags
    return TrialRow(
        run_id=run.run_id,
        run_name=run.name,
        experiment=run.experiment,
        study=tags.get(STUDY, ""),
        trial=int(tags.get(TRIAL, -1)),
        state=tags.get(STATE, ""),
        metric=metric,
        value=run.metrics[metric],
        params=dict(run.params),
        summary=dict(run.metrics),
        checkpoint=tags.get("sweeplab.checkpoint"),
        predictions=tags.get("sweeplab.predictions"),
        overfit=tags.get(OVERFIT, "none"),
        no_checkpoint=tags.get(NO_CHECKPOINT),
    )


def best_trials(
    tracking_uri: str,
    task: str,
    metric: str,
    top: int = 1,
    study: str | None = None,
    states: tuple[str, ...] = ("complete",),
    direction: str | None = None,
    parent_run_id: str | None = None,
) -> list[TrialRow]:
    """The ``top`` trials of ``task`` by summary metric ``metric`` (best first; ties go to the
    earlier trial, as in Optuna), over every experiment of the store, optionally limited to one
    study, or to the trials of one sweep (its ``parent_run_id``)."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    tags = {ROLE: "trial", TASK: task}
    if study:
        tags[STUDY] = study
    if parent_run_id:
        tags[PARENT] = parent_run_id
    runs = reader_for(tracking_uri).runs(tags, states=states, metric=metric,
                                         descending=metric_direction(metric, direction) == "DESC", limit=top)
    return [_trial_row(run, metric) for run in runs]


@dataclass(frozen=True)
class SweepRow:
    """One sweep (parent run) as found in the store: its trials by state and the best so far."""

    run_id: str
    experiment: str
    study: str
    task: str
    status: str
    target: int | None
    counts: dict[str, int]
    metric: str
    best_value: float | None
    best_trial: int | None
    start_time: int
    experiment_id: str = ""
    direction: str | None = None  # of ``metric``, when the sweep recorded it
    running: dict[int, str] = field(default_factory=dict)  # trial number -> its device ("" when not recorded)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TRIAL_STATES = ("complete", "pruned", "failed", "killed", "running")


def _latest_attempts(children: list[StoredRun]) -> list[StoredRun]:
    """The child runs of ``children`` that stand for a trial: less the runs of attempts that a
    later attempt replaced, named by its ``sweeplab.retry_of`` (a trial retried alone on a shared
    GPU) or tagged ``sweeplab.retried_by`` (an attempt whose process died, retried as a new
    Optuna trial), so that each trial shows once, by its latest attempt."""
    replaced = {c.tags[RETRY_OF] for c in children if RETRY_OF in c.tags}
    return [c for c in children if c.run_id not in replaced and RETRIED_BY not in c.tags]


def sweeps(tracking_uri: str, best_metric_of: Mapping[str, str], task: str | None = None,
           study: str | None = None) -> list[SweepRow]:
    """Every sweep of the store (newest first, at most 1,000), optionally of one task or study,
    with its trials counted by ``sweeplab.state`` (a child run each, less the runs of attempts that
    a later attempt replaced, tagged ``sweeplab.retried_by``: see :meth:`Reader.states`) and the
    best ``best_metric_of[task]`` among complete ones (while a sweep runs, this is the best so far)."""
    reader = reader_for(tracking_uri)
    parents = reader.runs(_sweep_filter(task, study), limit=1000)
    counted = reader.states([p.run_id for p in parents])
    rows = []
    for parent in parents:
        name = parent.tags.get(TASK, "")
        recorded = parent.tags.get(METRIC)
        metric = f"best_{recorded}" if recorded else best_metric_of.get(name, "")
        direction = parent.tags.get(DIRECTION) if recorded else None
        counts = dict.fromkeys(TRIAL_STATES, 0) | counted[parent.run_id]
        best = reader.runs({PARENT: parent.run_id}, states=("complete",), metric=metric,
                           descending=metric_direction(metric, direction) == "DESC", limit=1) if metric else []
        running = _latest_attempts(reader.runs({PARENT: parent.run_id}, states=("running",))) if counts.get("running") else []
        trials = parent.tags.get(TARGET) or parent.params.get("trials")
        rows.append(SweepRow(
            run_id=parent.run_id, experiment=parent.experiment, study=parent.tags.get(STUDY, ""), task=name,
            status=parent.status, target=int(trials) if trials and trials.isdigit() else None, counts=counts,
            metric=metric, best_value=best[0].metrics[metric] if best else None,
            best_trial=int(best[0].tags.get(TRIAL, -1)) if best else None, start_time=parent.start_time,
            experiment_id=parent.experiment_id, direction=direction,
            running={int(r.tags.get(TRIAL, -1)): r.tags.get(DEVICE, "") for r in running},
        ))
    return rows


@dataclass(frozen=True)
class TrialCurve:
    """One trial of a sweep, with what its pictures need: its params, outcome, the value it was
    judged by, its best and onset steps, and its validation curves."""

    number: int
    run_id: str
    state: str
    params: dict[str, str]
    value: float | None  # best_{metric}: the metric at the trial's best evaluation
    best_step: float | None
    onset_step: float | None  # where the validation loss began to rise for good (None: no onset)
    curve: Curve  # the metric at each evaluation
    loss: Curve  # val_loss at each evaluation, when logged


@dataclass(frozen=True)
class SweepTrials:
    """A sweep (its parent run) and its trials, read from the store: what ``sweep report`` and the
    parent run's pictures are drawn from."""

    parent: StoredRun
    metric: str
    direction: str
    x_axis: str
    trials: list[TrialCurve]

    @property
    def study(self) -> str:
        return self.parent.tags.get(STUDY, "")

    @property
    def task(self) -> str:
        return self.parent.tags.get(TASK, "")


def _x_axis(summary: Mapping[str, float]) -> str:
    """The x axis a trial's summary was made on: ``epoch`` from ``epochs_run``."""
    return next((k[: -len("s_run")] for k in summary if k.endswith("s_run")), "epoch")


def sweep_trials(tracking_uri: str, task: str | None = None, study: str | None = None,
                 parent_run_id: str | None = None) -> SweepTrials | None:
    """The newest sweep of ``task`` (of one study), or the sweep whose parent run is
    ``parent_run_id``, with every trial and its curves; ``None`` when the store holds no such sweep."""
    reader = reader_for(tracking_uri)
    if parent_run_id is not None:
        found = [p for p in reader.runs({ROLE: "sweep"}) if p.run_id == parent_run_id]
    else:
        found = reader.runs(_sweep_filter(task, study), limit=1)
    if not found:
        return None
    parent = found[0]
    metric = parent.tags.get(METRIC) or "val_accuracy"
    direction = parent.tags.get(DIRECTION) or direction_of(metric)
    children = _latest_attempts(reader.runs({PARENT: parent.run_id}))
    curves = reader.curves(parent.run_id, [metric, "val_loss"])
    x_axis = next((_x_axis(c.metrics) for c in children if any(k.endswith("s_run") for k in c.metrics)), "epoch")
    trials = []
    for child in sorted(children, key=lambda c: int(c.tags.get(TRIAL, -1))):
        summary = child.metrics
        logged = curves.get(child.run_id, {})
        trials.append(TrialCurve(
            number=int(child.tags.get(TRIAL, -1)), run_id=child.run_id, state=child.tags.get(STATE, "running"),
            params=dict(child.params),
            value=summary.get(f"best_{metric}"), best_step=summary.get(f"best_{x_axis}"),
            onset_step=summary.get(f"overfit_{x_axis}"), curve=logged.get(metric, []), loss=logged.get("val_loss", []),
        ))
    return SweepTrials(parent=parent, metric=metric, direction=direction, x_axis=x_axis, trials=trials)
