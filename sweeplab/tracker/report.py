"""``sweep report``: one self-contained HTML page about a sweep, from the store alone, for sharing.

The page holds what the sweep was (task, metric, sampler, pruner), its trials by outcome, the
five best trials with their searched parameters, best step or epoch and overfitting onset, and the
five pictures of :mod:`sweeplab.tracker.sweep_plots`, inline as PNG (no file or server beside it),
captioned in the x axis they were drawn on. Each trial, the parent run and the trials side by side
link to the MLflow UI (:func:`ui_root`); the table of trials stays within the page's width however
many parameters the sweep varied.

A finished sweep's parent run already holds those pictures (``sweep/*.png``, drawn when it
ended): they are read back, which keeps the command under a second on a 1,000-trial store. The
pictures of a sweep still running, or of one whose parent run lacks them, are drawn now.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import math
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from sweeplab.tracker.note import comparison_link, run_link
from sweeplab.tracker.numbers import figure, param_text
from sweeplab.tracker.query import SweepTrials, TrialCurve

__all__ = ["CAPTIONS", "FOLDER", "LOCAL_UI", "PICTURES", "caption", "report_html", "signature", "sweep_images", "ui_root"]

#: What each picture shows, as the page says it; ``{x_axis}`` is the axis the sweep's curves were
#: drawn on (``step`` or ``epoch``, :attr:`SweepTrials.x_axis`), see :func:`caption`.
CAPTIONS = {
    "optimisation_history": "Optimisation history: each complete trial's value and the best so far.",
    "param_importances": "Which parameters mattered: PED-ANOVA importance of each searched parameter for the metric.",
    "parallel_coordinates": "Parameters against the metric: one line per complete trial, darker for a better value.",
    "curves_by_epoch": "Every trial's validation curve by {x_axis}, with its best {x_axis} (dot) and overfitting onset (cross).",
    "onset_by_params": "The {x_axis} where trials began to overfit, against the learning rate and the batch size "
                       "(or the two most important parameters when the space has neither).",
}

#: Where the parent run keeps the pictures (artifact folder).
FOLDER = "sweep"
#: The parent run's tag saying which trials its pictures show (:func:`signature`).
PICTURES = "sweeplab.pictures"
#: Where ``sweep ui`` serves the MLflow UI of a store on this machine (its default address).
LOCAL_UI = "http://127.0.0.1:5000/"


def caption(name: str, x_axis: str) -> str:
    """Picture ``name``'s caption (:data:`CAPTIONS`) in the sweep's own x axis, so that a curve
    drawn by step is not captioned by epoch."""
    return CAPTIONS[name].format(x_axis=x_axis)


def _server(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def ui_root(source: str) -> str:
    """The address of the MLflow UI that shows the store ``source``: a tracking server's own
    (it serves the UI), without the user and password of the address; else the one ``sweep ui``
    opens on this machine by default (:data:`LOCAL_UI`)."""
    if not _server(source):
        return LOCAL_UI
    parts = urlsplit(source)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment="")).rstrip("/") + "/"


def signature(sweep: SweepTrials) -> str:
    """A short hash of the sweep's trials as the pictures show them (number, run, state, value):
    it changes when a trial is added or ends, so that pictures drawn before are known stale."""
    text = "\n".join(f"{t.number} {t.run_id} {t.state} {t.value!r}" for t in sorted(sweep.trials, key=lambda t: t.number))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _stored_images(sweep: SweepTrials) -> dict[str, bytes] | None:
    """The pictures the parent run holds, when it is closed, they show the trials it has now (a
    sweep resumed with ``--no-plots`` or stopped while drawing keeps older ones) and they are files
    this machine can read; ``None`` otherwise."""
    parent = sweep.parent
    if parent.status == "RUNNING" or parent.tags.get(PICTURES) != signature(sweep) or not parent.artifact_uri.startswith("file:"):
        return None
    folder = Path(unquote(urlsplit(parent.artifact_uri).path)) / FOLDER
    paths = {name: folder / f"{name}.png" for name in CAPTIONS}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {name: p.read_bytes() for name, p in paths.items()}


def sweep_images(sweep: SweepTrials, *, fresh: bool = False) -> dict[str, bytes]:
    """The sweep's pictures as PNG bytes by name: the parent run's own when current (unless
    ``fresh``), else drawn now."""
    stored = None if fresh else _stored_images(sweep)
    if stored is not None:
        return stored
    from sweeplab.tracker.plots import close
    from sweeplab.tracker.sweep_plots import sweep_figures

    images = {}
    figures = sweep_figures(sweep)
    try:
        for name, drawn in figures.items():
            buffer = io.BytesIO()
            drawn.savefig(buffer, format="png", dpi=100)
            images[name] = buffer.getvalue()
    finally:
        for drawn in figures.values():
            close(drawn)
    return images


def _top(sweep: SweepTrials, count: int = 5) -> list[TrialCurve]:
    sign = -1.0 if sweep.direction == "maximize" else 1.0
    complete = [t for t in sweep.trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:count]  # type: ignore[operator]


#: The parent run's params the page shows, and what it calls them.
_LABELS = {"trials": "target", "sampler": "sampler", "pruner": "pruner", "seed": "seed", "space": "space"}


def _param_cell(text: str) -> str:
    """A param's cell in the table of trials: a number as logged, a float to 4 significant digits,
    on one line; a text (a model's name) as logged, wrapped where the column is narrow."""
    try:
        float(text)
    except ValueError:
        return f'<td class="text">{html.escape(text)}</td>'
    return f"<td>{html.escape(param_text(text))}</td>"


def _varied(sweep: SweepTrials) -> list[str]:
    """The parameters that differ between trials, in the order the trials list them."""
    names: dict[str, set[str]] = {}
    for trial in sweep.trials:
        for name, value in trial.params.items():
            names.setdefault(name, set()).add(value)
    return [name for name, values in names.items() if len(values) > 1]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; padding: 0 1em; color: #222; }
.fits { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.trials td { white-space: nowrap; } .trials td.text { white-space: normal; overflow-wrap: anywhere; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
.muted { color: #777; font-size: 0.85em; }
"""


def _breakable(name: str) -> str:
    """A parameter's name as HTML that breaks after its underscores when its column is narrow
    (``weight_<wbr>decay``), rather than running into the next column."""
    return "_<wbr>".join(html.escape(part) for part in name.split("_"))


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _trials_table(sweep: SweepTrials, ui: str) -> str:
    """The best trials side by side, one column each (as MLflow compares runs), one row per
    fact: their number (a link to the run in the MLflow UI at ``ui``), value, best step or epoch,
    overfitting onset and every varied parameter. Five columns fit the page however many
    parameters the sweep varied, where one column per parameter ran off it."""
    top = _top(sweep)
    if not top:
        return "<table><tr><td>no complete trial yet</td></tr></table>"
    experiment = sweep.parent.experiment_id
    rows = [("trial", [f"<td>{_link(ui + run_link(experiment, t.run_id), str(t.number))}</td>" for t in top]),
            (sweep.metric, [f"<td>{figure(t.value)}</td>" for t in top]),
            (f"best {sweep.x_axis}", [f"<td>{figure(t.best_step)}</td>" for t in top]),
            ("overfitting onset", [f"<td>{figure(t.onset_step) if t.onset_step is not None else 'none'}</td>" for t in top]),
            *((name, [_param_cell(t.params.get(name, "")) for t in top]) for name in _varied(sweep))]
    body = "".join(f"<tr><th>{_breakable(name)}</th>{''.join(cells)}</tr>" for name, cells in rows)
    return f'<div class="fits"><table class="trials">{body}</table></div>'


def report_html(sweep: SweepTrials, images: Mapping[str, bytes], source: str) -> str:
    """The page, as a string: ``source`` names the store it was read from, and which MLflow UI
    its links open (:func:`ui_root`)."""
    esc = html.escape
    counts: dict[str, int] = {}
    for trial in sweep.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    parent = sweep.parent
    ui = ui_root(source)
    side_by_side = ui + comparison_link(parent.experiment_id, sweep.study, f"best_{sweep.metric}", sweep.direction)
    outcomes = esc(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet")
    facts = [("task", esc(sweep.task)), ("study", esc(sweep.study)), ("status", esc(parent.status.lower())),
             ("metric", esc(f"{sweep.metric} ({sweep.direction})")),
             ("trials", outcomes + (f" ({_link(side_by_side, 'side by side in MLflow')})" if sweep.trials else "")),
             *((_LABELS[k], esc(v)) for k, v in sorted(parent.params.items()) if k in _LABELS),
             ("parent run", _link(ui + run_link(parent.experiment_id, parent.run_id), parent.run_id)
              + esc(f" (experiment {parent.experiment})"))]
    where = "the tracking server's own" if _server(source) else "start it with <code>sweep ui</code>"
    pictures = []
    for name in CAPTIONS:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            text = esc(caption(name, sweep.x_axis))
            pictures.append(f'<figure id="{name}"><img alt="{text}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{text}</figcaption></figure>")
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep {esc(sweep.study)} ({esc(sweep.task)})</title>
<style>{_STYLE}</style></head><body>
<h1>Sweep {esc(sweep.study)} <span class="muted">task {esc(sweep.task)}</span></h1>
<div class="fits"><table>{"".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in facts)}</table></div>
<h2>Best trials</h2>
{_trials_table(sweep, ui)}
<p class="muted">Links open the MLflow UI at {esc(ui)} ({where}).</p>
<h2>Pictures</h2>
{"".join(pictures)}
<p class="muted">Made by sweeplab {made} from {esc(source)}.</p>
</body></html>
"""
