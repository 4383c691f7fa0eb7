"""Retrieval: images decoded once per sweep against decoded per trial, and the recall a sweep reaches.

Part 1, in one run on the same data and trials: training examples per second of retrieval trials
(a) as sweeplab runs them, images decoded and texts tokenised once (the task's ``prepare``) and
shared through the prepared-data cache, and (b) the naive pattern, where every trial decodes the
images and tokenises the texts again (the same task with a fresh cache per trial). Throughput is
the training texts seen by all trials over the wall time, preparation included; the trials use
the default space's fixed model and the task's defaults, without tracking, after an untimed
warm-up trial.

Part 2: a sweep with the task's default space on the generated set, reporting the best trial's
validation and test Recall (text to image, mean of R@1/5/10) and chance for comparison.

    python benchmarks/retrieval_decoding.py                   # generated set, 224 px images
    python benchmarks/retrieval_decoding.py --data-dir /tmp/sentiment-muge --search-trials 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.datasets.muge import read_muge
from sweeplab.datasets.shapes import write_shapes
from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.space import load_space
from sweeplab.tasks import get_task


class _Quiet:
    """A reporter that only listens (no tracking: part 1 measures the data path and training)."""

    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        return False


def throughput(data_dir: Path, trials: int, epochs: int, per_trial: bool, cache_dir: Path) -> dict[str, float]:
    """Training examples per second of ``trials`` trials of the task's default configuration,
    preparation included: decoded once (``per_trial=False``: ``prepare`` fills the cache that
    every trial reads) or by every trial (a fresh cache per trial, nothing prepared)."""
    task = get_task("retrieval")
    config = {**task.defaults, **load_space("retrieval", task.defaults, "retrieval").fixed, "epochs": epochs}
    env = TrialEnv(device=torch.device("cpu"), precision="fp32", cache=PrepCache(None if per_trial else cache_dir),
                   seed=0, trial_seed=0, early_stop=None, metric=task.metric)
    start = time.perf_counter()
    loaded = task.load(data_dir, 0, 0.2, config)
    if not per_trial:
        task.prepare(loaded, config, env)
    for trial in range(trials):
        trial_env = replace(env, trial_seed=trial, cache=PrepCache(None)) if per_trial else replace(env, trial_seed=trial)
        task.fit(loaded, config, trial_env, _Quiet())
    wall = time.perf_counter() - start
    examples = len(loaded.payload.train.texts) * epochs * trials
    return {"seconds": wall, "examples": examples, "examples_per_second": examples / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="MUGE folder (default: a generated set)")
    parser.add_argument("--image-side", type=int, default=224, help="side of the generated images")
    parser.add_argument("--trials", type=int, default=4, help="trials per throughput run")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per throughput trial")
    parser.add_argument("--search-trials", type=int, default=8, help="trials of the recall sweep (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or write_shapes(Path(tmp) / "shapes", image_size=args.image_side)
        throughput(data_dir, 1, 1, per_trial=True, cache_dir=Path(tmp) / "warm-up")  # imports, allocator: untimed
        once = throughput(data_dir, args.trials, args.epochs, per_trial=False, cache_dir=Path(tmp) / "cache")
        naive = throughput(data_dir, args.trials, args.epochs, per_trial=True, cache_dir=Path(tmp) / "unused")
        result: dict[str, Any] = {"decoded_once": once, "decoded_per_trial": naive,
                                  "speedup": once["examples_per_second"] / naive["examples_per_second"]}
        print(f"decoded once per sweep: {once['examples_per_second']:.1f} examples/s ({once['seconds']:.1f} s)")
        print(f"decoded per trial:      {naive['examples_per_second']:.1f} examples/s ({naive['seconds']:.1f} s)")
        print(f"ratio (once / per trial): {result['speedup']:.2f}", flush=True)
        if args.search_trials:
            options = SweepOptions.of("retrieval", trials=args.search_trials, data_dir=data_dir, store_dir=Path(tmp) / "search")
            start = time.perf_counter()
            outcome = run_sweep(options)
            valid = read_muge(data_dir).valid
            chance = sum(min(1.0, len(t) * k / len(valid.image_ids)) for t in valid.targets for k in (1, 5, 10)) / (3 * len(valid.targets))
            result["search"] = {"counts": outcome.counts, "seconds": time.perf_counter() - start,
                                "best_val_recall_mean": outcome.best_value, "test": outcome.test,
                                "chance_val_recall_mean": chance}
            print(f"sweep of {args.search_trials} trials: best val recall_mean {outcome.best_value:.4f} "
                  f"(chance about {chance:.4f}); test {json.dumps(outcome.test)}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
