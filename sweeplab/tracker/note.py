"""The sweep's description on its parent run: what the MLflow UI shows first when the run opens.

MLflow renders a run's ``mlflow.note.content`` tag as markdown (the run page's description).
:func:`sweep_note` writes there what a person wants to know before reading any curve: the task,
data, space, sampler and pruner, the trials by outcome, and the top trials with their
parameters, best epoch, overfitting onset and a link to each run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

from sweeplab.tracker.numbers import figure, param_text
from sweeplab.tracker.query import TrialRow

__all__ = ["MODEL_TRAINING_VIEW", "NOTE", "comparison_link", "run_link", "sweep_note", "sweeps_link"]

#: The tag MLflow's UI shows as a run's description (markdown).
NOTE = "mlflow.note.content"


#: The query that opens a page of MLflow's UI in its model-training view. The UI reads it from
#: the address after the ``#`` route only (before it, it is ignored), else from the browser's
#: saved toggle, GenAI by default; it does not read the experiment's ``mlflow.experimentKind``.
MODEL_TRAINING_VIEW = {"workflowType": "machine_learning"}


def run_link(experiment_id: str, run_id: str) -> str:
    """The MLflow UI's address of a run in its model-training view, relative to the UI's root
    (``#/experiments/1/runs/abc?workflowType=machine_learning``)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{urlencode(MODEL_TRAINING_VIEW)}"


def sweeps_link(experiment_ids: Sequence[str]) -> str:
    """The MLflow UI's address (relative to its root) of the sweeps (parent runs) of these
    experiments, in its model-training view: the page to open first (the UI's own first page is
    a GenAI welcome page)."""
    ids = sorted(dict.fromkeys(experiment_ids))
    if not ids:
        return f"#/experiments?{urlencode(MODEL_TRAINING_VIEW)}"
    query = urlencode({**MODEL_TRAINING_VIEW, "searchFilter": "tags.`sweeplab.role` = 'sweep'"}, quote_via=quote)
    if len(ids) == 1:
        return f"#/experiments/{ids[0]}/runs?{query}"
    listed = quote(json.dumps(ids, separators=(",", ":")))
    return f"#/compare-experiments/s?experiments={listed}&{query}"


def comparison_link(experiment_id: str, study: str, metric: str, direction: str | None) -> str:
    """The MLflow UI's address (relative to its root) of a sweep's trials side by side: its
    model-training view (``workflowType``; the UI otherwise opens in its GenAI view), the
    sweep's trial runs only, best first by ``metric``, as charts of every metric
    (``compareRunsMode=CHART``)."""
    query = urlencode({
        **MODEL_TRAINING_VIEW,
        "searchFilter": f"tags.`sweeplab.role` = 'trial' and tags.`sweeplab.study` = '{study}'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": "true" if direction == "minimize" else "false",
        "compareRunsMode": "CHART",
    }, quote_via=quote)
    return f"#/experiments/{experiment_id}/runs?{query}"


def _text(value: object) -> str:
    """``value`` as markdown text that stays in its table cell and list item: the characters
    markdown gives a meaning (``|``, ``*``, ``_``, brackets...) escaped, line breaks as spaces."""
    text = " ".join(str(value).split())
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~-])", r"\\\1", text)


def _params(params: Mapping[str, str]) -> str:
    """A trial's own parameters; the onset rule and the seed are the sweep's (in its settings)."""
    shown = [f"{_text(k)}={_text(param_text(v))}" for k, v in sorted(params.items())
             if k != "seed" and not k.startswith("overfit_")]
    return ", ".join(shown) or "-"


def sweep_note(settings: Mapping[str, str], counts: Mapping[str, int], rows: Sequence[TrialRow],
               experiment_id: str, x_axis: str = "epoch", compare: str | None = None) -> str:
    """Markdown for the parent run: ``settings`` (task, data, space, sampler, pruner... as
    ``name: value`` lines), ``counts`` (trials by outcome, in the order given), ``rows`` (the
    best trials, best first) and a link to the trials side by side (``compare``, see
    :func:`comparison_link`)."""
    lines = ["### Sweep", ""]
    lines += [f"- **{_text(name)}**: {_text(value)}" for name, value in settings.items()]
    shown = [f"{n} {word}" for word, n in counts.items() if n]
    lines += [f"- **trials**: {', '.join(shown) or 'none yet'}", ""]
    if compare:
        lines += [f"[Compare the trials side by side]({compare})", ""]
    if not rows:
        lines.append("No trial has completed yet.")
        return "\n".join(lines) + "\n"
    metric = _text(rows[0].metric)
    lines += [f"### Top {len(rows)} trials by {metric}", "",
              f"| # | trial | {metric} | best {x_axis} | overfitting onset | parameters |",
              "|---|---|---|---|---|---|"]
    for rank, row in enumerate(rows, start=1):
        onset = row.summary.get(f"overfit_{x_axis}")
        lines.append(
            f"| {rank} | [trial {row.trial}]({run_link(experiment_id, row.run_id)}) | {figure(row.value)} "
            f"| {figure(row.summary.get(f'best_{x_axis}'))} | {figure(onset) if onset is not None else 'none'} "
            f"| {_params(row.params)} |")
    return "\n".join(lines) + "\n"
