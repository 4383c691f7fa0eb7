"""Trials per hour of a sweep with K = 1, 2 worker processes on this machine, in one run.

The trainer is small and CPU-bound: the sentiment task with tiny random backbones fine-tuned on
the packaged sample (no frozen features), so every trial does real tensor work. Each K runs the
same seeded random-sampler study in its own store; the figure is finished trials over wall time,
the main process's setup included.

    python benchmarks/workers_scaling.py --trials 12 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions

FIXED = {"text_model": "tiny", "image_model": "tiny", "image_size": 64, "max_length": 32, "freeze_backbones": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial (the trial's length)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.workers:
            options = SweepOptions.of("sentiment", trials=args.trials, sampler="random", pruner="none", early_stop=False,
                                   store_dir=Path(tmp) / f"k{k}", workers=k, plots=False, checkpoints="none",
                                   overrides={**FIXED, "epochs": args.epochs})
            start = time.perf_counter()
            outcome = run_sweep(options)
            wall = time.perf_counter() - start
            finished = outcome.counts["complete"] + outcome.counts["pruned"]
            results[k] = {"finished": finished, "seconds": wall, "trials_per_hour": 3600 * finished / wall}
            print(f"K={k}: {finished} trials in {wall:.1f} s = {results[k]['trials_per_hour']:.0f} trials/hour", flush=True)
    base = results[args.workers[0]]["trials_per_hour"]
    for k, r in results.items():
        print(f"K={k}: ratio to K={args.workers[0]}: {r['trials_per_hour'] / base:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
