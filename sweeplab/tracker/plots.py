"""Figures logged with each trial: the learning curves and the confusion matrix.

Class names may be in any script (THUCNews's are Chinese). Text is drawn with DejaVu Sans, then
Noto Sans CJK SC (the font file the ``mplfonts`` package installs from the package registry) for
what DejaVu lacks; a class name with a character neither font has is shown as its class index,
with the names in a legend beside the figure, instead of empty boxes and glyph warnings. Ten
long names stay apart and inside the confusion matrix's figure: wrapped beside the rows, turned
below the columns, the figure sized around them (:func:`confusion_figure`).

Figures are :class:`~matplotlib.figure.Figure` objects made directly, not through pyplot: drawing
them neither chooses nor switches matplotlib's backend, nor adds figures to pyplot's, so a
notebook that sweeps keeps its own plotting as it was (the confusion matrix's gets a plain Agg
canvas of its own, to measure its text)."""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from sweeplab.tracker.summary import TrialSummary

__all__ = ["any_script", "close", "confusion_figure", "curves_figure", "drawable"]


def _panels(history: Sequence[Mapping[str, float]], metric: str) -> list[list[str]]:
    """Validation metrics other than the loss, grouped one panel per family (``val_t2i_r1``,
    ``val_t2i_r5``... share ``val_t2i``), the task metric's panel first."""
    others = {k for p in history for k in p if k.startswith("val_") and k not in ("val_loss", metric)}
    groups: dict[str, list[str]] = {metric: [metric]}
    for name in sorted(others, key=lambda n: (n.rsplit("_", 1)[0], len(n), n)):  # r1, r5, r10
        groups.setdefault(name.rsplit("_", 1)[0], []).append(name)
    return list(groups.values())


def _bounded(ax: Axes, values: Sequence[float], floor: float) -> None:
    """Scores between 0 and 1 (accuracy, F1, recall@K) on an axis from ``floor`` (0, or the
    majority class's accuracy) to 1, so that 0.542 -> 0.556 looks as small as it is; other
    values keep matplotlib's limits."""
    finite = [v for v in values if np.isfinite(v)]
    if finite and 0.0 <= min(finite) and max(finite) <= 1.0:
        ax.set_ylim(min(floor, min(finite)) - 0.02, 1.02)


def curves_figure(history: Sequence[Mapping[str, float]], summary: TrialSummary, metric: str, x_axis: str = "epoch",
                  majority: float | None = None) -> Figure:
    """One panel for the losses (training and validation) and one per family of other validation
    metrics (the task metric first: accuracy, macro F1, ROC-AUC, or recall@K... as the lab reports
    plotted them), all against the step, with the best evaluation and the overfitting onset marked.
    Losses start at 0; scores in [0, 1] span up to 1 from 0, or from ``majority`` (the validation
    accuracy of always answering the most frequent class, drawn on the accuracy panel)."""
    steps = [p["step"] for p in history]
    panels = _panels(history, metric)
    fig = Figure(figsize=(4.2 * (1 + len(panels)), 4))
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)
    ax_loss, metric_axes = axes[0][0], axes[0][1:]
    ax_loss.plot(steps, [p.get("train_loss", np.nan) for p in history], "o-", label="train_loss")
    ax_loss.plot(steps, [p.get("val_loss", np.nan) for p in history], "o-", label="val_loss")
    ax_loss.set_title("loss")
    losses = [p.get(k, np.nan) for p in history for k in ("train_loss", "val_loss")]
    if all(v >= 0 for v in losses if np.isfinite(v)):  # a negative loss (a log-likelihood) keeps matplotlib's limits
        ax_loss.set_ylim(bottom=0)
    for ax, names in zip(metric_axes, panels):
        values = []
        for name in names:
            values += [p.get(name, np.nan) for p in history]
            ax.plot(steps, [p.get(name, np.nan) for p in history], "o-", label=name)
        accuracy = majority is not None and "val_accuracy" in names
        if accuracy:
            ax.axhline(majority, color="grey", linestyle="-.", linewidth=1, label=f"majority class {majority:.3f}")
        _bounded(ax, values, majority if accuracy else 0.0)
        ax.set_title(names[0] if len(names) == 1 else names[0].rsplit("_", 1)[0])
    for ax in axes[0]:
        if summary.best is not None:
            ax.axvline(steps[summary.best], color="tab:green", linestyle="--", label=f"best {x_axis} {steps[summary.best]:g}")
        if summary.onset is not None:
            ax.axvline(
                steps[summary.onset.index], color="tab:red", linestyle=":",
                label=f"overfit onset {steps[summary.onset.index]:g} ({summary.tags['sweeplab.overfit_criterion']})",
            )
        ax.set_xlabel(x_axis)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


#: The CJK font file inside the ``mplfonts`` package (SIL Open Font License).
_CJK_FONT = Path("fonts") / "NotoSansCJKsc-Regular.otf"


@functools.cache
def _fonts() -> tuple[list[str], list[ft2font.FT2Font]]:
    """The font families text is drawn with, in order of preference, and their font files (to
    ask whether a character has a glyph). The CJK font is registered with matplotlib on first
    use, found without importing ``mplfonts``; without it, DejaVu Sans alone."""
    families, files = ["DejaVu Sans"], [ft2font.FT2Font(font_manager.findfont("DejaVu Sans"))]
    spec = importlib.util.find_spec("mplfonts")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _CJK_FONT
        if path.is_file():
            font_manager.fontManager.addfont(str(path))
            font = ft2font.FT2Font(str(path))
            families.append(font.family_name)
            files.append(font)
            break
    return families, files


def drawable(text: str) -> bool:
    """Whether every character of ``text`` has a glyph in one of the fonts plots use."""
    files = _fonts()[1]
    return all(ch.isspace() or any(font.get_char_index(ord(ch)) for font in files) for ch in text)


@contextmanager
def any_script() -> Iterator[None]:
    """Draw with the fonts of :func:`_fonts`, each character from the first that has it."""
    with matplotlib.rc_context({"font.family": _fonts()[0]}):
        yield


#: Side of one cell of the confusion matrix, in inches: room for a four-digit count, for three
#: lines of a wrapped class name beside its row, and for a class name turned 45 degrees clear of
#: its neighbours' below its column.
_CELL = 0.55
#: The matrix's largest side, in inches: more classes get smaller cells and smaller type.
_MOST = 12.0
#: Columns (a CJK character counts two) after which a class name goes on to a new line.
_WRAP = 16


def _columns(text: str) -> int:
    """How wide ``text`` is in columns: two for a wide (CJK) character, one for others."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut where a line may break: after a space, underscore, hyphen or slash, and on
    both sides of a wide (CJK) character, which Chinese breaks between."""
    piece = ""
    for ch in text:
        if _columns(ch) == 2:
            if piece:
                yield piece
            piece = ""
            yield ch
        else:
            piece += ch
            if ch in " _-/":
                yield piece
                piece = ""
    if piece:
        yield piece


def _lines(text: str, width: int) -> list[str]:
    """``text`` on lines of at most ``width`` columns (:func:`_columns`), broken where a line may
    break (:func:`_pieces`), inside a word only when the word alone is wider."""
    lines, line = [], ""
    for piece in _pieces(text):
        while _columns(line + piece.rstrip()) > width:
            if line:
                lines.append(line.rstrip())
                line = ""
                continue
            cut = next(i for i in range(len(piece), 0, -1) if _columns(piece[:i]) <= width or i == 1)
            lines.append(piece[:cut])
            piece = piece[cut:]
        line += piece
    lines.append(line.rstrip())
    return [part for part in lines if part]


def _wrapped(text: str, lines: int) -> str:
    """``text`` on at most ``lines`` lines of :data:`_WRAP` columns, or of wider ones when it
    needs them: so that a long class name beside its row takes a few short lines, no taller
    than the row, rather than one line reaching far into the page."""
    width = _WRAP
    while len(shown := _lines(text, width)) > lines:
        width += 4
    return "\n".join(shown)


def _fit_around(fig: Figure, ax: Axes, side: float, margin: float = 0.1) -> None:
    """Make ``ax`` a ``side`` inch square and the figure just large enough for everything drawn
    around it (tick labels, axis labels, title, a legend), with ``margin`` inches to spare: the
    figure grows with the class names instead of clipping them or squeezing the matrix."""
    fig.set_size_inches(side, side)
    ax.set_position((0, 0, 1, 1))
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # in inches, also what lies outside the figure
    width, height = drawn.width + 2 * margin, drawn.height + 2 * margin
    fig.set_size_inches(width, height)
    ax.set_position(((margin - drawn.x0) / width, (margin - drawn.y0) / height, side / width, side / height))


def _turn_if_crowded(ax: Axes, cell_px: float) -> None:
    """Turn the predicted classes' names 45 degrees when one is wider than its cell, so that each
    stays clear of its neighbours; short names (Chinese ones often) stay level."""
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[union-attr]
    labels = ax.get_xticklabels()
    if any(label.get_window_extent(renderer).width > 0.9 * cell_px for label in labels):
        for label in labels:
            label.set(rotation=45, ha="right", va="top", rotation_mode="anchor")


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Confusion matrix (scikit-learn's display) of the predictions at the best evaluation, its
    axes labelled with the class names, or with class indices and a legend of the names when a
    name has a character no font here can draw.

    Ten long names stay readable: each cell is :data:`_CELL` inches (smaller, with smaller type,
    past :data:`_MOST` inches of matrix), names beside the rows are wrapped to the row's height,
    names below the columns are turned when one would run into its neighbours, and the figure is
    sized around all of it (:func:`_fit_around`), so that no label is clipped."""
    count = len(class_names)
    cell = min(_CELL, _MOST / max(count, 1))
    size = max(5.0, 9.0 * cell / _CELL)
    with any_script():
        readable = all(drawable(name) for name in class_names)
        labels = list(class_names) if readable else [str(i) for i in range(count)]
        fig = Figure()
        FigureCanvasAgg(fig)  # measures text (no backend is chosen or switched)
        ax = fig.subplots()
        ConfusionMatrixDisplay.from_predictions(
            y_true, y_pred, labels=list(range(count)), display_labels=labels, ax=ax, colorbar=False,
            text_kw={"fontsize": size},
        )
        ax.tick_params(labelsize=size)
        lines = max(1, int(cell * 72 / (1.25 * size)))  # of a name beside its row, at 1.2 line spacing
        ax.set_yticks(range(count), [_wrapped(label, lines) for label in labels])
        ax.set_title(title)
        if not readable:
            legend = "\n".join(f"{i}: {name if drawable(name) else name.encode('unicode_escape').decode()}"
                               for i, name in enumerate(class_names))
            fig.text(1.05, 0.5, legend, va="center", fontsize=8, transform=ax.transAxes)
        side = max(2.5, cell * count)
        _turn_if_crowded(ax, side / max(count, 1) * fig.dpi)
        _fit_around(fig, ax, side)
    return fig


def close(fig: Figure) -> None:
    """Free what a figure drew now rather than when its last reference goes (it is in no
    registry: pyplot never saw it)."""
    fig.clear()
