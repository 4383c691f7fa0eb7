"""Questions asked of the tracking store after a sweep, answered from MLflow alone.

"Which configuration, at which epoch, scored best, and where is its checkpoint?" needs no Optuna
and no process that ran the sweep: every trial's child run carries its params, its summary
metrics (``best_epoch``, ``best_val_accuracy``, ``overfit_epoch``...) and a tag with its
checkpoint's location.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

from sweeplab.tracker.runs import ROLE, STATE

__all__ = ["TrialRow", "best_trials", "metric_direction"]


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


def metric_direction(metric: str) -> str:
    """``ASC`` for losses and other lower-is-better names, ``DESC`` for everything else."""
    lower_better = ("loss", "error", "gl_", "time", "perplexity")
    return "ASC" if any(word in metric for word in lower_better) else "DESC"


def best_trials(
    tracking_uri: str,
    task: str,
    metric: str,
    top: int = 1,
    study: str | None = None,
    states: tuple[str, ...] = ("complete",),
) -> list[TrialRow]:
    """The ``top`` trials of ``task`` by summary metric ``metric`` (best first; ties go to the
    earlier trial, as in Optuna), over every experiment of the store, optionally limited to one
    study."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not experiments:
        return []
    filters = [f"tags.`{ROLE}` = 'trial'", f"tags.`sweeplab.task` = '{task}'"]
    if study:
        filters.append(f"tags.`sweeplab.study` = '{study}'")
    runs = client.search_runs(
        list(experiments),
        filter_string=" and ".join(filters),
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50000,
        order_by=[f"metrics.`{metric}` {metric_direction(metric)}", "attributes.start_time ASC"],
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
