"""Convert the real image-text pairs of the sentiment data (tweets and their images) to MUGE format.

Every row of ``train.txt`` and ``test_without_label.txt`` whose text and image read is one pair:
``text_id`` and ``image_id`` are its guid, the text is the tweet (UTF-8 or GB18030, as the reader
decodes it) and the image its JPEG, downscaled so its longer side is at most ``--max-side``
pixels. The pairs are split at random (seeded) into train / valid / test. Then:

    python tools/sentiment_to_muge.py ../shared/data/sentiment /tmp/sentiment-muge
    sweep run retrieval --data-dir /tmp/sentiment-muge --trials 8
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
from pathlib import Path

from PIL import Image

from sweeplab.datasets.sentiment import read_sentiment


def _jpeg(path: Path, max_side: int) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="sentiment data folder (train.txt, data/)")
    parser.add_argument("target", type=Path, help="folder to write the MUGE files into")
    parser.add_argument("--max-side", type=int, default=224)
    parser.add_argument("--valid", type=float, default=0.1, help="share of pairs for validation")
    parser.add_argument("--test", type=float, default=0.1, help="share of pairs for test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = read_sentiment(args.source)
    pairs = [e for e in data.labelled + data.unlabelled if e.text.strip()]
    random.Random(args.seed).shuffle(pairs)
    n_valid, n_test = round(args.valid * len(pairs)), round(args.test * len(pairs))
    splits = {"valid": pairs[:n_valid], "test": pairs[n_valid : n_valid + n_test], "train": pairs[n_valid + n_test :]}
    args.target.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with (args.target / f"{name}_imgs.tsv").open("w", encoding="utf-8") as images:
            for e in rows:
                images.write(f"{e.guid}\t{base64.b64encode(_jpeg(e.image, args.max_side)).decode('ascii')}\n")
        with (args.target / f"{name}_texts.jsonl").open("w", encoding="utf-8") as texts:
            for e in rows:
                line = {"text_id": int(e.guid), "text": " ".join(e.text.split()), "image_ids": [int(e.guid)]}
                texts.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
