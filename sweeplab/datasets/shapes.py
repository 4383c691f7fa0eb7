"""A generated MUGE-format retrieval set with real structure: coloured shapes described in Chinese.

No MUGE data can be downloaded here, so this writes a small set in exactly MUGE's format that a
model can learn from: each image holds one or two shapes (圆形, 正方形, 三角形, 菱形) in one of six
colours, each in one of five places (左上, 右上, 左下, 右下, 中间), on a lightly noisy
background, with small random shifts in place and size. Each image gets two captions:

* a full description (``左上角是一个红色的圆形，右下角是一个蓝色的三角形``), whose ``image_ids`` are
  every image of the split holding all those shapes in those places;
* a partial one, naming one of its shapes with or without its place (``一个红色的圆形``), whose
  ``image_ids`` are every image of the split holding such a shape.

Identical captions are written once, so texts name several images and images are named by
several texts, as in MUGE. Chance recall@1 is about one image in the split. Deterministic for a
seed.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["COLOURS", "PLACES", "SHAPES", "write_shapes"]

SHAPES = ("圆形", "正方形", "三角形", "菱形")
COLOURS: dict[str, tuple[int, int, int]] = {
    "红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220),
    "黄色": (235, 200, 30), "紫色": (140, 60, 180), "橙色": (245, 130, 30),
}
#: place name -> centre as a fraction of the image side
PLACES: dict[str, tuple[float, float]] = {
    "左上角": (0.27, 0.27), "右上角": (0.73, 0.27), "左下角": (0.27, 0.73), "右下角": (0.73, 0.73), "中间": (0.5, 0.5),
}
SIZES = {"train": 800, "valid": 150, "test": 150}

Thing = tuple[str, str, str]  # (shape, colour, place)


def _draw(things: list[Thing], size: int, rng: random.Random) -> bytes:
    """PNG bytes of the shapes on a light, noisy background."""
    base = rng.randint(215, 245)
    image = Image.new("RGB", (size, size), (base, base, base))
    pixels = image.load()
    for _ in range(size * size // 24):
        x, y = rng.randrange(size), rng.randrange(size)
        shade = base + rng.randint(-25, 10)
        pixels[x, y] = (shade, shade, shade)
    draw = ImageDraw.Draw(image)
    for shape, colour, place in things:
        fx, fy = PLACES[place]
        cx, cy = (fx + rng.uniform(-0.05, 0.05)) * size, (fy + rng.uniform(-0.05, 0.05)) * size
        r = size * rng.uniform(0.12, 0.17)
        fill = COLOURS[colour]
        if shape == "圆形":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "正方形":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "三角形":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _describe(thing: Thing, with_place: bool) -> str:
    shape, colour, place = thing
    return f"{place}是一个{colour}的{shape}" if with_place else f"一个{colour}的{shape}"


def _split(name: str, count: int, first_id: int, size: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """The ``imgs.tsv`` lines and ``texts.jsonl`` lines of one split."""
    scenes: list[list[Thing]] = []
    for _ in range(count):
        places = rng.sample(list(PLACES), rng.choice((1, 2)))
        scenes.append(sorted((rng.choice(SHAPES), rng.choice(list(COLOURS)), p) for p in places))
    ids = [str(first_id + i) for i in range(count)]
    image_lines = [f"{i}\t{base64.b64encode(_draw(s, size, rng)).decode('ascii')}" for i, s in zip(ids, scenes)]

    captions: dict[str, list[str]] = {}  # caption -> image ids it describes
    for scene in scenes:
        full = "，".join(_describe(t, with_place=True) for t in scene)
        captions.setdefault(full, [i for i, s in zip(ids, scenes) if set(scene) <= set(s)])
        thing = rng.choice(scene)
        with_place = rng.random() < 0.5
        partial = _describe(thing, with_place)
        if with_place:
            matches = [i for i, s in zip(ids, scenes) if thing in s]
        else:
            matches = [i for i, s in zip(ids, scenes) if any(t[:2] == thing[:2] for t in s)]
        captions.setdefault(partial, matches)
    text_lines = [
        json.dumps({"text_id": n, "text": text, "image_ids": [int(i) for i in matches]}, ensure_ascii=False)
        for n, (text, matches) in enumerate(captions.items(), start=first_id)
    ]
    return image_lines, text_lines


def write_shapes(out_dir: Path, sizes: Mapping[str, int] = SIZES, seed: int = 0, image_size: int = 64) -> Path:
    """Write ``{split}_imgs.tsv`` and ``{split}_texts.jsonl`` for each split in ``sizes``."""
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    first_id = 1000
    for split, count in sizes.items():
        image_lines, text_lines = _split(split, count, first_id, image_size, rng)
        (out_dir / f"{split}_imgs.tsv").write_text("\n".join(image_lines) + "\n", encoding="utf-8")
        (out_dir / f"{split}_texts.jsonl").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
        first_id += 10 * count
    return out_dir
