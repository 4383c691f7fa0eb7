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
``log_batch`` per evaluation, which is what happens when epochs take longer than that. sweeplab
writes them on a background thread (:mod:`sweeplab.tracker.writer`); "on the training thread"
figures make the same writes inline, as sweeplab did before, for comparison in the same run.

Both write to their own embedded SQLite store in a temporary folder. Overhead per trial is
``(wall time - wall time of the same Optuna study without tracking) / trials``.

The replayed trial does no work between evaluations, so a background writer's work still lands
on the wall clock there. The second case ("epochs of real time", ``--epoch-seconds``, 0.1 s by
default) gives every epoch that much work (``--epoch-work sleep``, or ``torch``: a fixed number
of matrix products, calibrated to take that long alone, which compete for the CPU with the
writes as training would) in the bare study, the peer and sweeplab alike (``--work-trials``
trials of ``--epochs`` epochs), with one ``log_batch`` per evaluation. It also reports the time
the training thread spent inside ``log_point`` and the number of writes per trial.

    python benchmarks/tracking_overhead.py                 # 20 trials x 30 epochs x 5 metrics
    python benchmarks/tracking_overhead.py --trials 10 --epochs 50 --plots
    python benchmarks/tracking_overhead.py --epoch-seconds 0.05 --epoch-work torch --work-trials 10
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


#: Matrix products per second of this machine, measured once (see :func:`epoch_work`).
_PRODUCTS_PER_SECOND: list[float] = []
_SIDE = 192  # the matrices' side: a product takes about 0.13 ms on one core of the development machine


def epoch_work(kind: str, seconds: float) -> None:
    """One epoch's training: ``seconds`` of sleep, or (``torch``) the number of matrix products
    that takes ``seconds`` on this machine when nothing else runs; they release the GIL as
    training does, and take longer when the writes compete for the CPU."""
    if seconds <= 0:
        return
    if kind == "sleep":
        time.sleep(seconds)
        return
    import torch

    a = torch.ones(_SIDE, _SIDE) / _SIDE
    if not _PRODUCTS_PER_SECOND:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 1.0:
            a @ a
            n += 1
        _PRODUCTS_PER_SECOND.append(n / (time.perf_counter() - start))
    for _ in range(max(1, round(_PRODUCTS_PER_SECOND[0] * seconds))):
        a @ a


def bare(trials: int, epochs: int, work: tuple[str, float] = ("sleep", 0.0)) -> float:
    """The same study with no tracking at all: the baseline that overhead is measured against."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 0.1)
        points = []
        for e in range(1, epochs + 1):
            epoch_work(*work)
            points.append(curve(x, e))
        return max(p["val_accuracy"] for p in points)

    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def peer(trials: int, epochs: int, folder: Path, tracking_uri: str | None = None, storage: str | None = None,
         study_name: str = "peer", work: tuple[str, float] = ("sleep", 0.0)) -> float:
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
            epoch_work(*work)
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
    from sweeplab.core.data_report import ReadReport
    from sweeplab.trainers.loop import fit

    class Replay:
        def __init__(self, x: float, work: tuple[str, float]) -> None:
            self.x, self.epoch, self.work = x, 0, work

        def train_round(self) -> tuple[int, float]:
            epoch_work(*self.work)
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
        work = (str(config.get("work_kind", "sleep")), float(config.get("work_s", 0.0)))
        return fit(Replay(float(config["x"]), work), int(config["epochs"]), reporter, "val_accuracy", early_stop=None)

    return Task(
        name="bench-replay", summary="replays a fixed curve", metric="val_accuracy", direction="maximize",
        defaults={"x": 0.0, "epochs": epochs, "work_kind": "sleep", "work_s": 0.0}, default_space="", sample_data=Path("."), load=load,
        prepare=lambda loaded, config, env: None, fit=fit_replay,
    )


class Probe:
    """What the training thread spent inside ``TrialRecorder.log_point`` and how many writes were
    handed to the background writer, while active (a context manager); ``synchronous`` makes
    the writer run every write inline on the caller's thread instead (sweeplab before the
    writer: each due ``log_point`` waits for its write)."""

    def __init__(self, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self.log_point_s = 0.0
        self.writes = 0

    def __enter__(self) -> Probe:
        from sweeplab.tracker.runs import TrialRecorder
        from sweeplab.tracker.writer import OrderedWriter

        self._saved = TrialRecorder.log_point, OrderedWriter.submit
        log_point, submit = self._saved

        def timed_log_point(recorder: Any, step: int, metrics: Mapping[str, float]) -> None:
            start = time.perf_counter()
            try:
                log_point(recorder, step, metrics)
            finally:
                self.log_point_s += time.perf_counter() - start

        def counted_submit(writer: Any, job: Any) -> None:
            self.writes += 1
            if self.synchronous:
                job()
            else:
                submit(writer, job)

        TrialRecorder.log_point, OrderedWriter.submit = timed_log_point, counted_submit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from sweeplab.tracker.runs import TrialRecorder
        from sweeplab.tracker.writer import OrderedWriter

        TrialRecorder.log_point, OrderedWriter.submit = self._saved  # type: ignore[method-assign]


def sweeplab_run(trials: int, epochs: int, folder: Path, plots: bool, study: str, flush_seconds: float = 1.0,
                 tracking_uri: str | None = None, storage: str | None = None,
                 work: tuple[str, float] = ("sleep", 0.0)) -> float:
    """The real ``run_sweep`` on the replay task (its store is ``folder/store``, unless a
    tracking URI and an Optuna storage are given), each epoch doing ``work`` (see :func:`epoch_work`)."""
    from sweeplab.sweeps.driver import run_sweep
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.tasks import register, task_names

    if "bench-replay" not in task_names():
        register(_sweeplab_task(epochs))
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.toml"
    fixed = f'epochs = {epochs}\nwork_kind = "{work[0]}"\nwork_s = {work[1]}\n' if work[1] > 0 else f"epochs = {epochs}\n"
    space.write_text(f'[search.x]\nlow = 0.0\nhigh = 0.1\n\n[fixed]\n{fixed}', encoding="utf-8")
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


def real_epochs(args: argparse.Namespace, folder: Path, tracking_uri: str | None = None,
                prefix: str = "work") -> dict[str, float | int | str]:
    """The epochs-of-real-time case (see the module docstring): the bare study, the peer, and
    sweeplab with one write per evaluation in the background and on the training thread, each
    epoch doing ``--epoch-seconds`` of ``--epoch-work``; overhead per trial and ratios to the peer.
    With ``tracking_uri`` (a ``sweep server``), both write there; figures are named ``prefix_*``."""
    trials, epochs, work = args.work_trials, args.epochs, (args.epoch_work, args.epoch_seconds)
    if args.epoch_work == "torch":
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
    epoch_work(*work)  # calibrates the torch work before anything is timed
    base = bare(trials, epochs, work)
    peer_s = peer(trials, epochs, folder, tracking_uri, study_name=f"peer-{prefix}", work=work)
    with Probe() as probe:
        ours_s = sweeplab_run(trials, epochs, folder, plots=False, study=f"{prefix}-each", flush_seconds=0.0, work=work,
                              tracking_uri=tracking_uri)
    with Probe(synchronous=True) as inline:
        inline_s = sweeplab_run(trials, epochs, folder, plots=False, study=f"{prefix}-each-inline", flush_seconds=0.0,
                                work=work, tracking_uri=tracking_uri)
    peer_overhead = (peer_s - base) / trials
    figures: dict[str, float | int | str] = {
        "work": f"{args.epoch_work} {args.epoch_seconds} s per epoch, {trials} trials x {epochs} epochs"
                + (f", {torch.get_num_threads()} torch threads" if args.epoch_work == "torch" else ""),
        "work_bare_epoch_s": base / (trials * epochs),
        "work_bare_s": base, "work_peer_s": peer_s, "work_sweeplab_s": ours_s, "work_inline_s": inline_s,
        "work_peer_overhead_per_trial_s": peer_overhead,
        "work_sweeplab_overhead_per_trial_s": (ours_s - base) / trials,
        "work_ratio_sweeplab_to_peer": (ours_s - base) / trials / peer_overhead,
        "work_sweeplab_log_point_s_per_trial": probe.log_point_s / trials,
        "work_sweeplab_writes_per_trial": probe.writes / trials,
        "work_inline_overhead_per_trial_s": (inline_s - base) / trials,
        "work_ratio_inline_to_peer": (inline_s - base) / trials / peer_overhead,
        "work_inline_log_point_s_per_trial": inline.log_point_s / trials,
    }
    return {key.replace("work", prefix, 1): value for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plots", action="store_true", help="also measure sweeplab with curve PNGs on")
    parser.add_argument("--json", type=Path, help="write the figures to this file too")
    parser.add_argument("--epoch-seconds", type=float, default=0.1,
                        help="the epochs-of-real-time case: work per epoch, in seconds (0: skip that case)")
    parser.add_argument("--epoch-work", choices=("sleep", "torch"), default="sleep",
                        help="what an epoch's work is: sleep, or torch matrix products that compete for the CPU")
    parser.add_argument("--work-trials", type=int, default=10, help="trials in the epochs-of-real-time case")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads for --epoch-work torch (default: torch's)")
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
        # Real epochs take longer than the 1 s flush interval: then every evaluation is due for its
        # own log_batch call. Written in the background, and (as before) on the training thread.
        with Probe() as probe:
            each_s = sweeplab_run(args.trials, args.epochs, folder, plots=False, study="measured-each", flush_seconds=0.0)
        with Probe(synchronous=True) as inline:
            inline_s = sweeplab_run(args.trials, args.epochs, folder, plots=False, study="measured-each-inline",
                                    flush_seconds=0.0)
        peer_overhead = figures["peer_overhead_per_trial_s"]
        figures.update({
            "sweeplab_flush_each_eval_overhead_per_trial_s": (each_s - base) / args.trials,
            "ratio_flush_each_eval_to_peer": (each_s - base) / args.trials / peer_overhead,
            "sweeplab_flush_each_eval_log_point_s_per_trial": probe.log_point_s / args.trials,
            "sweeplab_flush_each_eval_writes_per_trial": probe.writes / args.trials,
            "inline_flush_each_eval_overhead_per_trial_s": (inline_s - base) / args.trials,
            "ratio_inline_flush_each_eval_to_peer": (inline_s - base) / args.trials / peer_overhead,
            "inline_flush_each_eval_log_point_s_per_trial": inline.log_point_s / args.trials,
            "inline_flush_each_eval_writes_per_trial": inline.writes / args.trials,
        })
        if args.epoch_seconds > 0:
            figures.update(real_epochs(args, folder))
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
                if args.epoch_seconds > 0:
                    server_work = real_epochs(args, folder, tracking, prefix="server_work")
            for name, seconds in timed.items():
                figures[f"{name}_overhead_per_trial_s"] = (seconds - base) / args.trials
            if args.epoch_seconds > 0:
                figures.update(server_work)
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
