"""Closing a sweep's parent run: its counts and best trial, its description and its pictures.

Closing never waits on what is only nice to have: a description or pictures that cannot be made
now (the store is away, a query failed) are a warning, and the parent run keeps what it had; the
next end of the sweep writes them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna

from sweeplab.core import Task
from sweeplab.errors import Unreachable
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.outcomes import count_outcomes
from sweeplab.sweeps.pruners import pruner_name
from sweeplab.sweeps.samplers import sampler_name
from sweeplab.sweeps.space import Space
from sweeplab.core.curves import OnsetRule
from sweeplab.tracker.note import NOTE, comparison_link, sweep_note
from sweeplab.tracker.query import best_trials, sweep_trials
from sweeplab.tracker.runs import SweepRecorder

__all__ = ["MODEL_KEYS", "close_sweep", "describer", "drawer", "model_line", "sweep_settings"]


def close_sweep(study: optuna.Study, recorder: SweepRecorder, status: str, stopped_by: Unreachable | None,
                 describe: Callable[[Mapping[str, int]], str] | None = None,
                 draw: Callable[[], None] | None = None) -> dict[str, int]:
    """Log the sweep's counts and best trial on its parent run, with its description
    (``describe(counts)``, see :mod:`sweeplab.tracker.note`) and its pictures (``draw()``, not
    when interrupted: Ctrl-C should not wait on them), and close it with ``status``;
    FAILED when no trial finished and some failed. A store that stopped answering
    (``stopped_by``, or now) is skipped: the parent run keeps what it had, and the next start of
    the sweep writes it. Returns the counts (empty when the storage is away)."""
    try:
        counts = count_outcomes(study)
        best = study.best_trial if counts["complete"] else None
    except Unreachable:
        if stopped_by is None:  # the storage went away just now: say so, after closing what can be closed
            with contextlib.suppress(Unreachable):
                recorder.close(status)
            raise
        counts, best = {}, None
    summary = {f"trials_{k}": float(v) for k, v in counts.items()}
    tags = {}
    if best is not None:
        summary["best_value"] = float(best.value)
        tags["sweeplab.best_trial"] = str(best.number)
        tags["sweeplab.best_run_id"] = str(best.user_attrs.get("mlflow_run_id", ""))
    if counts and counts["complete"] + counts["pruned"] == 0 and counts["failed"]:
        status = "FAILED"
    if stopped_by is not None:
        tags["sweeplab.stop_reason"] = str(stopped_by)
    try:
        note = _described(describe, counts) if describe is not None and counts else None
        if note is not None:
            tags[NOTE] = note
        recorder.log_summary(summary, tags)
        try:
            if draw is not None and counts and status != "KILLED":
                _drawn(draw)
        finally:  # a Ctrl-C while drawing still closes the parent run
            recorder.close(status)
    except Unreachable:
        if stopped_by is None:  # the sweep's end could not be recorded: say so (the same command records it)
            raise
    return counts


def _described(describe: Callable[[Mapping[str, int]], str], counts: Mapping[str, int]) -> str | None:
    """The sweep's description, or ``None`` when it cannot be made now (the store is away, a
    query failed): the sweep's records stand without it, and the parent run keeps the one it had."""
    try:
        return describe(counts)
    except Exception as exc:  # Unreachable included: closing the sweep must not wait on its description
        logging.getLogger(__name__).warning("could not describe the sweep on its parent run: %s", exc)
        return None


def _drawn(draw: Callable[[], None]) -> None:
    """Draw the sweep's pictures; a failure is a warning: the sweep's records stand without them."""
    try:
        draw()
    except Exception as exc:  # Unreachable included, as for the description
        logging.getLogger(__name__).warning("could not draw the sweep's pictures on its parent run: %s", exc)


def drawer(recorder: SweepRecorder, tracking_uri: str) -> Callable[[], None]:
    """What draws the sweep's pictures on its parent run (``sweep/*.png``, see
    :mod:`sweeplab.tracker.sweep_plots`), from the store, as ``sweep report`` reads them."""

    def draw() -> None:
        from sweeplab.tracker.plots import close
        from sweeplab.tracker.report import FOLDER, PICTURES, signature
        from sweeplab.tracker.sweep_plots import sweep_figures

        sweep = sweep_trials(tracking_uri, parent_run_id=recorder.parent_run_id)
        if sweep is None:
            return
        figures = sweep_figures(sweep)
        try:
            for name, figure in figures.items():
                recorder.log_figure(figure, f"{FOLDER}/{name}.png")
        finally:
            for figure in figures.values():
                close(figure)
        recorder.log_summary({}, {PICTURES: signature(sweep)})  # what they show: sweep report redraws others

    return draw


#: The parameters that say which model a trial trains (its family or checkpoint, its backbones,
#: its inputs, whether the backbones learn), in the order the description names them.
MODEL_KEYS = ("model", "text_model", "image_model", "modality", "freeze_backbones", "freeze_text", "freeze_vision")


def _shown(value: object) -> str:
    """A value as ``--set`` takes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def model_line(task: Task, space: Space) -> str:
    """Which model the sweep trains, from its resolved config (the task's defaults, the space's
    fixed values and ``--set``, and what it searches), not from the task's summary:
    ``text_model=minilm, image_model=efficientnet-lite0, modality=fusion, freeze_backbones=true``,
    or ``model ∈ {textcnn, fasttext, scratch}``; a parameter no trial of the space uses (the image
    backbone of a text-only sweep) is left out. Empty when the task has none of :data:`MODEL_KEYS`."""
    fixed = {**task.defaults, **space.fixed}
    searched = [(name, param.choices) for name, param in space.params.items() if param.kind == "categorical"]
    configs = [{**fixed, name: choice} for name, choices in searched for choice in choices] or [fixed]
    unused = set.intersection(*(space.inactive(config) for config in configs))
    parts = []
    for key in MODEL_KEYS:
        param = space.params.get(key)
        if param is not None:
            parts.append(f"{key} ∈ {{{', '.join(map(_shown, param.choices))}}}" if param.kind == "categorical" else f"{key} searched")
        elif key in fixed and key not in unused:
            parts.append(f"{key}={_shown(fixed[key])}")
    return ", ".join(parts)


def sweep_settings(task: Task, space: Space, options: SweepOptions, data_dir: Path | None) -> dict[str, str]:
    """The ``name: value`` lines that open the parent run's description: the task, the model it
    trains (:func:`model_line`; then a built-in task's summary, fixed words about its models in
    general, is left out), the data, space, sampler, pruner, metric, seed and onset rule."""
    rule = OnsetRule(s=options.search.onset_s, alpha=options.search.onset_alpha)
    model = model_line(task, space)
    return {
        "task": task.name if model and not task.open else f"{task.name} ({task.summary})",
        **({"model": model} if model else {}),
        "data": str(data_dir) if data_dir is not None else "read by the trainer",
        "space": str(space.path),
        "sampler": sampler_name(options),
        "pruner": pruner_name(options, None),
        "metric": f"{task.metric} ({task.direction})",
        "seed": str(options.search.seed),
        "overfitting onset": rule.name + ("; trials stop there" if options.search.early_stop else ""),
    }


def describer(task: Task, space: Space, options: SweepOptions, data_dir: Path | None, recorder: SweepRecorder,
               tracking_uri: str, study_name: str) -> Callable[[Mapping[str, int]], str]:
    """What the parent run's description says (see :func:`sweeplab.tracker.note.sweep_note`):
    the sweep's settings (:func:`sweep_settings`), and its top 5 complete trials, read back from the store."""
    settings = sweep_settings(task, space, options, data_dir)

    def describe(counts: Mapping[str, int]) -> str:
        rows = best_trials(tracking_uri, task.name, task.best_metric, top=5, study=study_name, direction=task.direction,
                           parent_run_id=recorder.parent_run_id)
        compare = comparison_link(recorder.experiment_id, study_name, task.best_metric, task.direction)
        return sweep_note(settings, counts, rows, recorder.experiment_id, task.x_axis, compare)

    return describe
