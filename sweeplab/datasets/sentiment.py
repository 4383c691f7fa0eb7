"""Reader for the multimodal sentiment format (ECNU lab 5, from MVSA).

Layout of a data directory::

    train.txt               guid,tag   (tag: positive | neutral | negative)
    test_without_label.txt  guid,tag   (tag: null)  -- optional
    data/{guid}.txt         the text, UTF-8 or GB18030 (mixed across files)
    data/{guid}.jpg         the image

Traps handled here (each one bit the lab report's authors): guids are read as text, never as
numbers (``1`` must not become ``1.0.txt``); a text file that is not UTF-8 is retried as GB18030;
a missing or unreadable file skips that row and is counted in the :class:`ReadReport` rather than
stopping the sweep. Only a list with nothing usable is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweeplab.core.data_report import ReadReport
from sweeplab.datasets.errors import DataError

__all__ = [
    "LABELS",
    "Example",
    "SentimentData",
    "decode_text",
    "read_list",
    "read_sentiment",
]

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
HEADER = "guid,tag"
TEST_LIST = "test_without_label.txt"
ENCODINGS = ("utf-8", "gb18030")


@dataclass(frozen=True)
class Example:
    """One row: its guid (text), its text, the path of its image and its label index
    (``None`` for the unlabelled test list)."""

    guid: str
    text: str
    image: Path
    label: int | None


@dataclass(frozen=True)
class SentimentData:
    """The labelled rows of ``train.txt``, the unlabelled rows of the test list, and what was
    skipped in each."""

    labelled: list[Example]
    unlabelled: list[Example]
    reports: tuple[ReadReport, ...]


def decode_text(raw: bytes) -> str | None:
    """Decode with the first encoding that fits (UTF-8, then GB18030); ``None`` if none does."""
    for encoding in ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def read_list(path: Path, labelled: bool) -> tuple[list[tuple[int, str, str]], ReadReport]:
    """Rows ``(line number, guid, tag)`` of a ``guid,tag`` list, guids kept as text.

    A missing header is an error (the file is not this format); a malformed row or an unknown
    tag is skipped and reported with its line number, as a last line cut short when it is the
    last line and no newline follows it (see :mod:`sweeplab.core.data_report`).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a 'guid,tag' list)")
    text = decode_text(path.read_bytes())
    if text is None:
        raise DataError(f"{path}: not UTF-8 or GB18030 text")
    lines = text.splitlines()
    header = lines[0].strip().lstrip("\ufeff") if lines else ""
    if header.replace(" ", "") != HEADER:
        raise DataError(f"{path}:1: expected the header {HEADER!r}, found {header[:40]!r}")
    report = ReadReport(source=str(path))
    if lines and lines[-1].strip() and not text.endswith(("\n", "\r")):
        report.open_end = len(lines)  # a malformed last row there was cut short
    rows: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        report.rows += 1
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0]:
            report.skip("malformed row (expected guid,tag)", number)
            continue
        guid, tag = parts
        if labelled and tag not in LABELS:
            report.skip(f"unknown tag (expected one of {'/'.join(LABELS)})", number)
            continue
        rows.append((number, guid, tag))
    return rows, report


def _read_examples(data_dir: Path, list_name: str, labelled: bool) -> tuple[list[Example], ReadReport]:
    rows, report = read_list(data_dir / list_name, labelled)
    files = data_dir / "data"
    examples: list[Example] = []
    for number, guid, tag in rows:
        text_path, image_path = files / f"{guid}.txt", files / f"{guid}.jpg"
        if not text_path.is_file():
            report.skip("missing text file", f"line {number} ({text_path.name})")
            continue
        if not image_path.is_file():
            report.skip("missing image file", f"line {number} ({image_path.name})")
            continue
        text = decode_text(text_path.read_bytes())
        if text is None:
            report.skip("undecodable text file", f"line {number} ({text_path.name})")
            continue
        label = LABELS.index(tag) if labelled else None
        examples.append(Example(guid=guid, text=text.strip(), image=image_path, label=label))
    report.used = len(examples)
    return examples, report


def read_sentiment(data_dir: Path) -> SentimentData:
    """Read ``train.txt`` (required) and ``test_without_label.txt`` (optional) from ``data_dir``.

    Image files are only checked for existence here; they are decoded once per sweep by the
    preparation step, which reports the ones that do not decode.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found (expected train.txt and data/)")
    if not (data_dir / "data").is_dir():
        raise DataError(f"{data_dir}: no data/ folder (expected data/{{guid}}.txt and .jpg)")
    labelled, train_report = _read_examples(data_dir, "train.txt", labelled=True)
    if not labelled:
        raise DataError(f"{data_dir / 'train.txt'}: no usable rows ({'; '.join(train_report.lines()) or 'empty'})")
    unlabelled: list[Example] = []
    reports = [train_report]
    if (data_dir / TEST_LIST).is_file():
        unlabelled, test_report = _read_examples(data_dir, TEST_LIST, labelled=False)
        reports.append(test_report)
    return SentimentData(labelled=labelled, unlabelled=unlabelled, reports=tuple(reports))
