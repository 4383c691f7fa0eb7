"""Reader for the MUGE text-to-image retrieval format (Chinese-CLIP's fine-tuning layout).

Layout of a data directory, for each split ``train``, ``valid`` and (optional) ``test``::

    {split}_imgs.tsv     image_id<TAB>base64-encoded image, one per line
    {split}_texts.jsonl  {"text_id": ..., "text": "...", "image_ids": [...]}, one per line

Ids are kept as text (``12`` and ``"12"`` are the same id). A text counts as found by a search
when any of its ``image_ids`` is returned, so a text may name several images and an image may be
named by several texts.

Bad rows are skipped and counted with their line numbers in each file's
:class:`~sweeplab.core.data_report.ReadReport`: a line without a tab, a duplicate id, base64 that
does not decode, a line that is not JSON or lacks a field, an empty text, ``image_ids`` that name
no image of the split (ids that name no image are dropped from a text that names others, and
counted); such a last line with no newline after it is counted as a last line cut short.
Images whose bytes are not a picture are found when the images are decoded, once per sweep, and
reported then. A file with nothing usable is a
:class:`~sweeplab.datasets.errors.DataError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from sweeplab.core.data_report import ReadReport
from sweeplab.datasets.errors import DataError

__all__ = ["SPLITS", "MugeData", "MugeSplit", "read_muge", "read_split"]

SPLITS = ("train", "valid", "test")
_URLSAFE = str.maketrans("-_", "+/")


def _id(value: object) -> str | None:
    """An id as text: a string or an integer (not a bool, a float or null)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


@dataclass(frozen=True)
class MugeSplit:
    """One split: encoded images in file order, and texts with the indices of their images."""

    name: str
    image_ids: list[str]
    images: list[bytes]
    text_ids: list[str]
    texts: list[str]
    targets: list[list[int]]


@dataclass(frozen=True)
class MugeData:
    """The splits of a data directory (``test`` is ``None`` without test files) and the reports."""

    train: MugeSplit
    valid: MugeSplit
    test: MugeSplit | None
    reports: tuple[ReadReport, ...]
    files: tuple[Path, ...]

    def image_report(self, split: str) -> ReadReport | None:
        """The report of ``{split}_imgs.tsv`` (to add the images that do not decode to)."""
        return next((r for r in self.reports if Path(r.source).name == f"{split}_imgs.tsv"), None)

    def splits(self) -> list[MugeSplit]:
        return [s for s in (self.train, self.valid, self.test) if s is not None]


def _lines(path: Path, report: ReadReport) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-empty UTF-8 lines; others are counted."""
    out = []
    chunks = path.read_bytes().split(b"\n")
    if chunks[-1].strip():
        report.open_end = len(chunks)  # no newline after the last line: a malformed row there was cut short
    for number, raw in enumerate(chunks, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        report.rows += 1
        try:
            out.append((number, raw.decode("utf-8").removeprefix("\ufeff")))
        except UnicodeDecodeError:
            report.skip("not UTF-8", number)
    return out


def _nothing_usable(path: Path, report: ReadReport) -> DataError:
    return DataError(f"{path}: nothing usable ({'; '.join(report.lines()) or 'the file is empty'})")


def _read_images(path: Path) -> tuple[list[str], list[bytes], ReadReport]:
    report = ReadReport(source=str(path))
    ids: list[str] = []
    images: list[bytes] = []
    seen: set[str] = set()
    for number, line in _lines(path, report):
        image_id, tab, payload = line.partition("\t")
        image_id = image_id.strip()
        if not tab or not image_id:
            report.skip("no tab", number)
        elif image_id in seen:
            report.skip("duplicate image_id", number)
        else:
            try:
                # the standard or the URL-safe alphabet (Chinese-CLIP reads both)
                data = base64.b64decode(payload.strip().translate(_URLSAFE), validate=True)
            except (binascii.Error, ValueError):
                report.skip("malformed base64", number)
                continue
            if not data:
                report.skip("malformed base64", number)
                continue
            seen.add(image_id)
            ids.append(image_id)
            images.append(data)
    report.used = len(ids)
    if not ids:
        raise _nothing_usable(path, report)
    return ids, images, report


def _read_texts(path: Path, index: dict[str, int]) -> tuple[list[str], list[str], list[list[int]], ReadReport]:
    report = ReadReport(source=str(path))
    text_ids: list[str] = []
    texts: list[str] = []
    targets: list[list[int]] = []
    seen: set[str] = set()
    unknown: list[int] = []  # lines of kept texts that also name ids of no image
    for number, line in _lines(path, report):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            report.skip("not JSON", number)
            continue
        if (not isinstance(row, dict) or _id(row.get("text_id")) is None or not isinstance(row.get("text"), str)
                or not isinstance(row.get("image_ids"), list)):
            report.skip("not an object with text_id, text and image_ids", number)
            continue
        text_id, text = _id(row["text_id"]), row["text"].strip()
        if text_id in seen:
            report.skip("duplicate text_id", number)
            continue
        if not text:
            report.skip("empty text", number)
            continue
        named = [_id(i) for i in row["image_ids"]]
        found = [index[i] for i in named if i in index]
        if not found:
            report.skip("image_ids name no image of the split", number)
            continue
        if len(found) < len(named):
            unknown.append(number)
        seen.add(text_id)
        text_ids.append(text_id)
        texts.append(text)
        targets.append(sorted(set(found)))
    report.used = len(texts)
    if unknown:
        first = ", ".join(str(n) for n in unknown[:5])
        report.note(f"{len(unknown)} kept texts also name image_ids of no image of the split, dropped (first: {first})")
    if not texts:
        raise _nothing_usable(path, report)
    return text_ids, texts, targets, report


def read_split(data_dir: Path, split: str) -> tuple[MugeSplit, list[ReadReport]]:
    """Read ``{split}_imgs.tsv`` and ``{split}_texts.jsonl``."""
    images_path, texts_path = data_dir / f"{split}_imgs.tsv", data_dir / f"{split}_texts.jsonl"
    for path in (images_path, texts_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found (a MUGE split is {split}_imgs.tsv and {split}_texts.jsonl)")
    image_ids, images, image_report = _read_images(images_path)
    text_ids, texts, targets, text_report = _read_texts(texts_path, {i: n for n, i in enumerate(image_ids)})
    return MugeSplit(split, image_ids, images, text_ids, texts, targets), [image_report, text_report]


def read_muge(data_dir: Path) -> MugeData:
    """Read the ``train``, ``valid`` and, when present, ``test`` splits of a MUGE directory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found (expected train_imgs.tsv, train_texts.jsonl, valid_...)")
    reports: list[ReadReport] = []
    splits: dict[str, MugeSplit | None] = {}
    for split in SPLITS:
        if split == "test" and not (data_dir / "test_imgs.tsv").is_file():
            splits[split] = None
            continue
        splits[split], found = read_split(data_dir, split)
        reports += found
    files = tuple(data_dir / f"{s}_{kind}" for s in SPLITS if splits[s] is not None for kind in ("imgs.tsv", "texts.jsonl"))
    return MugeData(splits["train"], splits["valid"], splits["test"], tuple(reports), files)
