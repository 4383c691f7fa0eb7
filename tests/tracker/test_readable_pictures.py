"""Pictures a person can read: ten long class names that neither run into each other nor leave
the figure, every trial's line visible on its background, captions in the axis the curves were
drawn on, a table of trials that fits the page, and a link from each trial to its MLflow run."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.text import Text

from sweeplab.tracker import plots
from sweeplab.tracker.note import comparison_link, run_link
from sweeplab.tracker.query import SweepTrials, TrialCurve
from sweeplab.tracker.reading import StoredRun
from sweeplab.tracker.report import CAPTIONS, LOCAL_UI, report_html, ui_root

NEWS = (Path(__file__).parents[2] / "sweeplab" / "data" / "news" / "class.txt").read_text(encoding="utf-8").split()
#: THUCNews's categories, each made long as a headline section's name is.
LONG_CHINESE = ["体育新闻与赛事", "娱乐明星八卦", "家居装修设计", "彩票开奖结果", "房产楼市动态",
                "教育考试招生", "时尚潮流服饰", "时政要闻评论", "星座运势解读", "游戏电竞资讯"]
THUCNEWS = ["体育", "娱乐", "家居", "彩票", "房产", "教育", "时尚", "时政", "星座", "游戏", "社会", "科技", "股票", "财经"]
LONG_ENGLISH = ["entertainment and celebrity news", "international_politics_and_diplomacy", "science-and-technology",
                "sports", "real estate", "stock market", "education", "society", "video games and e-sports", "finance"]


def _corners(text: Text, renderer: RendererBase) -> np.ndarray:
    """The four corners (display pixels, in order round the edge) of a drawn text as it lies,
    turned or not: its level box turned about its anchor, as ``rotation_mode="anchor"`` draws it.
    Checked against matplotlib's own upright bounding box of the turned text."""
    angle = text.get_rotation()
    text.set_rotation(0)
    level = text.get_window_extent(renderer)
    text.set_rotation(angle)
    box = np.array([[level.x0, level.y0], [level.x1, level.y0], [level.x1, level.y1], [level.x0, level.y1]])
    if angle and text.get_rotation_mode() == "anchor":
        anchor = text.get_transform().transform(text.get_unitless_position())
        turn = np.radians(angle)
        rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
        box = (box - anchor) @ rotation.T + anchor
    upright = text.get_window_extent(renderer)
    assert np.allclose(box.min(axis=0), [upright.x0, upright.y0], atol=1.5)
    assert np.allclose(box.max(axis=0), [upright.x1, upright.y1], atol=1.5)
    return box


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex quadrilaterals share area (no edge of either separates them)."""
    for shape in (a, b):
        for i in range(4):
            edge = shape[(i + 1) % 4] - shape[i]
            axis = np.array([-edge[1], edge[0]])
            on_a, on_b = a @ axis, b @ axis
            if on_a.max() <= on_b.min() + 1e-6 or on_b.max() <= on_a.min() + 1e-6:
                return False
    return True


@pytest.mark.parametrize("names", [NEWS, LONG_CHINESE, THUCNEWS, LONG_ENGLISH],
                         ids=["news", "long-chinese", "thucnews", "long-english"])
def test_class_names_neither_run_into_each_other_nor_leave_the_figure(names: list[str]) -> None:
    y = np.arange(len(names)).repeat(3)
    fig = plots.confusion_figure(y, np.roll(y, 1), names, "validation, best step 1200")
    canvas = FigureCanvasAgg(fig)  # drawn as a PNG is
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert ["".join(t.get_text().split()) for t in labels] == ["".join(n.split()) for n in names]  # wrapped, not cut
        shapes = [_corners(t, renderer) for t in labels]
        crowded = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(shapes)) for j in range(i + 1, len(shapes))
                   if _overlap(shapes[i], shapes[j])]
        assert not crowded
    drawn = fig.get_tightbbox(renderer)  # every text, in inches, where it lies (also outside the figure)
    width, height = fig.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width and drawn.y1 <= height, (drawn, width, height)
    assert ax.yaxis.label.get_text() == "True label"
    plots.close(fig)


def _trial(number: int, value: float, params: dict[str, str], state: str = "complete") -> TrialCurve:
    curve = [(step, value * step / 300) for step in (100, 200, 300)]
    return TrialCurve(number=number, run_id=f"run-{number:03d}", state=state, params=params, value=value, best_step=300.0,
                      onset_step=200.0 if number % 2 else None, curve=curve, loss=[])  # no val_loss: no onset picture to draw


def _sweep(direction: str = "maximize", x_axis: str = "step", extra: int = 0) -> SweepTrials:
    """Eight complete trials and a pruned one, varying ``lr`` and ``batch_size`` and, with
    ``extra``, that many more numbers with long names and a model's name."""
    trials = []
    for n in range(9):
        values = {"lr": f"{10 ** (-5 + n / 3):.4g}", "batch_size": str(8 * 2 ** (n % 3))}
        values |= {f"a_rather_long_parameter_name_{k}": f"{(n + 1) * (k + 1) * 0.0012345:.6g}" for k in range(extra)}
        if extra:
            values["model_name_or_path"] = ["hfl/chinese-roberta-wwm-ext-large", "bert-base-chinese"][n % 2]
        trials.append(_trial(n, 0.30 + 0.06 * n, values, "pruned" if n == 8 else "complete"))
    parent = StoredRun(run_id="parent-run", name="s", experiment_id="7", experiment="sweeplab-news", status="FINISHED",
                       start_time=0, tags={"sweeplab.study": "news-study", "sweeplab.task": "news"})
    return SweepTrials(parent=parent, metric="val_accuracy", direction=direction, x_axis=x_axis, trials=trials)


@pytest.fixture(scope="module", params=["maximize", "minimize"])
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Figure]]:
    """The sweep's pictures, drawn once per direction (Optuna reverses its colours to minimise)."""
    from sweeplab.tracker.sweep_plots import sweep_figures

    drawn = dict(sweep_figures(_sweep(request.param)))
    for name in ("parallel_coordinates", "curves_by_epoch"):
        FigureCanvasAgg(drawn[name]).draw()  # as a PNG is drawn: colours are mapped
    yield drawn
    for figure in drawn.values():
        plots.close(figure)


def _drawn_colours(figure: Figure) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Each line collection's colours as seen (alpha laid on the background), the background and
    how many lines it holds."""
    for ax in figure.axes:
        background = np.array(to_rgba(ax.get_facecolor())[:3])
        for lines in ax.collections:
            if isinstance(lines, LineCollection) and lines.get_segments():
                colours = np.array(lines.get_edgecolor())
                alpha = colours[:, 3:4] if lines.get_alpha() is None else lines.get_alpha()
                yield colours[:, :3] * alpha + background * (1 - alpha), background, len(lines.get_segments())


def test_every_trials_line_stands_out_from_its_background(figures: dict[str, Figure]) -> None:
    for name, expected in (("parallel_coordinates", 8), ("curves_by_epoch", None)):
        found = list(_drawn_colours(figures[name]))
        assert found, name
        if expected is not None:  # one line per complete trial, each coloured by its value
            assert sum(count for _, _, count in found) == expected
        for seen, background, _ in found:
            assert np.linalg.norm(seen - background, axis=1).min() >= 0.4, (name, seen, background)


def test_captions_say_the_axis_the_curves_were_drawn_on() -> None:
    images = dict.fromkeys(CAPTIONS, b"\x89PNG")
    for axis, other in (("step", "epoch"), ("epoch", "step")):
        page = report_html(_sweep(x_axis=axis), images, "sqlite:///mlruns/mlflow.db")
        captions = dict(re.findall(r'<figure id="(\w+)">.*?<figcaption>(.*?)</figcaption>', page, re.S))
        assert f"by {axis}, with its best {axis}" in captions["curves_by_epoch"]
        assert not [c for c in captions.values() if other in c]
        assert f"best {axis}" in page and f"best {other}" not in page


def test_each_trial_in_the_report_links_to_its_run_in_the_mlflow_ui() -> None:
    sweep = _sweep()
    for source, ui in (("sqlite:////data/mlruns/mlflow.db", LOCAL_UI),
                       ("https://alice:secret@mlflow.lab.example:8443/", "https://mlflow.lab.example:8443/")):
        assert ui_root(source) == ui
        page = report_html(sweep, {}, source)
        table = page[page.index('<table class="trials">'):]
        table = table[: table.index("</table>")]
        linked = re.findall(r'<a href="([^"]+)">(\d+)</a>', table)
        assert [int(n) for _, n in linked] == [7, 6, 5, 4, 3]  # the five best, best first
        for href, number in linked:
            assert href.replace("&amp;", "&") == ui + run_link("7", f"run-{int(number):03d}")
        assert f'href="{ui}{run_link("7", "parent-run")}"' in page.replace("&amp;", "&")
        assert ui + comparison_link("7", "news-study", "best_val_accuracy", "maximize") in page.replace("&amp;", "&")
        assert "secret" not in page.split("Made by")[0]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium to lay the page out")
def test_the_table_of_trials_fits_the_page_however_many_parameters(tmp_path: Path) -> None:
    page = report_html(_sweep(extra=12), {}, "sqlite:///mlruns/mlflow.db")
    measure = ("<script>const page = document.body.getBoundingClientRect();"
               "document.title = [...document.querySelectorAll('table')].map(t => "
               "Math.round(t.getBoundingClientRect().right - page.right)).join(' ');</script>")
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", measure + "</body>"), encoding="utf-8")
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                           "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=60)
    overhang = re.search(r"<title>([-\d ]+)</title>", done.stdout)
    assert overhang is not None, done.stderr[-2000:]
    assert len(overhang.group(1).split()) == 2 and all(int(x) <= 0 for x in overhang.group(1).split()), overhang.group(1)
