"""Tracking overhead of a sweep: sweeplab against the pattern users write today, in one run.

The peer: Optuna + optuna-integration's ``MLflowCallback`` (one MLflow run per trial, params and
final value) with ``mlflow.log_metric`` called per epoch and metric inside the objective
(``@callback.track_in_mlflow()``), which is how the curves get there.

sweeplab: the real driver (``run_sweep``) on a registered trivial task whose "training" replays
a fixed curve, so the figure includes everything sweeplab records per trial (child run under a
parent, all params, batched curve points, summary metrics and tags, config.json artifact,
provenance tags, and the parent's data report). Curve PNGs and checkpoints are switched off:
they are artifacts, not tracking, and the peer makes none (``--plots`` adds them back to show
their cost).

Points are flushed at most once a second by default; the figure "flush each eval" forces one
``log_batch`` per evaluation, which is what happens when epochs take longer than that.

Both write to their own embedded SQLite store in a temporary folder. Overhead per trial is
``(wall time - wall time of the same Optuna study without tracking) / trials``.

    python benchmarks/tracking_overhead.py                 # 20 trials x 30 epochs x 5 metrics
    python benchmarks/tracking_overhead.py --trials 10 --epochs 50 --plots
    python benchmarks/tracking_overhead.py --postgres postgresql://USER@HOST:PORT/postgres

``--postgres`` adds the many-machine path: Optuna's RDB storage on PostgreSQL and MLflow behind
a ``sweep server`` whose backend store is PostgreSQL (both on this machine, so the figure is the
cost of the path, not of a network). It measures the peer and sweeplab on that path, and
sweeplab with only one of the two moved there, to show which part costs what.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna

METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc")


def curve(x: float, epoch: int) -> dict[str, float]:
    """A deterministic learning curve with a minimum of the validation loss mid-way."""
    return {
        "train_loss": 1.0 / epoch + x,
        "val_loss": 1.0 / epoch + 0.01 * epoch + x,
        "val_accuracy": 1.0 - 1.0 / (epoch + 1) - x,
        "val_f1_macro": 0.9 - 1.0 / (epoch + 2),
        "val_roc_auc": 0.95 - 1.0 / (epoch + 3),
    }


def bare(trials: int, epochs: int) -> float:
    """The same study with no tracking at all: the baseline that overhead is measured against."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 0.1)
        points = [curve(x, e) for e in range(1, epochs + 1)]
        return max(p["val_accuracy"] for p in points)

    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def peer(trials: int, epochs: int, folder: Path, tracking_uri: str | None = None, storage: str | None = None,
         study_name: str = "peer") -> float:
    """Optuna + MLflowCallback + mlflow.log_metric per epoch and metric: on an embedded SQLite store
    in ``folder`` and an in-memory study, or on ``tracking_uri`` and the Optuna ``storage``."""
    import warnings

    import mlflow
    from optuna_integration.mlflow import MLflowCallback

    warnings.filterwarnings("ignore")  # MLflowCallback's deprecation and experimental warnings

    callback = MLflowCallback(tracking_uri=tracking_uri or f"sqlite:///{folder / 'peer.db'}", metric_name="val_accuracy")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), study_name=study_name,
                                storage=storage)

    @callback.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 0.1)
        best = -math.inf
        for epoch in range(1, epochs + 1):
            point = curve(x, epoch)
            for key in METRICS:
                mlflow.log_metric(key, point[key], step=epoch)
            best = max(best, point["val_accuracy"])
        return best

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    start = time.perf_counter()
    try:
        study.optimize(objective, n_trials=trials, callbacks=[callback])
        return time.perf_counter() - start
    finally:
        # mlflow.set_tracking_uri (called by the callback) also sets MLFLOW_TRACKING_URI, which
        # sweeplab honours: left set, later sweeplab runs would write to the peer's store.
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _sweeplab_task(epochs: int) -> Any:
    """A registered task whose fit replays :func:`curve` through sweeplab's real fit loop."""
    from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
    from sweeplab.datasets.report import ReadReport
    from sweeplab.trainers.loop import fit

    class Replay:
        def __init__(self, x: float) -> None:
            self.x, self.epoch = x, 0

        def train_round(self) -> tuple[int, float]:
            self.epoch += 1
            return self.epoch, curve(self.x, self.epoch)["train_loss"]

        def evaluate(self) -> Evaluation:
            point = curve(self.x, self.epoch)
            return Evaluation({k: v for k, v in point.items() if k != "train_loss"})

        def snapshot(self) -> dict[str, Any]:
            return {}

        def predict_unlabelled(self) -> None:
            return None

        def after_evaluation(self, metrics: Mapping[str, float]) -> None:
            pass

    def load(data_dir: Path, seed: int, val_fraction: float, settings: Mapping[str, Any]) -> Loaded:
        return Loaded(payload=None, reports=(ReadReport("replay"),), fingerprint="replay")

    def fit_replay(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        return fit(Replay(float(config["x"])), int(config["epochs"]), reporter, "val_accuracy", early_stop=None)

    return Task(
        name="bench-replay", summary="replays a fixed curve", metric="val_accuracy", direction="maximize",
        defaults={"x": 0.0, "epochs": epochs}, default_space="", sample_data=Path("."), load=load,
        prepare=lambda loaded, config, env: None, fit=fit_replay,
    )


def sweeplab_run(trials: int, epochs: int, folder: Path, plots: bool, study: str, flush_seconds: float = 1.0,
                 tracking_uri: str | None = None, storage: str | None = None) -> float:
    """The real ``run_sweep`` on the replay task (its store is ``folder/store``, unless a
    tracking URI and an Optuna storage are given)."""
    from sweeplab.sweeps.driver import run_sweep
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.tasks import register, task_names

    if "bench-replay" not in task_names():
        register(_sweeplab_task(epochs))
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.toml"
    space.write_text(f'[search.x]\nlow = 0.0\nhigh = 0.1\n\n[fixed]\nepochs = {epochs}\n', encoding="utf-8")
    options = SweepOptions.of(
        "bench-replay", trials=trials, space=str(space), sampler="random", pruner="none",
        store_dir=folder / "store", checkpoints="none", plots=plots, study=study, flush_seconds=flush_seconds,
        tracking_uri=tracking_uri, storage=storage,
    )
    start = time.perf_counter()
    run_sweep(options)
    return time.perf_counter() - start


@contextlib.contextmanager
def postgres_and_server(admin_uri: str, folder: Path) -> Iterator[tuple[str, str]]:
    """Two fresh databases on the PostgreSQL server of ``admin_uri`` (a role that may create
    them): one for Optuna, one behind a ``sweep server`` started here on 127.0.0.1. Yields
    (Optuna storage URI, tracking URI); drops both databases afterwards."""
    import psycopg

    names = [f"sweeplab_bench_{uuid.uuid4().hex[:8]}_{role}" for role in ("optuna", "mlflow")]
    admin = psycopg.connect(admin_uri, autocommit=True)
    for name in names:
        admin.execute(f"CREATE DATABASE {name}")
    optuna_uri, mlflow_uri = (urlunsplit(urlsplit(admin_uri)._replace(path=f"/{n}")) for n in names)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "sweeplab", "server", "--backend-store-uri", mlflow_uri,
                               "--store-dir", str(folder / "server"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracking = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{tracking}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield optuna_uri, tracking
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plots", action="store_true", help="also measure sweeplab with curve PNGs on")
    parser.add_argument("--json", type=Path, help="write the figures to this file too")
    parser.add_argument("--postgres", metavar="ADMIN_URI",
                        help="also measure sweeplab with Optuna on PostgreSQL and MLflow behind `sweep server` on "
                             "PostgreSQL (a role that may create databases; needs the postgres extra)")
    args = parser.parse_args()

    from sweeplab.tracker.store import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Warm-up: create both SQLite schemas (MLflow migrations take seconds, once per store).
        peer(1, 1, folder)
        sweeplab_run(1, args.epochs, folder, plots=False, study="warm-up")
        base = bare(args.trials, args.epochs)
        peer_s = peer(args.trials, args.epochs, folder)
        ours_s = sweeplab_run(args.trials, args.epochs, folder, plots=False, study="measured")
        figures = {
            "trials": args.trials, "epochs": args.epochs, "metrics": len(METRICS),
            "bare_s": base, "peer_s": peer_s, "sweeplab_s": ours_s,
            "peer_overhead_per_trial_s": (peer_s - base) / args.trials,
            "sweeplab_overhead_per_trial_s": (ours_s - base) / args.trials,
        }
        figures["ratio_sweeplab_to_peer"] = figures["sweeplab_overhead_per_trial_s"] / figures["peer_overhead_per_trial_s"]
        # Real epochs take longer than the 1 s flush interval: then every evaluation is its own
        # log_batch call. This is sweeplab's worst case.
        each_s = sweeplab_run(args.trials, args.epochs, folder, plots=False, study="measured-each", flush_seconds=0.0)
        figures["sweeplab_flush_each_eval_overhead_per_trial_s"] = (each_s - base) / args.trials
        figures["ratio_flush_each_eval_to_peer"] = (
            figures["sweeplab_flush_each_eval_overhead_per_trial_s"] / figures["peer_overhead_per_trial_s"]
        )
        if args.plots:
            plots_s = sweeplab_run(args.trials, args.epochs, folder, plots=True, study="measured-plots")
            figures["sweeplab_with_plots_overhead_per_trial_s"] = (plots_s - base) / args.trials
        if args.postgres:
            with postgres_and_server(args.postgres, folder) as (storage, tracking):
                optuna_uri = storage.replace("postgresql://", "postgresql+psycopg://", 1)
                peer(1, 1, folder, tracking, optuna_uri, study_name="peer-warm-up")
                sweeplab_run(1, args.epochs, folder, plots=False, study="warm-up", tracking_uri=tracking, storage=storage)
                timed = {
                    "peer_postgres_server": peer(args.trials, args.epochs, folder, tracking, optuna_uri),
                    "sweeplab_postgres_server": sweeplab_run(args.trials, args.epochs, folder, plots=False, study="measured",
                                                             tracking_uri=tracking, storage=storage),
                    "sweeplab_optuna_on_postgres_only": sweeplab_run(args.trials, args.epochs, folder, plots=False,
                                                                     study="measured-pg", storage=storage),
                    "sweeplab_mlflow_server_only": sweeplab_run(args.trials, args.epochs, folder, plots=False,
                                                                study="measured-server", tracking_uri=tracking),
                }
            for name, seconds in timed.items():
                figures[f"{name}_overhead_per_trial_s"] = (seconds - base) / args.trials
            figures["ratio_sweeplab_to_peer_postgres_server"] = (
                figures["sweeplab_postgres_server_overhead_per_trial_s"] / figures["peer_postgres_server_overhead_per_trial_s"]
            )
            figures["ratio_postgres_server_to_embedded"] = (
                figures["sweeplab_postgres_server_overhead_per_trial_s"] / figures["sweeplab_overhead_per_trial_s"]
            )
    for key, value in figures.items():
        print(f"{key:50} {value:.4f}" if isinstance(value, float) else f"{key:50} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
