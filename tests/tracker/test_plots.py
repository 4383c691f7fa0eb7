"""Curve figures: one panel for the losses and one per family of validation metrics."""

from __future__ import annotations

from sweeplab.tracker import plots
from sweeplab.core.curves import OnsetRule
from sweeplab.tracker.summary import summarise


def _history(names: list[str], n: int = 4) -> list[dict[str, float]]:
    return [{"step": float(10 * (i + 1)), "train_loss": 1.0 / (i + 1), "val_loss": 1.0 + 0.1 * abs(i - 1),
             **{name: 0.1 * (i + 1) for name in names}} for i in range(n)]


def test_retrieval_recalls_share_panels_and_the_task_metric_comes_first() -> None:
    names = ["val_recall_mean", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_i2t_r1", "val_i2t_r5", "val_i2t_r10"]
    history = _history(names)
    summary = summarise(history, "val_recall_mean", "maximize", OnsetRule(), "epoch")
    fig = plots.curves_figure(history, summary, "val_recall_mean", "epoch")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "val_recall_mean", "val_i2t", "val_t2i"]
    t2i = fig.axes[3]
    assert [line.get_label() for line in t2i.get_lines()][:3] == ["val_t2i_r1", "val_t2i_r5", "val_t2i_r10"]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    plots.close(fig)


def test_classification_panels_mark_the_best_step() -> None:
    history = _history(["val_accuracy", "val_f1_macro", "val_roc_auc"])
    summary = summarise(history, "val_accuracy", "maximize", OnsetRule(), "step")
    fig = plots.curves_figure(history, summary, "val_accuracy", "step")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "val_accuracy", "val_f1_macro", "val_roc_auc"]
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert "best step 40" in labels
    plots.close(fig)


def test_scores_span_from_the_majority_class_to_1_not_the_curves_own_range() -> None:
    history = [{"step": float(i), "train_loss": 0.7, "val_loss": 0.69, "val_accuracy": v}
               for i, v in enumerate([0.542, 0.549, 0.556], start=1)]
    summary = summarise(history, "val_accuracy", "maximize", OnsetRule(), "epoch")
    fig = plots.curves_figure(history, summary, "val_accuracy", "epoch", majority=0.5)
    low, high = fig.axes[1].get_ylim()
    assert low <= 0.5 and high >= 1.0  # a 1.4-point rise is drawn as one, not across the whole panel
    assert "majority class 0.500" in [line.get_label() for line in fig.axes[1].get_lines()]
    assert fig.axes[0].get_ylim()[0] == 0  # losses from 0
    plots.close(fig)


def _drawn_with_warnings(names: list[str]) -> tuple[list[str], list[str], str]:
    """Tick labels, warnings and legend text of a confusion figure drawn to PNG."""
    import io
    import warnings

    import numpy as np

    y = np.arange(len(names)).repeat(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plots.confusion_figure(y, y[::-1], names, "validation")
        fig.savefig(io.BytesIO(), format="png")  # drawing is when missing glyphs warn
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    legend = " ".join(t.get_text() for t in fig.texts)
    plots.close(fig)
    return ticks, [str(w.message) for w in caught], legend


def test_chinese_class_names_are_drawn_without_missing_glyphs() -> None:
    names = ["体育", "财经", "房产", "科技"]
    ticks, caught, _ = _drawn_with_warnings(names)
    assert ticks == names
    assert not [w for w in caught if "missing from font" in w or "Glyph" in w], caught


def test_a_script_no_font_has_falls_back_to_indices_and_a_legend() -> None:
    names = ["sports", "\U00010000\U00010001"]  # Linear B: in neither DejaVu Sans nor Noto Sans CJK
    assert not plots.drawable(names[1]) and plots.drawable("体育 sports")
    ticks, caught, legend = _drawn_with_warnings(names)
    assert ticks == ["0", "1"]
    assert "0: sports" in legend and "1: \\U00010000\\U00010001" in legend
    assert not [w for w in caught if "missing from font" in w or "Glyph" in w], caught
