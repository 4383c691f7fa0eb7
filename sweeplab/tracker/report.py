"""``sweep report``: one self-contained HTML page about a sweep, from the store alone, for sharing.

The page holds what the sweep was (task, metric, sampler, pruner), its trials by outcome, the
five best trials with their searched parameters, best epoch and overfitting onset, and the five
pictures of :mod:`sweeplab.tracker.sweep_plots`, inline as PNG (no file or server beside it).

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
from urllib.parse import unquote, urlsplit

from sweeplab.tracker.query import SweepTrials, TrialCurve

__all__ = ["CAPTIONS", "FOLDER", "PICTURES", "report_html", "signature", "sweep_images"]

#: What each picture shows, as the page says it.
CAPTIONS = {
    "optimisation_history": "Optimisation history: each complete trial's value and the best so far.",
    "param_importances": "Which parameters mattered: PED-ANOVA importance of each searched parameter for the metric.",
    "parallel_coordinates": "Parameters against the metric: one line per complete trial.",
    "curves_by_epoch": "Every trial's validation curve by epoch, with its best epoch (dot) and overfitting onset (cross).",
    "onset_by_params": "Where trials began to overfit, against the learning rate and the batch size "
                       "(or the two most important parameters when the space has neither).",
}

#: Where the parent run keeps the pictures (artifact folder).
FOLDER = "sweep"
#: The parent run's tag saying which trials its pictures show (:func:`signature`).
PICTURES = "sweeplab.pictures"


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
        for name, figure in figures.items():
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            images[name] = buffer.getvalue()
    finally:
        for figure in figures.values():
            close(figure)
    return images


def _value(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _step(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _top(sweep: SweepTrials, count: int = 5) -> list[TrialCurve]:
    sign = -1.0 if sweep.direction == "maximize" else 1.0
    complete = [t for t in sweep.trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:count]  # type: ignore[operator]


#: The parent run's params the page shows, and what it calls them.
_LABELS = {"trials": "target", "sampler": "sampler", "pruner": "pruner", "seed": "seed", "space": "space"}


def _param(text: str) -> str:
    """A param as the table shows it: a float to 4 significant digits, anything else as logged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() or not math.isfinite(number) else f"{number:.4g}"


def _varied(sweep: SweepTrials) -> list[str]:
    """The parameters that differ between trials, in the order the trials list them."""
    names: dict[str, set[str]] = {}
    for trial in sweep.trials:
        for name, value in trial.params.items():
            names.setdefault(name, set()).add(value)
    return [name for name, values in names.items() if len(values) > 1]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
.muted { color: #777; font-size: 0.85em; }
"""


def report_html(sweep: SweepTrials, images: Mapping[str, bytes], source: str) -> str:
    """The page, as a string: ``source`` names the store it was read from."""
    esc = html.escape
    counts: dict[str, int] = {}
    for trial in sweep.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    parent = sweep.parent
    facts = [("task", sweep.task), ("study", sweep.study), ("status", parent.status.lower()),
             ("metric", f"{sweep.metric} ({sweep.direction})"),
             ("trials", ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"),
             *((_LABELS[k], v) for k, v in sorted(parent.params.items()) if k in _LABELS),
             ("parent run", f"{parent.run_id} (experiment {parent.experiment})")]
    varied = _varied(sweep)
    head = "".join(f"<th>{esc(c)}</th>" for c in ["trial", sweep.metric, f"best {sweep.x_axis}", "onset", *varied])
    rows = []
    for trial in _top(sweep):
        cells = [str(trial.number), _value(trial.value), _step(trial.best_step),
                 _step(trial.onset_step) if trial.onset_step is not None else "none",
                 *(_param(trial.params.get(name, "")) for name in varied)]
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    pictures = []
    for name, caption in CAPTIONS.items():
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            pictures.append(f'<figure id="{name}"><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{esc(caption)}</figcaption></figure>")
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep {esc(sweep.study)} ({esc(sweep.task)})</title>
<style>{_STYLE}</style></head><body>
<h1>Sweep {esc(sweep.study)} <span class="muted">task {esc(sweep.task)}</span></h1>
<table>{"".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)}</table>
<h2>Best trials</h2>
<table><tr>{head}</tr>{"".join(rows) or '<tr><td>no complete trial yet</td></tr>'}</table>
<h2>Pictures</h2>
{"".join(pictures)}
<p class="muted">Made by sweeplab {made} from {esc(source)}.</p>
</body></html>
"""
