"""Trials per hour of one sweep with ``--workers 2`` on this machine, against the same sweep with
its two workers as Ray actors: ``--ray local --workers 2`` (a Ray runtime started and stopped
with the sweep) and ``--ray ADDRESS --workers 2`` on a two-node Ray cluster on 127.0.0.1 (one CPU
each, token auth, started once by this program before the first round and stopped after the
last; its start-up is printed, not counted in any arm).

Every run is the real ``sweep`` command as a subprocess, in a fresh temporary store, with the same
task, space, seed and ``--trials``; the arms alternate within each of ``--repeats`` rounds (the
order turns by one arm each round), so that a change of the machine's load reaches every arm. The
task is ``examples/digits/digits.py:fit`` with every parameter fixed but the learning rate, no
pruner and no early stop, so that every trial does the same work (``--epochs`` epochs of the
same MLP at the same batch size) and trials per hour measure the placement of trials, not the
configurations a sampler happened to draw.

Per arm and round:

* **wall**: seconds from just before the ``sweep run`` process starts to its exit (checks, data,
  study, parent run, workers' or actors' start, trials, test score, shutdown);
* **trials/hour**: finished trials (runs tagged ``sweeplab.state`` complete or pruned) x 3600 / wall;
* **ratio**: trials/hour over the ``--workers 2`` arm's of the same round;
* **first point**: seconds from the same start to the earliest timestamp of a curve point
  (metric ``val_accuracy``, step >= 1) of any trial run in the store's ``mlflow.db``: MLflow's
  metric timestamp, which sweeplab stamps (``time.time()``) when the trial reports the point,
  and hands to its writer at once for a run's first point;
* **parent run**: to the ``start_time`` of the sweep's parent run (the main process has done its
  checks, prepared the data and opened the study; with ``--ray``, after ``ray.init``, which
  comes first); **first trial**: to the earliest ``start_time`` of a trial run (a worker, or an
  actor's worker, began a trial); **mean trial**: the trial runs' mean ``end_time - start_time``;
  **after last trial**: from the latest ``end_time`` of a trial run to the exit (closing the
  sweep, stopping the workers or actors, Ray's shutdown);
* **busy**: the trial runs' summed durations over 2 x wall, the share of the two trial slots
  that held a trial.

With ``--ray ADDRESS`` on the embedded store (as here) the head serves the store to the nodes for
the sweep's lifetime (``sweeplab/sweeps/head_stores.py``: MLflow's tracking server and Optuna's
gRPC storage proxy), so that arm's workers track over HTTP and gRPC. After the rounds, Ray alone
is timed the way ``sweep run`` uses it, once for ``local`` and once for the cluster: ``import
ray``, ``ray.init``, two one-CPU actors placed and answering a call, ``ray.shutdown``.

    python benchmarks/ray_vs_workers.py --trials 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASK = str(ROOT / "examples" / "digits" / "digits.py") + ":fit"
#: Everything but the learning rate fixed: each trial the same work.
FIXED = {"batch_size": 16, "hidden": 128, "layers": 2, "dropout": 0.1, "weight_decay": 1e-4}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _family(root: int) -> list[int]:
    """``root`` and every process below it, as /proc shows them now."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children[int(stat.read_text().rpartition(")")[2].split()[1])].append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    family, todo = [], [root]
    while todo:
        pid = todo.pop()
        family.append(pid)
        todo += children[pid]
    return family


class Cluster:
    """Ray nodes of one CPU each on 127.0.0.1, each a ``ray start --block`` in a session of its
    own (stopped by killing its processes, not by ``ray stop``, which would stop every Ray on the
    machine), every port its own, temporary files under a short folder (Ray's socket paths are
    limited in length). As ``tests/sweeps/test_ray.py`` starts them."""

    def __init__(self, temp: Path, env: dict[str, str]) -> None:
        self.temp, self.port = temp, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "TMPDIR": str(temp)}
        self.nodes: list[subprocess.Popen] = []
        self._ports = iter(range(random.randrange(20000, 50000, 1000), 65000, 100))

    def start_node(self) -> None:
        head = not self.nodes
        workers = next(self._ports)
        where = (["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={_free_port()}",
                  f"--temp-dir={self.temp}"] if head else [f"--address={self.address}"])
        ports = {name: _free_port() for name in ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                                                 "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")}
        command = [str(BIN / "ray"), "start", "--block", *where, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                   "--disable-usage-stats", f"--object-store-memory={100 * 2**20}", f"--min-worker-port={workers}",
                   f"--max-worker-port={workers + 99}", *(f"--{name}={port}" for name, port in ports.items())]
        log = self.temp / f"node-{len(self.nodes)}.log"
        with log.open("a") as out:
            self.nodes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                               env=self.env))
        deadline = time.monotonic() + 120
        while self._live_nodes() < len(self.nodes):
            if time.monotonic() > deadline or self.nodes[-1].poll() is not None:
                raise RuntimeError(f"Ray node {len(self.nodes) - 1} did not join: {log.read_text()[-3000:]}")
            time.sleep(1)

    def _live_nodes(self) -> int:
        status = subprocess.run([str(BIN / "ray"), "status", f"--address={self.address}"], capture_output=True,
                                text=True, timeout=60, env=self.env)
        active = status.stdout.partition("Active:")[2].partition("Pending:")[0]
        return sum(word.startswith("node_") for word in active.split())

    def stop(self) -> None:
        for node in reversed(self.nodes):
            for pid in _family(node.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            node.wait(timeout=30)


def _command(args: argparse.Namespace, store: Path, placement: list[str]) -> list[str]:
    sets = [f"{key}={value}" for key, value in {**FIXED, "epochs": args.epochs}.items()]
    return [str(BIN / "sweep"), "run", TASK, "--trials", str(args.trials), "--sampler", "random", "--pruner", "none",
            "--no-early-stop", "--seed", "0", "--store-dir", str(store), *(w for s in sets for w in ("--set", s)),
            "--workers", "2", *placement]


def _measure(store: Path, started: float) -> dict[str, Any]:
    """What the store says of the sweep that started at ``started`` (seconds since the epoch)."""
    db = sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True)
    try:
        trials = "SELECT run_uuid FROM tags WHERE key = 'sweeplab.role' AND value = 'trial'"
        runs = db.execute(f"SELECT start_time, end_time FROM runs WHERE run_uuid IN ({trials})").fetchall()
        (first_point,) = db.execute(f"SELECT MIN(timestamp) FROM metrics WHERE key = 'val_accuracy' AND step >= 1 "
                                    f"AND run_uuid IN ({trials})").fetchone()
        finished = db.execute(f"SELECT COUNT(*) FROM tags WHERE key = 'sweeplab.state' AND value IN ('complete', 'pruned') "
                              f"AND run_uuid IN ({trials})").fetchone()[0]
        (parent,) = db.execute("SELECT MIN(start_time) FROM runs WHERE run_uuid IN "
                               "(SELECT run_uuid FROM tags WHERE key = 'sweeplab.role' AND value = 'sweep')").fetchone()
    finally:
        db.close()
    ended = [(start, end) for start, end in runs if start and end]
    return {"finished": finished, "runs": len(runs),
            "parent_run_s": parent / 1000 - started if parent else None,
            "first_point_s": first_point / 1000 - started if first_point else None,
            "first_trial_s": min(start for start, _ in runs) / 1000 - started if runs else None,
            "last_trial_end_s": max(end for _, end in ended) / 1000 - started if ended else None,
            "trial_seconds": sum(end - start for start, end in ended) / 1000,
            "mean_trial_s": sum(end - start for start, end in ended) / 1000 / len(ended) if ended else None}


#: What :class:`Processes` watches for, by a piece of the command line (Ray's actors rename their
#: process ``ray::CLASS.METHOD``): the processes where a run's time goes before its first trial.
WATCHED = {"mlflow_server_s": "mlflow server", "optuna_proxy_s": "sweeplab.sweeps.head_stores",
           "actor_s": "ray::_Worker", "worker_s": "sweeplab.sweeps.worker"}


class Processes(threading.Thread):
    """When each :data:`WATCHED` kind of process is first seen (seconds after ``started``), among
    the processes whose ``TMPDIR`` is under ``root`` (this program's: every arm's sweep and its
    children, and the cluster's nodes and their actors), polling /proc every 0.2 s."""

    def __init__(self, root: Path, started: float) -> None:
        super().__init__(daemon=True)
        self.marker, self.started = f"TMPDIR={root}".encode(), started
        self.seen: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    kinds = [k for k, piece in WATCHED.items() if k not in self.seen and piece in line]
                    if kinds and any(v.startswith(self.marker) for v in (proc / "environ").read_bytes().split(b"\0")):
                        for kind in kinds:
                            self.seen[kind] = time.time() - self.started
                except OSError:  # ended meanwhile
                    continue


def _run(args: argparse.Namespace, name: str, placement: list[str], env: dict[str, str], root: Path, round_: int) -> dict[str, Any]:
    store = root / f"{name.replace(' ', '_').replace('-', '')}-{round_}"
    command = _command(args, store, placement)
    started, clock = time.time(), time.perf_counter()
    watch = Processes(root, started)
    watch.start()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=args.limit)
    finally:
        watch.done.set()
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        raise RuntimeError(f"{name}, round {round_}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result = {"arm": name, "round": round_, "wall_s": wall, **_measure(store, started),
              **{kind: watch.seen.get(kind) for kind in WATCHED}}
    result["trials_per_hour"] = 3600 * result["finished"] / wall
    result["busy"] = result["trial_seconds"] / (2 * wall)
    shutil.rmtree(store, ignore_errors=True)
    return result


PROBE = """
import json, sys, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
if sys.argv[1] == "local":
    ray.init(address="local", include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
else:
    ray.init(address=sys.argv[1], log_to_driver=False)
t2 = time.perf_counter()

class Probe:
    def ping(self):
        return 1

actors = [ray.remote(Probe).options(num_cpus=1).remote() for _ in range(2)]
ray.get([actor.ping.remote() for actor in actors])
t3 = time.perf_counter()
for actor in actors:
    ray.kill(actor)
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "two_actors_s": t3 - t2, "shutdown_s": t4 - t3}))
"""


def _probe(address: str, env: dict[str, str], cwd: Path) -> dict[str, float]:
    """What Ray alone costs, as sweep run pays it: ``import ray``, ``ray.init`` (``local``: a
    runtime started; else connecting to the cluster), two one-CPU actors placed and answering a
    call (an actor is a new Python process on a node), ``ray.shutdown``."""
    done = subprocess.run([sys.executable, "-c", PROBE, address], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"Ray probe at {address}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(values: list[float | None], digits: int = 1) -> str:
    return ", ".join("-" if v is None else f"{v:,.{digits}f}" for v in values)


def _table(results: list[dict[str, Any]], arms: list[str]) -> None:
    base = {r["round"]: r["trials_per_hour"] for r in results if r["arm"] == arms[0]}
    rows = {arm: [{**r, "ratio": r["trials_per_hour"] / base[r["round"]],
                   "tail_s": r["wall_s"] - r["last_trial_end_s"] if r["last_trial_end_s"] is not None else None}
                  for r in results if r["arm"] == arm] for arm in arms}
    tables = [
        [("finished trials", "finished", 0), ("wall s", "wall_s", 1), ("trials/hour", "trials_per_hour", 0),
         ("ratio to `--workers 2`", "ratio", 2), ("mean trial s", "mean_trial_s", 1), ("busy", "busy", 2),
         ("after last trial s", "tail_s", 1)],
        [("parent run", "parent_run_s", 1), ("head's MLflow server", "mlflow_server_s", 1),
         ("head's Optuna proxy", "optuna_proxy_s", 1), ("first actor", "actor_s", 1),
         ("first worker process", "worker_s", 1), ("first trial", "first_trial_s", 1), ("first point", "first_point_s", 1)],
    ]
    for title, columns in zip(("values of each round", "seconds from the start, each round"), tables):
        print(f"\n| arm ({title}) | " + " | ".join(name for name, _, _ in columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for arm in arms:
            cells = [_fmt([r[key] for r in rows[arm]], digits) for _, key, digits in columns]
            if columns[3][1] == "ratio":
                cells[3] += f" (median {statistics.median(r['ratio'] for r in rows[arm]):.2f})"
            print(f"| `{arm}` | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="finished trials of each sweep")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each trial (its length)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs every arm once")
    parser.add_argument("--limit", type=float, default=1800, help="seconds one sweep may take")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    temp = Path(tempfile.mkdtemp(prefix="rvw", dir="/tmp"))  # short: Ray's socket paths
    (temp / "cluster").mkdir()
    cluster = Cluster(temp / "cluster", base_env)
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"args": vars(args), "results": results}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")

    try:
        clock = time.perf_counter()
        cluster.start_node()
        cluster.start_node()
        report["cluster_start_s"] = time.perf_counter() - clock
        print(f"Ray cluster of 2 one-CPU nodes at {cluster.address}: started in {report['cluster_start_s']:.1f} s", flush=True)
        local_env = {**base_env, "TMPDIR": str(temp)}  # every arm's processes: TMPDIR under temp (Processes)
        arms = [("--workers 2", [], local_env), ("--ray local --workers 2", ["--ray", "local"], local_env),
                ("--ray ADDRESS --workers 2", ["--ray", cluster.address], cluster.env)]
        for round_ in range(args.repeats):
            for name, placement, env in arms[round_ % len(arms):] + arms[:round_ % len(arms)]:
                result = _run(args, name, placement, env, temp, round_)
                results.append(result)
                print(f"round {round_} {name}: {result['finished']} trials in {result['wall_s']:.1f} s = "
                      f"{result['trials_per_hour']:,.0f} trials/hour; first point {_fmt([result['first_point_s']])} s, "
                      f"parent run {_fmt([result['parent_run_s']])} s, first trial {_fmt([result['first_trial_s']])} s, "
                      f"mean trial {_fmt([result['mean_trial_s']])} s, last trial end {_fmt([result['last_trial_end_s']])} s; "
                      + ", ".join(f"{kind} {_fmt([result[kind]])}" for kind in WATCHED), flush=True)
                save()
        report["ray_alone"] = {"local": _probe("local", local_env, temp), "ADDRESS": _probe(cluster.address, cluster.env, temp)}
        save()
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)
    _table(results, [name for name, _, _ in arms])
    print(f"\nRay alone (import ray, ray.init, two one-CPU actors placed and answering, ray.shutdown), seconds; "
          f"cluster start {report['cluster_start_s']:.1f}:")
    for where, probe in report["ray_alone"].items():
        print(f"  {where}: " + ", ".join(f"{key.removesuffix('_s')} {value:.1f}" for key, value in probe.items()))


if __name__ == "__main__":
    main()
