"""Pictures of a whole sweep, drawn from what the store holds (:class:`~sweeplab.tracker.query.SweepTrials`).

Three are Optuna's own (``optuna.visualization.matplotlib``), drawn on an in-memory study rebuilt
from the trials' child runs: the optimisation history, the parameters' importances and the
parallel coordinates of the parameters against the metric (its colours cut to those that stand
out from the background: Optuna's lightest blue, the worst trial's, is white on white). Two are
made for this tool: every trial's validation curve by step or epoch (the task's x axis, which
the pictures and their captions name) with its best step and overfitting onset marked, and the
onset against the learning rate and the batch size (or the two most important parameters when
the space has neither). The artifact keeps its name ``curves_by_epoch`` whatever the axis.

The parent run gets these at the end of a sweep (``sweep/*.png``); ``sweep report`` puts them on
one HTML page.

The host process's plotting is left as it was (a notebook that sweeps): this module's own
pictures are :class:`~matplotlib.figure.Figure` objects made without pyplot, and Optuna's,
which draw through pyplot's current figure, get an Agg canvas of their own and are taken out of
pyplot as soon as they are drawn (:func:`_detached`); the style Optuna sets stays inside the
drawing. Matplotlib's backend is never switched.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import matplotlib
import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, LinearSegmentedColormap, to_rgb
from matplotlib.figure import Figure
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from sweeplab.tracker.plots import any_script, close
from sweeplab.tracker.query import SweepTrials, TrialCurve
from sweeplab.tracker.store import set_level

__all__ = ["FIGURES", "searched_params", "study_of", "sweep_figures"]

#: The pictures of a sweep, by artifact name, in the order a reader looks at them.
FIGURES = ("optimisation_history", "param_importances", "parallel_coordinates", "curves_by_epoch", "onset_by_params")

_LOG_SPAN = 100.0  # a positive numeric parameter whose values span this factor or more is drawn on a log scale

#: The least contrast (WCAG 2's ratio, from 1 to 21) a trial's line has with the background it is
#: drawn on: 2 is a light but plain blue on white, where Optuna's palest blue is 1.04.
_LEAST_CONTRAST = 2.0
#: The grey of the curves not picked out in colour, and how opaque: light enough for 1,000 of
#: them to show where most trials went, dark enough (contrast 2.3 on white) for one to show.
_GREY, _GREY_ALPHA = "0.45", 0.6


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def searched_params(trials: Sequence[TrialCurve]) -> dict[str, BaseDistribution]:
    """The parameters the sweep varied (more than one value among its trials), each with the
    smallest distribution that holds its values: integers, floats (log scale when positive and
    spanning a factor of 100 or more), else categories. Parameters with one value were fixed."""
    names = sorted({name for t in trials for name in t.params}, key=lambda n: min(
        (list(t.params).index(n) for t in trials if n in t.params), default=0))
    found: dict[str, BaseDistribution] = {}
    for name in names:
        values = [t.params[name] for t in trials if name in t.params]
        if len(set(values)) < 2:
            continue
        numbers = [_number(v) for v in values]
        if all(n is not None for n in numbers):
            low, high = min(numbers), max(numbers)  # type: ignore[type-var]
            log = low > 0 and high / low >= _LOG_SPAN
            if all(float(n).is_integer() and "." not in v and "e" not in v.lower() for n, v in zip(numbers, values)):
                found[name] = IntDistribution(int(low), int(high), log=log)
            else:
                found[name] = FloatDistribution(float(low), float(high), log=log)
        else:
            found[name] = CategoricalDistribution(sorted(set(values)))
    return found


def study_of(sweep: SweepTrials) -> optuna.Study:
    """An in-memory Optuna study holding the sweep's trials at their own numbers (a number without
    a run is a failed placeholder): complete ones with the searched
    parameters and the value each was judged by, pruned ones with their curve as intermediate
    values, the rest as failed. Optuna's plots and importance evaluators read the complete ones."""
    distributions = searched_params([t for t in sweep.trials if t.state == "complete"])
    study = optuna.create_study(direction=sweep.direction, study_name=sweep.study or "sweep")
    frozen = []
    by_number = {t.number: t for t in sweep.trials}
    for number in range(max(by_number, default=-1) + 1):
        if number not in by_number:  # a number with no run (a queued grid cell another trial ran)
            frozen.append(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
            continue
        trial = by_number[number]
        params = {}
        for name, dist in distributions.items():
            text = trial.params.get(name)
            if text is None or (isinstance(dist, CategoricalDistribution) and text not in dist.choices):
                continue
            value = text if isinstance(dist, CategoricalDistribution) else (
                int(float(text)) if isinstance(dist, IntDistribution) else float(text))
            if isinstance(dist, CategoricalDistribution) or dist.low <= value <= dist.high:  # type: ignore[attr-defined]
                params[name] = value
        used = {n: distributions[n] for n in params}
        attrs = {"trial": trial.number}
        if trial.state == "complete" and trial.value is not None and math.isfinite(trial.value):
            frozen.append(optuna.trial.create_trial(params=params, distributions=used, value=trial.value, user_attrs=attrs))
        elif trial.state == "pruned":
            steps = {int(step): value for step, value in trial.curve if math.isfinite(value)}
            frozen.append(optuna.trial.create_trial(params=params, distributions=used, user_attrs=attrs,
                                                    state=optuna.trial.TrialState.PRUNED, intermediate_values=steps))
        else:
            frozen.append(optuna.trial.create_trial(params=params, distributions=used, user_attrs=attrs,
                                                    state=optuna.trial.TrialState.FAIL))
    study.add_trials(frozen)
    return study


def _figure_of(axes: object) -> Figure:
    """The figure Optuna's plot drew on (it returns an ``Axes`` or an array of them)."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure  # type: ignore[attr-defined,no-any-return]


def _optuna_figure(draw: Callable[..., object], study: optuna.Study, width: float = 9.0, **kwargs: object) -> Figure:
    """One of Optuna's plots, ``width`` inches wide, out of pyplot (:func:`_detached`); the style
    it sets (``ggplot``) stays inside."""
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # experimental-feature notices; importances of trials that all scored alike
        figure = _detached(draw, study, **kwargs)
        figure.set_size_inches(width, 5)
        figure.tight_layout()
    return figure


def _luminance(colour: object) -> float:
    """A colour's relative luminance (WCAG 2): 0 for black, 1 for white."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]  # type: ignore[arg-type]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(colour: object, background: object) -> float:
    """WCAG 2's contrast ratio of two colours (1: alike, 21: black on white)."""
    low, high = sorted((_luminance(colour), _luminance(background)))
    return (high + 0.05) / (low + 0.05)


def _standing_out(cmap: Colormap, background: object) -> Colormap:
    """``cmap`` less its colours that have under :data:`_LEAST_CONTRAST` with ``background`` (the
    light end of a sequential map), spread again over the whole range: the same order of colours,
    each of them visible."""
    colours = cmap(np.linspace(0.0, 1.0, cmap.N))
    kept = [c for c in colours if _contrast(c, background) >= _LEAST_CONTRAST]
    return LinearSegmentedColormap.from_list(f"{cmap.name}_visible", kept or ["black"], N=cmap.N)


def _lines_visible(figure: Figure) -> Figure:
    """Optuna's parallel coordinates with every trial's line visible: Optuna colours them by value
    from ``Blues`` (reversed to minimise), whose light end (the worst trial's line) is near-white
    on white; the colour map of the lines and of their colour bar is cut to the colours that
    stand out (:func:`_standing_out`)."""
    for ax in figure.axes:
        for lines in ax.collections:
            if isinstance(lines, LineCollection) and lines.get_array() is not None:
                lines.set_cmap(_standing_out(lines.get_cmap(), ax.get_facecolor()))
                if lines.colorbar is not None:
                    lines.colorbar.update_normal(lines)
    return figure


def _detached(draw: Callable[..., object], *args: object, **kwargs: object) -> Figure:
    """The figure ``draw`` made through pyplot (Optuna's plots do: ``plt.subplots``, then the
    current axes), on a plain Agg canvas whatever pyplot's backend (:func:`_agg_canvas`; Optuna's
    importances plot needs one), taken out of pyplot as soon as it is drawn, also when drawing
    fails. Pyplot's interactive mode is off meanwhile, so that no window or notebook widget opens
    for it. The host's figures, its current figure and its backend are untouched (pyplot only
    picks its default backend here if nothing has used it yet)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        with plt.ioff(), matplotlib.rc_context({"figure.hooks": [f"{__name__}:_agg_canvas"]}):
            figure = _figure_of(draw(*args, **kwargs))
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
    return figure


def _agg_canvas(figure: Figure) -> None:
    """Give a figure pyplot has just made a plain Agg canvas of its own (a ``figure.hooks`` hook):
    it is drawn and saved the same under any backend, and never through the host's."""
    FigureCanvasAgg(figure)


def _note(title: str, text: str) -> Figure:
    figure = Figure(figsize=(9, 2.5))
    ax = figure.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return figure


def _curves_figure(sweep: SweepTrials) -> Figure:
    """Every trial's curve of the metric by step; a dot at its best step, a cross at its onset.
    The five best complete trials are drawn in colour with their numbers, the rest in grey (dotted
    when pruned, failed or stopped). One collection per kind of line, so that 1,000 trials draw fast."""
    figure = Figure(figsize=(9, 5))
    ax = figure.subplots()
    complete = [t for t in sweep.trials if t.state == "complete" and t.value is not None]
    sign = -1.0 if sweep.direction == "maximize" else 1.0
    top = [t.number for t in sorted(complete, key=lambda t: (sign * t.value, t.number))[:5]]  # type: ignore[operator]
    rest = [t for t in sweep.trials if t.curve and t.number not in top]
    for style, trials in (("solid", [t for t in rest if t.state == "complete"]), ("dotted", [t for t in rest if t.state != "complete"])):
        ax.add_collection(LineCollection([t.curve for t in trials], colors=_GREY, linewidths=0.8, alpha=_GREY_ALPHA,
                                         linestyles=style))
    best, onset = [], []
    for trial in sweep.trials:
        at = dict(trial.curve)
        if trial.best_step is not None and int(trial.best_step) in at:
            best.append((trial.best_step, at[int(trial.best_step)]))
        if trial.onset_step is not None and int(trial.onset_step) in at:
            onset.append((trial.onset_step, at[int(trial.onset_step)]))
    if best:
        ax.scatter(*zip(*best), s=8, color="0.25", zorder=4, label=f"best {sweep.x_axis}")
    if onset:
        ax.scatter(*zip(*onset), s=12, marker="x", color="C3", linewidths=1.0, zorder=4, label="overfitting onset")
    by_number = {t.number: t for t in sweep.trials}
    for number, colour in zip(top, matplotlib.colormaps["tab10"].colors):
        steps, values = zip(*by_number[number].curve) if by_number[number].curve else ((), ())
        ax.plot(steps, values, "-", color=colour, lw=1.8, label=f"trial {number}", zorder=3)
    ax.plot([], [], ":", color=_GREY, label="pruned, failed or stopped")
    ax.autoscale_view()
    ax.set_xlabel(sweep.x_axis)
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"{sweep.metric} of every trial by {sweep.x_axis} (the 5 best in colour)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _onset_params(sweep: SweepTrials, study: optuna.Study) -> list[str]:
    """Learning rate and batch size, by their usual names; else the two most important parameters."""
    varied = searched_params(sweep.trials)
    wanted = [next((n for n in names if n in varied), None) for names in (("lr", "learning_rate"), ("batch_size", "batch"))]
    chosen = [n for n in wanted if n is not None]
    if len(chosen) < 2 and len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = list(optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))
        chosen += [n for n in ranked if n not in chosen][: 2 - len(chosen)]
    return [n for n in chosen if n in varied]


def _onset_figure(sweep: SweepTrials, names: Sequence[str]) -> Figure:
    """Each trial's onset step against each parameter of ``names``; complete trials with no onset
    are drawn as hollow triangles at the last step they ran, so that "never overfitted" is visible."""
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots(1, len(names), squeeze=False)
    distributions = searched_params(sweep.trials)
    for ax, name in zip(axes.flat, names):
        dist = distributions[name]
        onset, none = [], []
        for trial in sweep.trials:
            if name not in trial.params or not trial.curve:
                continue
            x = trial.params[name] if isinstance(dist, CategoricalDistribution) else float(trial.params[name])
            if trial.onset_step is not None:
                onset.append((x, trial.onset_step))
            elif trial.state == "complete":  # a pruned trial stopped before it could overfit
                none.append((x, trial.curve[-1][0]))
        if onset:
            ax.scatter(*zip(*onset), s=14, color="C3", alpha=0.7, label="onset")
        if none:
            ax.scatter(*zip(*none), s=18, facecolors="none", edgecolors="0.4", marker="^", alpha=0.7,
                       label=f"no onset (last {sweep.x_axis})")
        if getattr(dist, "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"onset {sweep.x_axis}")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(f"Where trials began to overfit, against {' and '.join(names)}")
    figure.tight_layout()
    return figure


def sweep_figures(sweep: SweepTrials) -> Mapping[str, Figure]:
    """The sweep's pictures by name (:data:`FIGURES`). A picture that needs more than the sweep has
    (two complete trials, a varied parameter, a logged validation loss) says so in words instead.
    Optuna's announcement of the in-memory study it draws from is kept off the screen."""
    figures: dict[str, Figure] = {}
    with ExitStack() as undo:
        set_level(undo, logging.getLogger("optuna"), logging.WARNING)
        try:
            _draw_all(sweep, study_of(sweep), figures)
        except BaseException:  # the figures drawn so far are not handed back: free them here
            for figure in figures.values():
                close(figure)
            raise
    return figures


def _draw_all(sweep: SweepTrials, study: optuna.Study, figures: dict[str, Figure]) -> None:
    """Draw :data:`FIGURES` into ``figures`` (see :func:`sweep_figures`)."""
    from optuna.visualization import matplotlib as optuna_plots

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = len(done)
    varied = any(t.distributions for t in done)
    with any_script():
        if complete:
            figures["optimisation_history"] = _optuna_figure(optuna_plots.plot_optimization_history, study,
                                                             target_name=sweep.metric)
        else:
            figures["optimisation_history"] = _note("Optimisation history", "no complete trial yet")
        if complete >= 2 and varied:
            figures["param_importances"] = _optuna_figure(optuna_plots.plot_param_importances, study,
                                                          evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                                          target_name=sweep.metric)
            axes = 1 + len({name for t in done for name in t.distributions})  # 0.8 inch each, for their ticks and names
            figures["parallel_coordinates"] = _lines_visible(_optuna_figure(
                optuna_plots.plot_parallel_coordinate, study, width=max(9.0, 3.0 + 0.8 * axes), target_name=sweep.metric))
        else:
            for name, title in (("param_importances", "Parameter importances"), ("parallel_coordinates", "Parallel coordinates")):
                figures[name] = _note(title, "needs two complete trials that differ in a parameter")
        figures["curves_by_epoch"] = _curves_figure(sweep)
        names = _onset_params(sweep, study) if varied else []
        if names and any(t.loss for t in sweep.trials):
            figures["onset_by_params"] = _onset_figure(sweep, names)
        else:
            figures["onset_by_params"] = _note("Overfitting onset", "needs a logged val_loss and a varied parameter")
