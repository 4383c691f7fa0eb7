"""Data that lose rows: every reader names a last line cut short with its line number, and
:func:`bad_rows` says in one line when a sweep should stop (a cut file, more than 1% of a file's
rows skipped) and when it may go on."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from sweeplab.core.data_report import CUT_SHORT, ReadReport, bad_rows
from sweeplab.datasets.muge import read_muge
from sweeplab.datasets.news import read_news
from sweeplab.datasets.sentiment import read_sentiment


def _png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 20, 20)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _sentiment(root: Path, n: int) -> tuple[Path, str]:
    (root / "data").mkdir(parents=True)
    for i in range(1, n + 1):
        (root / "data" / f"{i}.txt").write_text(f"text {i}", encoding="utf-8")
        (root / "data" / f"{i}.jpg").write_bytes(b"x")
    text = "guid,tag\n" + "".join(f"{i},{('positive', 'negative', 'neutral')[i % 3]}\n" for i in range(1, n + 1))
    return root / "train.txt", text


def _cnews(root: Path, n: int) -> tuple[Path, str]:
    root.mkdir(parents=True)
    return root / "cnews.train.txt", "".join(f"{('体育', '财经')[i % 2]}\t第{i}条新闻的正文\n" for i in range(1, n + 1))


def _thucnews(root: Path, n: int) -> tuple[Path, str]:
    root.mkdir(parents=True)
    (root / "class.txt").write_text("finance\nsports\n", encoding="utf-8")
    return root / "train.txt", "".join(f"第{i}条新闻标题\t{i % 2}\n" for i in range(1, n + 1))


def _ccf(root: Path, n: int) -> tuple[Path, str]:
    root.mkdir(parents=True)
    (root / "Train_DataSet_Label.csv").write_text(
        "id,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(1, n + 1)), encoding="utf-8")
    return root / "Train_DataSet.csv", "id,title,content\n" + "".join(
        f'r{i},标题{i},"第{i}条正文，有逗号"\n' for i in range(1, n + 1))


def _muge(root: Path, n: int, cut: str) -> tuple[Path, str]:
    """A MUGE folder; returns the file of the ``cut`` kind (imgs or texts) of the train split."""
    root.mkdir(parents=True)
    image = _png()
    files = {}
    for split in ("train", "valid"):
        files[f"{split}_imgs.tsv"] = "".join(f"{i}\t{image}\n" for i in range(1, n + 1))
        files[f"{split}_texts.jsonl"] = "".join(
            json.dumps({"text_id": i, "text": f"第{i}张图", "image_ids": [i]}, ensure_ascii=False) + "\n" for i in range(1, n + 1))
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    path = root / f"train_{cut}"
    return path, files[path.name]


def _read(reader: Callable[[Path], object], path: Path) -> list[ReadReport]:
    return [r for r in reader(path.parent).reports if r.source.endswith(path.name)]  # type: ignore[attr-defined]


#: reader, how to write a data folder of n good rows (the file to damage and its text), and where
#: in the last row a copy that stopped would leave it malformed.
LAYOUTS = {
    "sentiment": (read_sentiment, _sentiment, -5),  # "60,positi": an unknown tag
    "cnews": (read_news, _cnews, -12),  # "体育": no tab
    "thucnews": (read_news, _thucnews, -2),  # "标题\t": an empty label
    "ccf": (read_news, _ccf, -6),  # inside the quoted content: a quote left open
    "muge images": (lambda d: read_muge(d), lambda root, n: _muge(root, n, "imgs.tsv"), -7),  # base64 cut short
    "muge texts": (lambda d: read_muge(d), lambda root, n: _muge(root, n, "texts.jsonl"), -7),  # not JSON
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_file_cut_mid_line_names_its_last_line(tmp_path: Path, layout: str) -> None:
    reader, write, cut = LAYOUTS[layout]
    path, text = write(tmp_path / "d", 150)
    path.write_text(text[:cut], encoding="utf-8")  # a copy that stopped mid-line
    lines = text[:cut].count("\n") + 1
    (report,) = _read(reader, path)
    assert report.cut_at == lines and dict(report.counts) == {CUT_SHORT: 1}
    assert f"{path}:{lines}: {CUT_SHORT}" in report.problems()
    message = bad_rows([report])
    assert message is not None and len(message.splitlines()) == 1
    assert message.startswith(f"{path}:{lines}: the last line is cut short"), message
    assert "--allow-bad-rows" in message and f"{report.used} usable rows" in message


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_whole_last_row_without_a_newline_is_kept(tmp_path: Path, layout: str) -> None:
    """Many editors write no final newline: a last row that parses is a row, not a cut."""
    reader, write, _ = LAYOUTS[layout]
    path, text = write(tmp_path / "d", 150)
    path.write_text(text.rstrip("\n"), encoding="utf-8")
    (report,) = _read(reader, path)
    assert report.skipped == 0 and report.cut_at is None
    assert bad_rows([report]) is None


@pytest.mark.parametrize(
    ("bad", "stops"),
    [(1, False), (2, True), (5, True)],  # of 150 rows: 0.7% goes on, 1.3% and more stop
)
def test_more_than_one_percent_of_rows_skipped_stops(tmp_path: Path, bad: int, stops: bool) -> None:
    path, text = _sentiment(tmp_path / "d", 150)
    lines = text.splitlines(keepends=True)
    broken = [3 + 7 * k for k in range(bad)]  # line numbers (1 is the header)
    for number in broken:
        lines[number - 1] = f"{number}|positive\n"
    path.write_text("".join(lines), encoding="utf-8")
    report = read_sentiment(path.parent).reports[0]
    assert report.first["malformed row (expected guid,tag)"] == [str(n) for n in broken]
    message = bad_rows([report])
    if not stops:
        assert message is None
        return
    assert message is not None and len(message.splitlines()) == 1
    shown = ", ".join(str(n) for n in broken)
    assert message == (f"{path}: {bad} of 150 rows skipped ({bad / 150:.1%}, more than 1%): "
                       f"{bad} x malformed row (expected guid,tag) at lines {shown}; fix them, or pass "
                       f"--allow-bad-rows to go on with the {150 - bad} rows left")


def test_blank_lines_are_not_rows_lost(tmp_path: Path) -> None:
    path, text = _cnews(tmp_path / "d", 50)
    path.write_text(text.replace("\n", "\n\n", 5), encoding="utf-8")
    (report,) = read_news(path.parent, seed=0).reports[:1]
    assert report.counts["empty line"] == 5 and report.lost == 0
    assert bad_rows([report]) is None
