"""Trials per hour of a sweep with K worker processes, in one run: K = 1, 2 on this machine's
cores, or K = 1, 2, 4 on one GPU (``--gpus 0``: every worker on card 0).

Two trainers:

* ``--task sentiment`` (the default): small and CPU-bound, the sentiment task with tiny random
  backbones fine-tuned on the packaged sample (no frozen features), so every trial does real
  tensor work.
* ``--task news``: news trials of a random BERT with the bert-base-chinese vocabulary (``--size
  base``: BERT-base, 102 M parameters; ``small``: 256 x 2 layers), every parameter fixed (each
  trial trains the same configuration: ``--epochs``, ``--batch-size``, ``--max-length``), on the
  first ``--train-rows`` titles of ``--data-dir`` (a THUCNews-titles folder; default the packaged
  2,000-title sample) and its first ``--dev-rows`` validation titles; no checkpoints.

Each K runs the same seeded random-sampler study in its own store; the figure is finished trials
over wall time, the main process's setup and the workers' start included. ``--trials`` is the
total for every K; ``--trials-per-worker N`` makes it N x K instead, so that each K runs about
equally long. With ``--gpus``, K = 1 runs in a worker process too (as every K does), on the card.

    python benchmarks/workers_scaling.py --trials 12 --epochs 20
    python benchmarks/workers_scaling.py --task news --size base --data-dir DIR --train-rows 8000 \\
        --workers 1 2 4 --gpus 0 --trials-per-worker 2 --epochs 1 --max-length 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from news_setup import fixed_space, news_subset, write_random_bert  # noqa: E402

from sweeplab.sweeps.driver import run_sweep  # noqa: E402
from sweeplab.sweeps.options import SweepOptions  # noqa: E402

SENTIMENT = {"text_model": "tiny", "image_model": "tiny", "image_size": 64, "max_length": 32, "freeze_backbones": False}


def _news_space(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """The news trials' space file (every parameter fixed) and data folder."""
    from sweeplab.trainers.news import TASK

    model = write_random_bert(root / "model", args.size)
    data = news_subset(args.data_dir or TASK.sample_data, root / "data",
                       {"train.txt": args.train_rows, "dev.txt": args.dev_rows, "test.txt": 0})
    settings = {"model": str(model), "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
                "lr": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.01, "eval_every": 0, "eval_batch_size": 256}
    return fixed_space(root / "fixed.toml", settings), data


def _options(args: argparse.Namespace, k: int, root: Path, news: tuple[Path, Path] | None) -> SweepOptions:
    trials = args.trials_per_worker * k if args.trials_per_worker else args.trials
    common: dict[str, Any] = {"trials": trials, "sampler": "random", "pruner": "none", "early_stop": False,
                              "store_dir": root / f"k{k}", "cache_dir": root / "cache", "workers": k, "plots": False,
                              "checkpoints": "none", "device": args.device,
                              "gpus": tuple(args.gpus.split(",")) if args.gpus else ()}
    if news is not None:
        return SweepOptions.of("news", space=str(news[0]), data_dir=news[1], **common)
    return SweepOptions.of("sentiment", overrides={**SENTIMENT, "epochs": args.epochs}, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sentiment", "news"), default="sentiment")
    parser.add_argument("--trials", type=int, default=12, help="finished trials of each K's sweep (a total)")
    parser.add_argument("--trials-per-worker", type=int, default=None, help="instead of --trials: N x K trials for K workers")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpus", default=None, help="--gpus of every sweep, e.g. 0: all K workers on card 0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial (the trial's length)")
    parser.add_argument("--size", choices=("small", "base"), default="small", help="news: the random BERT's size")
    parser.add_argument("--data-dir", type=Path, default=None, help="news: a THUCNews-titles folder")
    parser.add_argument("--train-rows", type=int, default=None, help="news: the first N training titles")
    parser.add_argument("--dev-rows", type=int, default=None, help="news: the first N validation titles")
    parser.add_argument("--batch-size", type=int, default=64, help="news")
    parser.add_argument("--max-length", type=int, default=32, help="news")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        news = _news_space(args, root) if args.task == "news" else None
        for k in args.workers:
            start = time.perf_counter()
            outcome = run_sweep(_options(args, k, root, news))
            wall = time.perf_counter() - start
            finished = outcome.counts["complete"] + outcome.counts["pruned"]
            results[k] = {"finished": finished, "failed": outcome.counts["failed"], "seconds": wall,
                          "trials_per_hour": 3600 * finished / wall}
            failed = f" ({outcome.counts['failed']} failed)" if outcome.counts["failed"] else ""
            print(f"K={k}: {finished} trials in {wall:.1f} s = {results[k]['trials_per_hour']:.0f} trials/hour{failed}", flush=True)
            if args.out:
                args.out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str), encoding="utf-8")
    base = results[args.workers[0]]["trials_per_hour"]
    for k, r in results.items():
        print(f"K={k}: ratio to K={args.workers[0]}: {r['trials_per_hour'] / base:.2f}")


if __name__ == "__main__":
    main()
