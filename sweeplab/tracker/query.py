"""Questions asked of the tracking store after a sweep, answered from MLflow alone.

"Which configuration, at which epoch, scored best, and where is its checkpoint?" needs no Optuna
and no process that ran the sweep: every trial's child run carries its params, its summary
metrics (``best_epoch``, ``best_val_accuracy``, ``overfit_epoch``...) and a tag with its
checkpoint's location.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

from sweeplab.core import direction_of
from sweeplab.tracker.runs import DIRECTION, METRIC, ROLE, STATE

__all__ = ["SweepRow", "TrialRow", "best_trials", "metric_direction", "recorded_metric", "sweeps"]


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_direction(metric: str, direction: str | None = None) -> str:
    """The SQL order of a metric's best values first: ``ASC`` for a minimised metric, ``DESC``
    for a maximised one, by ``direction`` when the sweep recorded it, else by the metric's name
    (:func:`~sweeplab.core.direction_of`)."""
    return "ASC" if (direction or direction_of(metric)) == "minimize" else "DESC"


def recorded_metric(tracking_uri: str, task: str, study: str | None = None) -> tuple[str, str | None] | None:
    """The summary metric (``best_val_accuracy``) of the newest sweep of ``task`` (of one
    study) and its direction (``maximize``, ``minimize``; ``None`` when not recorded), from what
    its parent run records; ``None`` when no sweep records a metric (made before sweeplab recorded
    it), and then the task's own metric applies."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return None
    filters = [f"tags.`{ROLE}` = 'sweep'", f"tags.`sweeplab.task` = '{task}'"]
    if study:
        filters.append(f"tags.`sweeplab.study` = '{study}'")
    newest = client.search_runs(experiments, filter_string=" and ".join(filters), run_view_type=ViewType.ACTIVE_ONLY,
                                max_results=1, order_by=["attributes.start_time DESC"])
    metric = newest[0].data.tags.get(METRIC) if newest else None
    return (f"best_{metric}", newest[0].data.tags.get(DIRECTION)) if metric else None


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
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not experiments:
        return []
    filters = [f"tags.`{ROLE}` = 'trial'", f"tags.`sweeplab.task` = '{task}'"]
    if study:
        filters.append(f"tags.`sweeplab.study` = '{study}'")
    if parent_run_id:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    runs = client.search_runs(
        list(experiments),
        filter_string=" and ".join(filters),
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50000,
        order_by=[f"metrics.`{metric}` {metric_direction(metric, direction)}", "attributes.start_time ASC"],
    )
    rows: list[TrialRow] = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(STATE) not in states or metric not in metrics:
            continue
        rows.append(
            TrialRow(
                run_id=run.info.run_id,
                run_name=run.info.run_name,
                experiment=experiments[run.info.experiment_id],
                study=tags.get("sweeplab.study", ""),
                trial=int(tags.get("sweeplab.trial", -1)),
                state=tags.get(STATE, ""),
                metric=metric,
                value=metrics[metric],
                params=dict(run.data.params),
                summary=dict(metrics),
                checkpoint=tags.get("sweeplab.checkpoint"),
                predictions=tags.get("sweeplab.predictions"),
                overfit=tags.get("sweeplab.overfit", "none"),
            )
        )
        if len(rows) == top:
            break
    return rows


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TRIAL_STATES = ("complete", "pruned", "failed", "killed", "running")


def sweeps(tracking_uri: str, best_metric_of: Mapping[str, str], task: str | None = None,
           study: str | None = None) -> list[SweepRow]:
    """Every sweep of the store (newest first), optionally of one task or study, with its child
    runs counted by ``sweeplab.state`` and the best ``best_metric_of[task]`` among complete ones
    (while a sweep runs, this is the best so far)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not experiments:
        return []
    filters = [f"tags.`{ROLE}` = 'sweep'"]
    if task:
        filters.append(f"tags.`sweeplab.task` = '{task}'")
    if study:
        filters.append(f"tags.`sweeplab.study` = '{study}'")
    parents = client.search_runs(list(experiments), filter_string=" and ".join(filters), run_view_type=ViewType.ACTIVE_ONLY,
                                 max_results=1000, order_by=["attributes.start_time DESC"])
    rows = []
    for parent in parents:
        name = parent.data.tags.get("sweeplab.task", "")
        recorded = parent.data.tags.get(METRIC)
        metric = f"best_{recorded}" if recorded else best_metric_of.get(name, "")
        children = client.search_runs([parent.info.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50000,
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        counts = dict.fromkeys(TRIAL_STATES, 0)
        for child in children:
            state = child.data.tags.get(STATE, "running")
            counts[state] = counts.get(state, 0) + 1
        scored = [c for c in children if c.data.tags.get(STATE) == "complete" and metric in c.data.metrics]
        reverse = metric_direction(metric, parent.data.tags.get(DIRECTION) if recorded else None) == "DESC"
        best = sorted(scored, key=lambda c: ((-1 if reverse else 1) * c.data.metrics[metric], c.info.start_time))[:1]
        trials = parent.data.params.get("trials")
        rows.append(SweepRow(
            run_id=parent.info.run_id, experiment=experiments[parent.info.experiment_id],
            study=parent.data.tags.get("sweeplab.study", ""), task=name, status=parent.info.status,
            target=int(trials) if trials and trials.isdigit() else None, counts=counts, metric=metric,
            best_value=best[0].data.metrics[metric] if best else None,
            best_trial=int(best[0].data.tags.get("sweeplab.trial", -1)) if best else None,
            start_time=int(parent.info.start_time or 0), experiment_id=parent.info.experiment_id,
            direction=parent.data.tags.get(DIRECTION) if recorded else None,
        ))
    return rows
