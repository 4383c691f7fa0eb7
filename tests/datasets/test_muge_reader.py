"""The MUGE reader on small hand-written files, each bad case included, and the shapes generator."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sweeplab.datasets.muge import read_muge
from sweeplab.datasets.errors import DataError
from sweeplab.datasets.shapes import write_shapes


def _png(colour: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _write(folder: Path, split: str, images: list[str], texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_imgs.tsv").write_text("\n".join(images) + "\n", encoding="utf-8")
    (folder / f"{split}_texts.jsonl").write_text("\n".join(texts) + "\n", encoding="utf-8")


def _good(folder: Path, split: str) -> None:
    _write(folder, split, [f"1\t{_png((255, 0, 0))}", f"2\t{_png((0, 0, 255))}"],
           ['{"text_id": 1, "text": "红色", "image_ids": [1]}', '{"text_id": 2, "text": "蓝色", "image_ids": [2, 1]}'])


def test_every_bad_case_is_counted_with_its_line(tmp_path: Path) -> None:
    images = [
        f"10\t{_png((255, 0, 0))}",                      # 1 ok
        f"11\t{_png((0, 255, 0))}",                      # 2 ok
        "12\tnot*base64!",                               # 3 malformed base64
        f"10\t{_png((0, 0, 0))}",                        # 4 duplicate image_id
        "no tab here",                                   # 5 no tab
        f"13\t{base64.b64encode(b'not an image').decode()}",  # 6 decodes as base64, not as an image
    ]
    texts = [
        json.dumps({"text_id": 1, "text": "红色的图", "image_ids": [10]}, ensure_ascii=False),   # 1 ok
        '{"text_id": 2, "text": "绿色", "image_ids": [11, 99]}',                                # 2 ok, 99 dropped
        '{"text_id": 3, "text": "不存在", "image_ids": [98, 99]}',                               # 3 names no image
        '{"text_id": 1, "text": "重复", "image_ids": [10]}',                                    # 4 duplicate text_id
        "{not json",                                                                           # 5 not JSON
        '{"text_id": 6, "text": "   ", "image_ids": [10]}',                                   # 6 empty text
        '{"text_id": 7, "text": "没有图"}',                                                     # 7 no image_ids
        '{"text_id": 8, "text": "图12", "image_ids": ["12"]}',                                 # 8 its image was malformed
    ]
    _write(tmp_path, "train", images, texts)
    _good(tmp_path, "valid")
    data = read_muge(tmp_path)
    assert data.test is None
    assert data.train.image_ids == ["10", "11", "13"]
    assert data.train.texts == ["红色的图", "绿色"]
    assert data.train.targets == [[0], [1]]
    image_report, text_report = data.reports[0], data.reports[1]
    assert dict(image_report.counts) == {"malformed base64": 1, "duplicate image_id": 1, "no tab": 1}
    assert image_report.first["malformed base64"] == ["3"] and image_report.first["duplicate image_id"] == ["4"]
    assert dict(text_report.counts) == {
        "image_ids name no image of the split": 2, "duplicate text_id": 1, "not JSON": 1, "empty text": 1,
        "not an object with text_id, text and image_ids": 1,
    }
    assert text_report.first["image_ids name no image of the split"] == ["3", "8"]
    assert text_report.first["not JSON"] == ["5"]
    assert text_report.notes == ["1 kept texts also name image_ids of no image of the split, dropped (first: 2)"]
    assert data.valid.targets == [[0], [0, 1]]  # ids as text: 2 and 1 are images 1 and 0, sorted


def test_nothing_usable_is_one_clear_error(tmp_path: Path) -> None:
    _write(tmp_path, "train", ["1\t%%%", "2\t"], ['{"text_id": 1, "text": "a", "image_ids": [1]}'])
    _good(tmp_path, "valid")
    with pytest.raises(DataError, match=r"train_imgs\.tsv: nothing usable \(.*2 x malformed base64 \(first: 1, 2\)"):
        read_muge(tmp_path)
    _good(tmp_path, "train")
    (tmp_path / "valid_texts.jsonl").write_text('{"text_id": 1, "text": "a", "image_ids": [7]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"valid_texts\.jsonl: nothing usable .*image_ids name no image"):
        read_muge(tmp_path)
    (tmp_path / "valid_texts.jsonl").unlink()
    with pytest.raises(DataError, match=r"valid_texts\.jsonl: file not found \(a MUGE split is"):
        read_muge(tmp_path)
    with pytest.raises(DataError, match="data directory not found"):
        read_muge(tmp_path / "missing")


def test_generated_shapes_are_muge_with_shared_images_and_consistent_captions(tmp_path: Path) -> None:
    folder = write_shapes(tmp_path / "shapes", {"train": 60, "valid": 30}, seed=3, image_size=32)
    again = write_shapes(tmp_path / "again", {"train": 60, "valid": 30}, seed=3, image_size=32)
    assert (folder / "train_texts.jsonl").read_bytes() == (again / "train_texts.jsonl").read_bytes()
    data = read_muge(folder)
    assert all(r.skipped == 0 for r in data.reports)
    assert len(data.train.image_ids) == 60 and len(data.valid.image_ids) == 30
    assert len(set(data.train.texts)) == len(data.train.texts)  # identical captions written once
    assert max(len(t) for t in data.train.targets) > 1  # a caption names several images
    named = [i for t in data.train.targets for i in t]
    assert len(named) > len(set(named))  # an image is named by several captions
    assert set(named) == set(range(60))  # every image has a caption
    partial = [t for text, t in zip(data.train.texts, data.train.targets) if text.startswith("一个")]
    full = [t for text, t in zip(data.train.texts, data.train.targets) if "，" in text]
    assert partial and full
    assert sum(map(len, partial)) / len(partial) > sum(map(len, full)) / len(full)  # shape alone: more images
    with Image.open(io.BytesIO(data.train.images[0])) as image:
        assert image.size == (32, 32)


def test_url_safe_base64_and_strict_field_types(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (250, 250, 250)).save(out, format="JPEG")
    url_safe = base64.urlsafe_b64encode(out.getvalue()).decode("ascii")
    _write(tmp_path, "train", [f"1\t{url_safe}", f"2\t{_png((0, 0, 255))}"], [
        '{"text_id": 1, "text": "白", "image_ids": [1]}',          # 1 ok
        '{"text_id": 2, "text": null, "image_ids": [1]}',          # 2 text is not a string
        '{"text_id": 3.0, "text": "蓝", "image_ids": [2]}',         # 3 a float id
        '{"text_id": true, "text": "蓝", "image_ids": [2]}',        # 4 a bool id
        '{"text_id": "5", "text": "蓝", "image_ids": ["2"]}',       # 5 ok: ids as text
    ])
    _good(tmp_path, "valid")
    data = read_muge(tmp_path)
    assert data.train.image_ids == ["1", "2"] and data.reports[0].skipped == 0
    assert data.train.text_ids == ["1", "5"] and data.train.targets == [[0], [1]]
    assert dict(data.reports[1].counts) == {"not an object with text_id, text and image_ids": 3}
