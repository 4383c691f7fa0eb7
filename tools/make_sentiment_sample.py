"""Write the small sentiment sample that ships with sweeplab (sweeplab/data/sentiment/).

It is a seeded, stratified subset of the real data in shared/data/sentiment (itself a subset of
the ECNU lab-5 copy of MVSA): texts copied byte for byte (mixed UTF-8 / GB18030, as in the
original), images downscaled so the sample stays a few MB. Run from the repository root:

    python tools/make_sentiment_sample.py ../shared/data/sentiment sweeplab/data/sentiment
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

TRAIN_ROWS = 360
TEST_ROWS = 40
MAX_SIDE = 224


def _rows(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split(",")) for line in lines if line.strip()]


def main(source: Path, target: Path) -> None:
    rng = random.Random(0)
    train = _rows(source / "train.txt")
    by_tag: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in train:
        by_tag[row[1]].append(row)
    chosen: set[str] = set()
    for tag in sorted(by_tag):
        quota = round(TRAIN_ROWS * len(by_tag[tag]) / len(train))
        chosen.update(guid for guid, _ in rng.sample(by_tag[tag], quota))
    test = _rows(source / "test_without_label.txt")
    test_chosen = {guid for guid, _ in rng.sample(test, TEST_ROWS)}
    (target / "data").mkdir(parents=True, exist_ok=True)
    for name, rows, keep in (("train.txt", train, chosen), ("test_without_label.txt", test, test_chosen)):
        kept = [r for r in rows if r[0] in keep]
        (target / name).write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in kept), encoding="utf-8")
        for guid, _ in kept:
            shutil.copyfile(source / "data" / f"{guid}.txt", target / "data" / f"{guid}.txt")
            with Image.open(source / "data" / f"{guid}.jpg") as image:
                image = image.convert("RGB")
                image.thumbnail((MAX_SIDE, MAX_SIDE))
                image.save(target / "data" / f"{guid}.jpg", quality=85)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
