"""Shared fixtures: offline Hugging Face, one torch thread, small sentiment data sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sweeplab.trainers.sentiment import TASK  # noqa: E402

torch.set_num_threads(1)

SAMPLE = TASK.sample_data


def make_sentiment_dir(root: Path, train_rows: int = 60, test_rows: int = 8) -> Path:
    """A small copy of the packaged sample: the first rows of each list with their files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    for name, n in (("train.txt", train_rows), ("test_without_label.txt", test_rows)):
        lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines()
        kept = lines[1 : n + 1]
        (root / name).write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
        for line in kept:
            guid = line.split(",")[0]
            for ext in (".txt", ".jpg"):
                shutil.copyfile(SAMPLE / "data" / f"{guid}{ext}", root / "data" / f"{guid}{ext}")
    return root


@pytest.fixture()
def sentiment_dir(tmp_path: Path) -> Path:
    return make_sentiment_dir(tmp_path / "sentiment")


#: --set flags that make a trial take well under a second on a CPU.
TINY = ["--set", "text_model=tiny", "--set", "image_model=tiny", "--set", "image_size=32", "--set", "max_length=32"]
