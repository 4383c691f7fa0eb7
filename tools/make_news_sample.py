"""Write the small news sample that ships with sweeplab (sweeplab/data/news/).

A seeded subset of the THUCNews title set in shared/data/news/THUCNews/data (``title<TAB>label_id``
plus ``class.txt``): the same number of lines of every class from each split, lines copied byte for
byte and kept in their original order. Run from the repository root:

    python tools/make_news_sample.py ../shared/data/news/THUCNews/data sweeplab/data/news
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

PER_CLASS = {"train.txt": 200, "dev.txt": 50, "test.txt": 50}


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, quota in PER_CLASS.items():
        lines = (source / name).read_bytes().split(b"\n")
        by_label: dict[bytes, list[int]] = defaultdict(list)
        for i, line in enumerate(lines):
            if b"\t" in line:
                by_label[line.rsplit(b"\t", 1)[1]].append(i)
        chosen = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], quota))
        (target / name).write_bytes(b"".join(lines[i] + b"\n" for i in chosen))
    shutil.copyfile(source / "class.txt", target / "class.txt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
