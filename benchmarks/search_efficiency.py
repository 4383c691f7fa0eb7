"""How many epochs each search strategy trains before it finds a model as good as the lab report's
grid, on the full shared sentiment data (1,500 labelled rows, 300 held out for validation).

Reference: the documented grid (space ``sentiment``, ``--sampler grid``: 24 cells x 10 epochs,
240 epochs at most) run once with seed 0; its best validation accuracy is the target, less 0.5
point. Then, on the same validation split (``split_seed`` 0) and with the sampler seed 0, 1, 2
(each also seeds training), each strategy runs ``--trials`` trials and reports:

* epochs to target: the epochs trained (curve points of every trial, pruned and overfitting-stopped
  ones included, in the order they were trained) up to the end of the first trial whose value
  reaches the target; "-" when none does;
* best: the best validation accuracy it reached, and the epochs of the whole sweep.

Strategies: the grid (the seed changes the order of its cells), random search, TPE with the
median pruner, TPE with asynchronous successive halving and TPE with Hyperband. Every sweep stops a
trial at its overfitting onset, as ``sweep run`` does by default.

With ``--default-trials N`` it also runs the default sweep (``sweep run sentiment --trials N``:
TPE and the default pruner) with seeds 0, 1, 2, each seed with its own validation split, and
reports the best validation accuracy of each: the spread of the figure a user gets.

    python benchmarks/search_efficiency.py --data-dir ../shared/data/sentiment --out search.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sentiment"
GRID_EPOCHS = 24 * 10


@dataclass
class EpochCounter:
    """A sweep observer that counts the epochs trained, in order, and notes when a trial first
    reaches ``target``."""

    target: float = float("inf")
    epochs: int = 0
    to_target: int | None = None
    values: list[float] = field(default_factory=list)

    def sweep_started(self, study: str, total: int, done: int) -> None:
        pass

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        pass

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        self.epochs += 1

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        if value is None:
            return
        self.values.append(value)
        if self.to_target is None and value >= self.target:
            self.to_target = self.epochs


def sweep(root: Path, name: str, data_dir: Path, cache: Path, counter: EpochCounter, **options: Any) -> dict[str, Any]:
    """One sweep in its own store, counted by ``counter``."""
    start = time.perf_counter()
    outcome = run_sweep(SweepOptions.of("sentiment", data_dir=data_dir, store_dir=root / name, cache_dir=cache,
                                     plots=False, checkpoints="none", **options), counter)
    return {"best": outcome.best_value, "epochs": counter.epochs, "to_target": counter.to_target,
            "trials": outcome.counts, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trials", type=int, default=30, help="trials of each sampled (not grid) strategy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--default-trials", type=int, default=0, help="also run the default sweep with this many trials")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {"strategies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp), Path(tmp) / "cache"
        reference = sweep(root, "reference", args.data_dir, cache, EpochCounter(), trials=24, sampler="grid", pruner="none",
                          seed=0, split_seed=0)
        target = reference["best"] - 0.005
        results["grid_best"], results["target"] = reference["best"], target
        print(f"documented grid (24 cells, seed 0): best {reference['best']:.4f} in {reference['epochs']} epochs "
              f"({reference['seconds']} s); target {target:.4f}", flush=True)
        strategies = {
            "grid": dict(sampler="grid", pruner="none", trials=24),
            "random": dict(sampler="random", pruner="none", trials=args.trials),
            "tpe+median": dict(sampler="tpe", pruner="median", trials=args.trials),
            "tpe+asha": dict(sampler="tpe", pruner="asha", trials=args.trials),
            "tpe+hyperband": dict(sampler="tpe", pruner="hyperband", trials=args.trials),
        }
        for name, settings in strategies.items():
            rows = []
            for seed in seeds:
                row = sweep(root, f"{name}-{seed}", args.data_dir, cache, EpochCounter(target), seed=seed, split_seed=0, **settings)
                rows.append(row)
                print(f"{name:14} seed {seed}: epochs to target {row['to_target'] or '-':>4}  best {row['best']:.4f}  "
                      f"epochs {row['epochs']:4}  {row['seconds']} s", flush=True)
            reached = [r["to_target"] for r in rows if r["to_target"] is not None]
            results["strategies"][name] = {
                "runs": rows,
                "reached": f"{len(reached)} of {len(rows)}",
                "median_epochs_to_target": statistics.median(reached) if len(reached) == len(rows) else None,
                "worst_epochs_to_target": max(reached) if len(reached) == len(rows) else None,
                "mean_best": statistics.mean(r["best"] for r in rows),
            }
        if args.default_trials:
            rows = []
            for seed in seeds:
                row = sweep(root, f"default-{seed}", args.data_dir, cache, EpochCounter(), trials=args.default_trials, seed=seed)
                rows.append(row)
                print(f"default sweep, {args.default_trials} trials, seed {seed} (own split): best {row['best']:.4f} "
                      f"({row['seconds']} s)", flush=True)
            bests = [r["best"] for r in rows]
            results["default"] = {"runs": rows, "mean": statistics.mean(bests), "min": min(bests), "max": max(bests)}

    print("\nstrategy        reached   epochs to target (median / worst)   share of grid budget   mean best")
    for name, row in results["strategies"].items():
        median, worst = row["median_epochs_to_target"], row["worst_epochs_to_target"]
        share = "-" if worst is None else f"{worst / GRID_EPOCHS:.2f}"
        print(f"{name:15} {row['reached']:8}  {str(median or '-'):>6} / {str(worst or '-'):<6}"
              f"                     {share:>6}            {row['mean_best']:.4f}")
    if "default" in results:
        d = results["default"]
        print(f"\ndefault sweep ({args.default_trials} trials) over {len(seeds)} seeds: mean {d['mean']:.4f}, "
              f"min {d['min']:.4f}, max {d['max']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
