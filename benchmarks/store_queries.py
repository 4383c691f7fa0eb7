"""How long the read commands take on a large store, each in a fresh process, beside MLflow's own query.

A store of ``--trials`` trials (1,000 by default) is written in sweeplab's layout by the real
driver: a function trainer that replays a 12-epoch curve shaped by its configuration (learning
rate, batch size, width, dropout, weight decay, epochs), random sampling, no pruning, no per-trial
PNGs or checkpoints (they are files the read commands do not open); then the same sweep is run
again with nothing left to do, which draws the sweep's pictures on its parent run, as the end of
any sweep does. The store is kept in ``--store`` and reused when it already holds the trials.

Then each command runs ``--repeat`` times in a fresh Python process, as a user types it, and the
median wall time is printed:

* ``sweep best --json`` -- the best trial with its params, summary and checkpoint;
* ``sweep status --json`` -- every sweep of the store with its trials counted by outcome;
* ``sweep report --out FILE`` -- the sweep's HTML page with its five pictures;
* the peer: ``mlflow.search_runs(..., order_by=[best metric], max_results=1)`` in a fresh
  process, the shortest way to ask MLflow itself for the best trial.

    python benchmarks/store_queries.py                       # 1,000 trials, kept in /tmp/sweeplab-store-queries
    python benchmarks/store_queries.py --trials 200 --store /tmp/small-store
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sweeplab

TASK = "store-bench"
SPACE = """\
[search.lr]
low = 1e-5
high = 1e-1
log = true

[search.batch_size]
choices = [16, 32, 64, 128, 256]

[search.hidden]
choices = [64, 128, 256, 512]

[search.dropout]
low = 0.0
high = 0.5

[search.weight_decay]
low = 1e-5
high = 1e-1
log = true

[search.epochs]
low = 6
high = 12
"""


@sweeplab.trainer(name=TASK, metric="val_accuracy")
def replay(config: dict[str, Any], report: Any) -> None:
    """A curve shaped like a real one: accuracy peaks where the learning rate suits the batch size,
    and the validation loss turns up (overfitting) sooner with less dropout and weight decay."""
    fit = math.exp(-((math.log10(config["lr"]) + 3.0 - math.log2(config["batch_size"] / 64) * 0.3) ** 2))
    patience = 3 + 10 * config["dropout"] + 2 * math.log10(1 + 1000 * config["weight_decay"])
    for epoch in range(1, config["epochs"] + 1):
        accuracy = 0.5 + 0.4 * fit * (1 - math.exp(-epoch / 2)) + 0.02 * math.log2(config["hidden"] / 64) / 3
        val_loss = 1.2 - 0.8 * fit * (1 - math.exp(-epoch / 2)) + 0.05 * max(0.0, epoch - patience)
        point = {"train_loss": 1.2 * math.exp(-epoch / 3), "val_loss": val_loss, "val_accuracy": accuracy,
                 "lr": config["lr"] * (1 - (epoch - 1) / config["epochs"])}
        if report(epoch, point):
            return


def _make_store(store: Path, trials: int) -> None:
    space = store / "space.toml"
    store.mkdir(parents=True, exist_ok=True)
    space.write_text(SPACE)
    start = time.perf_counter()
    sweeplab.run(replay, trials=trials, space=space, store_dir=store, sampler="random", pruner="none",
                 plots=False, checkpoints="none")
    print(f"store of {trials} trials written in {time.perf_counter() - start:.0f} s: {store}")
    start = time.perf_counter()  # the same sweep again, with nothing left to run: it draws the sweep's pictures
    sweeplab.run(replay, trials=trials, space=space, store_dir=store, sampler="random", pruner="none", checkpoints="none")
    print(f"the sweep's pictures drawn on its parent run in {time.perf_counter() - start:.1f} s")


def _timed(command: list[str], repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        out = done.stdout
    return statistics.median(times), out


PEER = """\
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
ids = [e.experiment_id for e in mlflow.search_experiments()]
top = mlflow.search_runs(ids, filter_string="tags.`sweeplab.role` = 'trial'", order_by=["metrics.best_val_accuracy DESC"],
                         max_results=1)
print(top[["run_id", "metrics.best_val_accuracy"]].to_string())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/sweeplab-store-queries"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    store = args.store.resolve()
    made = store / "made.json"
    if not made.exists() or json.loads(made.read_text()).get("trials") != args.trials:
        _make_store(store, args.trials)
        made.write_text(json.dumps({"trials": args.trials}))
    sweep = [sys.executable, "-m", "sweeplab"]
    env_store = ["--store-dir", str(store)]
    rows = []
    best, out = _timed([*sweep, "best", "--task", TASK, "--json", *env_store], args.repeat)
    rows.append(("sweep best --json", best, f"best {json.loads(out)[0]['value']:.4f}"))
    seconds, out = _timed([*sweep, "status", "--json", *env_store], args.repeat)
    counts = json.loads(out)[0]["counts"]
    rows.append(("sweep status --json", seconds, f"{sum(counts.values())} trials counted"))
    page = store / "report.html"
    seconds, _ = _timed([*sweep, "report", "--task", TASK, "--out", str(page), *env_store], args.repeat)
    rows.append(("sweep report --out", seconds, f"{page.stat().st_size / 1e6:.1f} MB"))
    peer, out = _timed([sys.executable, "-c", PEER, f"sqlite:///{store / 'mlflow.db'}"], args.repeat)
    rows.append(("peer: mlflow.search_runs top 1", peer, out.strip().splitlines()[-1][:60]))
    print(f"\n{args.trials} trials, median of {args.repeat} fresh processes (cpus: {os.cpu_count()})")
    print(f"{'command':34} {'seconds':>8} {'to the peer':>12}  answer")
    for name, seconds, note in rows:
        print(f"{name:34} {seconds:8.2f} {seconds / peer:12.2f}  {note}")


if __name__ == "__main__":
    main()
