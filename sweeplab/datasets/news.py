"""Readers for the news classification layouts, all giving the same :class:`NewsData`.

Three layouts, detected from the file names in the data directory (or named with ``layout``):

``cnews`` (the THUCNews subset of the lab report)::

    cnews.train.txt  cnews.val.txt  cnews.test.txt     中文标签<TAB>标题+正文, one per line

  The label set is every label of the training file, sorted; a validation or test line whose
  label is not in it is skipped and counted.

``thucnews`` (the THUCNews title set of ``Chinese-Text-Classification-Pytorch``)::

    train.txt  dev.txt  test.txt     title<TAB>label_id, one per line
    class.txt                        label names, the id is the line index

``ccf`` (CCF BDCI 2019 internet news sentiment)::

    Train_DataSet.csv        id,title,content   (CSV with a header; fields may span lines)
    Train_DataSet_Label.csv  id,label

  The text is the title followed by the content; the labels are the distinct labels of the rows
  kept, sorted. There are no separate validation or test files: both are held out of the labelled
  rows with a seeded, stratified split.

Common rules: files are UTF-8 (a leading BOM is dropped). A line that is not UTF-8, has no tab,
has empty text or a label outside the label set is skipped and counted, with its line number, in
the file's :class:`~sweeplab.core.data_report.ReadReport`; such a last line with no newline after
it (or a CSV file ending inside a quoted field) is counted as a last line cut short. A file that
exists but holds nothing usable is a :class:`~sweeplab.datasets.errors.DataError` (one line, exit
2). A missing validation file is replaced by a stratified hold-out of the training rows; a missing
test file means no test evaluation.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sweeplab.core.data_report import CUT_SHORT, EMPTY_LINE, ReadReport
from sweeplab.datasets.errors import DataError
from sweeplab.datasets.splits import stratified_split

__all__ = ["LAYOUTS", "NewsData", "NewsSplit", "detect_layout", "read_news"]

#: layout -> (train, validation, test) file names; validation and test are optional.
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "cnews": ("cnews.train.txt", "cnews.val.txt", "cnews.test.txt"),
    "thucnews": ("train.txt", "dev.txt", "test.txt"),
    "ccf": ("Train_DataSet.csv", "", ""),
}
CCF_LABELS = "Train_DataSet_Label.csv"
THUCNEWS_CLASSES = "class.txt"
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by surrogateescape


@dataclass(frozen=True)
class NewsSplit:
    """Texts with their label indices and where each came from (``file:line``)."""

    texts: list[str]
    labels: list[int]
    origin: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: list[int]) -> NewsSplit:
        return NewsSplit([self.texts[i] for i in index], [self.labels[i] for i in index], [self.origin[i] for i in index])


@dataclass(frozen=True)
class NewsData:
    """The splits of one data directory, its label names and what each reader skipped.
    ``test`` is ``None`` when the layout has no test file."""

    layout: str
    classes: tuple[str, ...]
    train: NewsSplit
    val: NewsSplit
    test: NewsSplit | None
    reports: tuple[ReadReport, ...]
    files: tuple[Path, ...]


def detect_layout(data_dir: Path) -> str:
    """The layout whose training file is in ``data_dir``; a clear error naming them otherwise."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    found = [name for name, files in LAYOUTS.items() if (data_dir / files[0]).is_file()]
    if len(found) != 1:
        expected = ", ".join(f"{files[0]} ({name})" for name, files in LAYOUTS.items())
        what = "several layouts" if found else "no news training file"
        raise DataError(f"{data_dir}: {what} found (expected exactly one of: {expected}); name one with --set layout=NAME")
    return found[0]


def _decoded_lines(path: Path, report: ReadReport) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of every line; text is ``None`` when the line is not UTF-8. A last
    line with no newline after it is marked as the report's ``open_end``."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file ends with a newline
    elif lines[-1].strip():
        report.open_end = len(lines)  # a malformed last row there was cut short
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        yield number, None if _UNDECODABLE.search(line) else line


def _finish(report: ReadReport, split: NewsSplit, path: Path) -> NewsSplit:
    report.used = len(split)
    if not split.texts:
        raise DataError(f"{path}: no usable lines ({'; '.join(report.lines()) or 'the file is empty'})")
    return split


def _read_tab_file(path: Path, label_of: dict[str, int] | None, label_first: bool) -> tuple[NewsSplit, ReadReport]:
    """Read a ``label<TAB>text`` (``label_first``) or ``text<TAB>label`` file. ``label_of`` maps
    a label as written to its index; ``None`` accepts every label (the training file of a layout
    whose label set comes from the data), indexed later by :func:`_index_labels`."""
    report = ReadReport(source=str(path))
    texts, labels, origin = [], [], []
    for number, line in _decoded_lines(path, report):
        report.rows += 1
        if line is None:
            report.skip("not UTF-8", number)
            continue
        if not line.strip():
            report.skip(EMPTY_LINE, number)
            continue
        if "\t" not in line:
            report.skip("no tab", number)
            continue
        left, right = line.split("\t", 1) if label_first else line.rsplit("\t", 1)
        label, text = (left.strip(), right.strip()) if label_first else (right.strip(), left.strip())
        if not text:
            report.skip("empty text", number)
            continue
        if label_of is not None and label not in label_of:
            report.skip("label not in the label set", number)
            continue
        texts.append(text)
        labels.append(label_of[label] if label_of is not None else label)
        origin.append(f"{path.name}:{number}")
    return _finish(report, NewsSplit(texts, labels, origin), path), report


def _index_labels(split: NewsSplit) -> tuple[NewsSplit, tuple[str, ...]]:
    """Replace written labels by indices into their sorted set."""
    classes = tuple(sorted(set(split.labels)))
    index = {name: i for i, name in enumerate(classes)}
    return NewsSplit(split.texts, [index[label] for label in split.labels], split.origin), classes


def _held_out(train: NewsSplit, fraction: float, seed: int, source: Path) -> tuple[NewsSplit, NewsSplit]:
    try:
        kept, held = stratified_split(train.labels, fraction, seed)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    return train.subset(kept), train.subset(held)


def _read_classes(path: Path) -> tuple[str, ...]:
    """Label names, one per line; the id of a name is its line index (from 0)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (the thucnews layout names its labels there, one per line)")
    try:
        lines = path.read_text(encoding="utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if not names:
        raise DataError(f"{path}: no label names")
    if "" in names:
        raise DataError(f"{path}:{names.index('') + 1}: empty label name (the id of a name is its line index)")
    return names


def _optional_split(path: Path, label_of: dict[str, int], label_first: bool, reports: list[ReadReport]) -> NewsSplit | None:
    if not path.name or not path.is_file():
        return None
    split, report = _read_tab_file(path, label_of, label_first)
    reports.append(report)
    return split


def _read_tab_layout(data_dir: Path, layout: str, seed: int, val_fraction: float) -> NewsData:
    train_name, val_name, test_name = LAYOUTS[layout]
    reports: list[ReadReport] = []
    if layout == "thucnews":
        classes = _read_classes(data_dir / THUCNEWS_CLASSES)
        label_of = {str(i): i for i in range(len(classes))}
        train, report = _read_tab_file(data_dir / train_name, label_of, label_first=False)
    else:
        raw, report = _read_tab_file(data_dir / train_name, None, label_first=True)
        train, classes = _index_labels(raw)
        label_of = {name: i for i, name in enumerate(classes)}
    reports.append(report)
    label_first = layout == "cnews"
    val = _optional_split(data_dir / val_name, label_of, label_first, reports)
    if val is None:
        train, val = _held_out(train, val_fraction, seed, data_dir / train_name)
        report.note(f"no {val_name}: {len(val)} of {len(train) + len(val)} training rows (seed {seed}) held out for validation")
    test = _optional_split(data_dir / test_name, label_of, label_first, reports)
    files = tuple(p for p in (data_dir / n for n in (train_name, val_name, test_name, THUCNEWS_CLASSES)) if p.is_file())
    return NewsData(layout, classes, train, val, test, tuple(reports), files)


def _csv_rows(path: Path, report: ReadReport, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header naming at least ``columns``; ``(line, row)``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}:1: expected a header with {', '.join(columns)}, found {','.join(header)!r}")
    where = {c: header.index(c) for c in columns}
    line = reader.line_num
    rows: list[tuple[int, list[str]]] = []
    for fields in reader:
        start, line = line + 1, reader.line_num  # a row starts after the previous one ends
        if fields:  # else a blank line
            rows.append((start, fields))
    open_quote = False
    if rows and not text.endswith(("\n", "\r")):
        report.open_end = rows[-1][0]  # a malformed last row there was cut short
        # A quoted field the end of the file left open takes in a newline put after it; a closed one does not.
        open_quote = list(csv.reader(io.StringIO(text + "\n", newline="")))[-1] != rows[-1][1]
    for start, fields in rows:
        report.rows += 1
        if any(_UNDECODABLE.search(v) for v in fields):
            report.skip("not UTF-8", start)
            continue
        if open_quote and start == report.open_end:
            report.skip(CUT_SHORT, start)
            continue
        yield start, {c: (fields[i] if i < len(fields) else "").strip() for c, i in where.items()}


def _read_ccf(data_dir: Path, seed: int, val_fraction: float) -> NewsData:
    text_path, label_path = data_dir / LAYOUTS["ccf"][0], data_dir / CCF_LABELS
    label_report = ReadReport(source=str(label_path))
    labels: dict[str, str] = {}
    for number, row in _csv_rows(label_path, label_report, ("id", "label")):
        if not row["id"] or not row["label"]:
            label_report.skip("empty id or label", number)
        elif row["id"] in labels:
            label_report.skip("duplicate id", number)
        else:
            labels[row["id"]] = row["label"]
    label_report.used = len(labels)
    if not labels:
        raise DataError(f"{label_path}: no usable lines ({'; '.join(label_report.lines()) or 'the file is empty'})")
    report = ReadReport(source=str(text_path))
    texts, written, origin = [], [], []
    for number, row in _csv_rows(text_path, report, ("id", "title", "content")):
        title, content = row["title"], row["content"]
        text = title if content in ("", title) else f"{title} {content}".strip()
        if not text:
            report.skip("empty text", number)
        elif row["id"] not in labels:
            report.skip("no label in " + CCF_LABELS, number)
        else:
            texts.append(text)
            written.append(labels[row["id"]])
            origin.append(f"{text_path.name}:{number}")
    raw, classes = _index_labels(_finish(report, NewsSplit(texts, written, origin), text_path))
    if not val_fraction < 0.5:
        raise DataError(f"--val-fraction {val_fraction}: the ccf layout holds out that share twice (validation and test); "
                        "expected less than 0.5")
    rest, test = _held_out(raw, val_fraction, seed, text_path)
    train, val = _held_out(rest, val_fraction / (1 - val_fraction), seed, text_path)
    report.note(f"{len(val)} and {len(test)} of {len(raw)} rows (seed {seed}) held out for validation and test")
    return NewsData("ccf", classes, train, val, test, (report, label_report), (text_path, label_path))


def read_news(data_dir: Path, layout: str = "auto", seed: int = 0, val_fraction: float = 0.1) -> NewsData:
    """Read a news data directory in any of :data:`LAYOUTS` (see the module docstring)."""
    data_dir = Path(data_dir)
    if layout == "auto":
        layout = detect_layout(data_dir)
    elif layout not in LAYOUTS:
        raise DataError(f"layout {layout!r}: expected auto or one of {', '.join(LAYOUTS)}")
    elif not (data_dir / LAYOUTS[layout][0]).is_file():
        raise DataError(f"{data_dir / LAYOUTS[layout][0]}: file not found (the {layout} layout's training file)")
    if layout == "ccf":
        return _read_ccf(data_dir, seed, val_fraction)
    return _read_tab_layout(data_dir, layout, seed, val_fraction)
