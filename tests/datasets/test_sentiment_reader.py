from __future__ import annotations

from pathlib import Path

import pytest

from sweeplab.datasets.errors import DataError
from sweeplab.datasets.sentiment import decode_text, read_sentiment
from sweeplab.datasets.splits import stratified_split


def _dataset(root: Path, rows: list[str], files: dict[str, bytes]) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "train.txt").write_text("guid,tag\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    for name, content in files.items():
        (root / "data" / name).write_bytes(content)
    return root


def test_mixed_encodings_decode_utf8_then_gb18030(tmp_path: Path) -> None:
    text = "中文 “引号” …"
    root = _dataset(
        tmp_path / "d",
        ["1,positive", "2,negative"],
        {"1.txt": text.encode("utf-8"), "1.jpg": b"x", "2.txt": text.encode("gb18030"), "2.jpg": b"x"},
    )
    data = read_sentiment(root)
    assert [e.text for e in data.labelled] == [text, text]
    assert decode_text(b"\xff\xfe\xfd\xfc\x80") is None


def test_guids_are_text_never_floats(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d", ["1,neutral", "007,positive"], {
        "1.txt": b"one", "1.jpg": b"x", "007.txt": b"seven", "007.jpg": b"x", "1.0.txt": b"wrong",
    })
    data = read_sentiment(root)
    assert [e.guid for e in data.labelled] == ["1", "007"]
    assert [e.text for e in data.labelled] == ["one", "seven"]
    assert data.labelled[0].image.name == "1.jpg"


def test_missing_files_and_bad_rows_are_counted_with_line_numbers(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path / "d",
        ["1,positive", "2,positive", "3,angry", "4", "5,negative"],
        {"1.txt": b"a", "1.jpg": b"x", "2.txt": b"b", "3.txt": b"c", "3.jpg": b"x", "5.jpg": b"x"},
    )
    data = read_sentiment(root)
    report = data.reports[0]
    assert [e.guid for e in data.labelled] == ["1"]
    assert report.rows == 5 and report.used == 1 and report.skipped == 4
    assert report.first["missing image file"] == ["line 3 (2.jpg)"]
    assert report.first["missing text file"] == ["line 6 (5.txt)"]
    assert report.first["malformed row (expected guid,tag)"] == ["5"]
    assert any("unknown tag" in line and "(first: 4)" in line for line in report.lines())


def test_test_list_is_optional_and_unlabelled(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d", ["1,positive"], {"1.txt": b"a", "1.jpg": b"x", "9.txt": b"t", "9.jpg": b"x"})
    assert read_sentiment(root).unlabelled == []
    (root / "test_without_label.txt").write_text("guid,tag\n9,null\n", encoding="utf-8")
    data = read_sentiment(root)
    assert [(e.guid, e.label) for e in data.unlabelled] == [("9", None)]


def test_a_list_without_the_header_is_a_one_line_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d", [], {})
    (root / "train.txt").write_text("id,label\n1,positive\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt:1: expected the header 'guid,tag'"):
        read_sentiment(root)


def test_nothing_usable_and_missing_directory_are_errors(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d", ["1,positive"], {})
    with pytest.raises(DataError, match="no usable rows.*missing text file"):
        read_sentiment(root)
    with pytest.raises(DataError, match="data directory not found"):
        read_sentiment(tmp_path / "nowhere")


def test_split_is_seeded_and_stratified() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(val) == 20 and not set(train) & set(val)
    assert sorted(labels[i] for i in val).count(2) == 4
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)
