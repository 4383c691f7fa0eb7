"""``sweep run --ray ADDRESS``: the trials run on the nodes of a Ray cluster.

As with ``--workers K`` (:mod:`sweeplab.sweeps.workers`), the main process does what must happen
once (validate, prepare the data, create the study and the MLflow parent run, recover), then
starts K workers that draw trials from the shared Optuna storage until the study is done, and
shows progress from the study. Here each worker is a Ray actor placed by Ray on a node of the
cluster, holding what ``--trial-resources`` asks for (``cpu=1`` unless given; ``gpu=0.5`` puts two
trials on one card, which Ray hands out: no lock files), and running the worker program
(:mod:`sweeplab.sweeps.worker`) as its child process. A trial on a node is therefore the same
trial as on this machine: curves, summary, artifacts, pruning, resume states, recovery of killed
trials. ``--workers K`` is how many run at once (default: as many as the nodes hold). Each trial's
run is tagged with the id of the Ray node it ran on (``sweeplab.node``, as ``ray status`` lists
it).

``--ray local`` starts a Ray runtime on this machine for the sweep and stops it after; ``--ray
auto`` connects to the cluster this machine belongs to (``RAY_ADDRESS``, else the one ``ray
start`` made here); ``--ray HOST:PORT`` (or ``ray://HOST:PORT``) to that cluster. An address
nothing answers at, a resource the cluster lacks (``gpu=0.5`` without GPUs, a misspelt name) or a
trial no node can hold is one line, exit 2, before any work (:func:`on_cluster`).

A node that dies takes its workers with it: their trials are found dead by the other workers (by
their process on the same machine, else by their heartbeats, ``--heartbeat``) and run again from
their resume state, elsewhere; the main process starts a replacement actor (up to K in all) while
the study still needs trials. Ctrl-C or a stop signal in the main process is passed on to each
worker as with ``--workers``; the main process's death ends its actors, and each worker then
interrupts itself (its parent is gone).

The nodes reach the sweep's stores through this machine: what is kept in files here (the
embedded store) is served to them for the sweep's lifetime (:mod:`sweeplab.sweeps.head_stores`:
MLflow's tracking server with its artifacts, Optuna's gRPC storage proxy, on the address Ray
knows this machine by, behind a login made for the sweep); ``--tracking-uri`` and ``--storage``
servers are reached as given. With ``--ray local`` the one node is this machine, which reads the
files itself. A worker served by the head keeps a store folder of its node
(``$TMPDIR/sweeplab-UID-node-HASH``, its user's alone: :func:`node_folder`): its data cache, shared by the node's trials, and its copies of
resume states. The folder the command runs in is each worker's too, where the nodes have it (a
task's FILE.py, a relative data folder). A worker's output is kept on its node; its last lines
are appended to ``STORE/workers/worker-N.log`` when it ends.

Ray is an optional extra (``pip install "sweeplab[ray]"``), imported only by the functions here
that use it; importing this module costs nothing (a trial's module reads :data:`NODE_ENV`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.core.stopping import Stopped
from sweeplab.errors import SweepFailed, Unreachable
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.ray_cluster import RAY_NAMES

if TYPE_CHECKING:
    import optuna

    from sweeplab.sweeps.head_stores import Served
    from sweeplab.tracker.store import Store

__all__ = ["NODE_ENV", "card_environment", "node_folder", "run_ray_workers"]

#: Set in a worker process on a Ray node: the node's id, which its trials' runs are tagged with.
NODE_ENV = "SWEEPLAB_NODE"

#: What a worker on a node needs of this process's environment: the credentials of a served store.
_FORWARDED = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

_DONE_GRACE_SECONDS = 10.0  # a worker still there this long after the study is done is ended (a pending replacement)
_STOP_SECONDS = 30.0  # how long workers asked to stop get to close their trials
_PLACED_SECONDS = 5.0  # how long a placed actor takes to answer a stop; one that does not is still waiting for a node
_LOG_LINES = 200  # the last lines of a worker's output brought back to the store folder


@dataclass(frozen=True)
class _Ended:
    """How a worker's actor ended: ``code``, its worker program's exit status (None: the actor was
    lost, its node with it); ``how``, in words; ``output``, its last lines."""

    code: int | None
    how: str
    output: str = ""

    @property
    def last_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1].removeprefix("error: ") if lines else self.how


def run_ray_workers(options: SweepOptions, study: optuna.Study, target: int, observer: Any, folder: Path) -> list[str]:
    """Run ``options.runtime.workers`` workers of the sweep as Ray actors on the cluster that
    :func:`on_cluster` connected to, and wait for them (see the module docstring), the stores
    served to the nodes meanwhile where they are files here (:mod:`sweeplab.sweeps.head_stores`;
    not with ``--ray local``, whose nodes are this machine). A worker that stops on bad input or
    a store away makes this that one-line error, as with ``--workers``; one lost (its node died)
    or that crashed while the study still needs trials is replaced, up to
    ``options.runtime.workers`` replacements in all; returns a note for each."""
    import ray

    from sweeplab.sweeps.head_stores import Served, needs_serving, serving_stores
    from sweeplab.tracker.store import resolve_store

    folder.mkdir(parents=True, exist_ok=True)
    store = resolve_store(options.tracking.store_dir, options.tracking.tracking_uri, options.tracking.storage)
    serve = options.runtime.ray != "local" and needs_serving(store)
    with serving_stores(store, ray.util.get_node_ip_address(), folder) if serve else contextlib.nullcontext(Served()) as served:
        node_store = hashlib.sha1(f"{socket.getfqdn()}:{store.root}".encode()).hexdigest()[:12] if serve else None
        forwarded = {name: os.environ[name] for name in _FORWARDED if name in os.environ}
        call = (json.dumps(_worker_options(options, store, served).as_json(), default=str), os.getcwd(), node_store,
                {**forwarded, **served.env})
        return _run_actors(ray, options, study, target, observer, folder, call)


def _run_actors(ray: Any, options: SweepOptions, study: optuna.Study, target: int, observer: Any, folder: Path,
                call: tuple[str, str, str | None, dict[str, str]]) -> list[str]:
    """Start the workers' actors with the arguments ``call`` of :meth:`_Worker.run`, replace the
    lost ones, and wait until every one has ended (see :func:`run_ray_workers`)."""
    from sweeplab.sweeps.workers import STOPPING, StudyProgress

    count = options.runtime.workers
    placement = _placement(options.runtime.resources)
    actor_class = ray.remote(_Worker)
    progress = StudyProgress(study, target, observer)
    logs = [folder / f"worker-{i}.log" for i in range(count)]
    for log in logs:
        log.write_text("", encoding="utf-8")
    actors: dict[int, Any] = {}
    runs: dict[Any, int] = {}  # the pending run of each worker's actor -> the worker's number
    ended: dict[int, _Ended] = {}
    ended_by_us: set[int] = set()
    notes: list[str] = []

    def start(i: int) -> None:
        actors[i] = actor_class.options(**placement).remote(i, max(1, int(options.runtime.resources["cpu"])),
                                                             options.runtime.resources.get("gpu", 0.0))
        runs[actors[i].run.remote(*call)] = i

    try:
        for i in range(count):
            start(i)
        done_at: float | None = None
        while runs:
            progress.report()
            # Not waiting inside Ray, which would turn a stop signal's Stopped into a plain KeyboardInterrupt.
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ready:
                i = runs.pop(ref)
                ended[i] = _outcome(ray, ref)
                _keep_output(logs[i], ended[i])
                if ended[i].code in STOPPING:  # bad input, sweeplab's own error, a store away: the others meet it too
                    error, line = STOPPING[ended[i].code], ended[i].last_line
                    raise error(line if error is Unreachable else f"worker {i} stopped: {line}")
                with contextlib.suppress(Exception):  # its resources back at once; one lost never runs beside its replacement
                    ray.kill(actors[i])
                if ended[i].code != 0 and i not in ended_by_us:
                    replace_it = progress.finished() < target and len(notes) < count
                    notes.append(f"worker {i} {ended[i].how} (see {logs[i]})"
                                 + ("; a replacement was started" if replace_it else ""))
                    if replace_it:
                        start(i)
            done_at = done_at or (time.monotonic() if _done(study, progress, target) else None)
            if runs and done_at is not None and time.monotonic() - done_at > _DONE_GRACE_SECONDS:
                for i in set(runs.values()) - ended_by_us:  # still waiting for a node when the study was done (a replacement)
                    ended_by_us.add(i)
                    ray.kill(actors[i])
            time.sleep(1.0 if runs and not ready else 0)
        progress.report()
    except BaseException as exc:  # Ctrl-C, a stop signal, a worker's one-line error: stop every worker, then say why
        _stop(ray, actors, runs, exc.signum if isinstance(exc, Stopped) else signal.SIGINT)
        raise
    finally:
        for actor in actors.values():  # their resources back to the cluster at once
            with contextlib.suppress(Exception):
                ray.kill(actor)
    if progress.finished() == 0 and ended and all(e.code != 0 for e in ended.values()):
        i = max(ended)
        raise SweepFailed(f"no trial finished and every worker ended badly; worker {i} {ended[i].how}: {ended[i].last_line}")
    return notes


def _worker_options(options: SweepOptions, store: Store, served: Served) -> SweepOptions:
    """The options a worker on a node runs: one worker of the sweep, not on a cluster of its own,
    with the stores this process resolved (a node has no ``MLFLOW_TRACKING_URI`` of this shell),
    or where the head serves them (its store folder then is one of its node's, made by
    :meth:`_Worker.run`)."""
    worker = options.with_(workers=1, role="worker", ray=None, trial_resources=None)
    if served.tracking_uri is None and served.storage is None:
        return worker.with_(store_dir=store.root, tracking_uri=None if store.is_default else store.tracking_uri)
    return worker.with_(tracking_uri=served.tracking_uri or store.tracking_uri, storage=served.storage or store.optuna_storage,
                        served_artifacts=served.artifacts)


def _placement(resources: Mapping[str, float]) -> dict[str, Any]:
    """The actor options of one worker: what ``--trial-resources`` asks for, the workers spread
    over the nodes, two calls at once (its run, and a stop while it runs), no restart by Ray (the
    main process replaces a lost worker and says so)."""
    return {"num_cpus": resources["cpu"], "num_gpus": resources.get("gpu", 0),
            "resources": {n: a for n, a in resources.items() if n not in RAY_NAMES},
            "scheduling_strategy": "SPREAD", "max_concurrency": 2, "max_restarts": 0}


def card_environment(gpu_ids: Sequence[Any], share: float) -> dict[str, str]:
    """What tells a worker that holds ``share`` of the card(s) ``gpu_ids`` Ray gave it (a
    fraction: ``--trial-resources gpu=0.5``) that others share its card, as ``--gpus 0,0`` does
    on one machine (:mod:`sweeplab.sweeps.sharing`): a trial out of GPU memory there is run once
    more alone on its card, once the trials there have ended, none starting meanwhile (the
    card's lock files in the worker's store folder, which the workers of one node share).
    Nothing for whole cards or none."""
    from sweeplab.sweeps.sharing import CARD_ENV, CARD_WORKERS_ENV

    if not gpu_ids or not 0 < share < 1:
        return {}
    return {CARD_ENV: ",".join(str(i) for i in gpu_ids), CARD_WORKERS_ENV: str(max(2, math.floor(1 / share + 1e-9)))}


def _outcome(ray: Any, ref: Any) -> _Ended:
    """How the run ``ref`` of a worker's actor ended."""
    from sweeplab.sweeps.workers import ended_badly

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the actor died or cannot be reached: its node, or ray.kill
        return _Ended(None, f"was lost with its Ray actor ({type(exc).__name__}: its node may have died)")
    kept = f"; its whole output there: {result['log']}" if result["log"] else ""
    where = f"on node {result['node']} ({result['host']}{kept})"
    code = result["code"]
    return _Ended(code, ("ended " if code == 0 else f"{ended_badly(code)} ") + where, result["output"])


def _keep_output(log: Path, ended: _Ended) -> None:
    """Append what is known of a worker's end to its log in the store folder."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"--- {ended.how}\n{ended.output}" + ("" if ended.output.endswith("\n") or not ended.output else "\n"))


def _done(study: optuna.Study, progress: Any, target: int) -> bool:
    """Whether the study holds ``target`` finished trials and runs none."""
    from optuna.trial import TrialState

    return progress.finished() >= target and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _stop(ray: Any, actors: Mapping[int, Any], runs: Mapping[Any, int], signum: int) -> None:
    """Pass ``signum`` on to each running worker (a stop signal: each trial saves its resume
    state; SIGINT: each closes its trial as interrupted) and give them time to end; an actor
    still waiting for a node, or one that does not answer, is ended at once."""
    if not runs:
        return
    with contextlib.suppress(Exception):  # the cluster itself may be what went away
        asked = {actors[i].stop.remote(int(signum)): i for i in runs.values()}
        answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=_PLACED_SECONDS)
        for ref in set(asked) - set(answered):
            ray.kill(actors[asked[ref]])
        ray.wait(list(runs), num_returns=len(runs), timeout=_STOP_SECONDS)


class _Worker:
    """One worker of the sweep as a Ray actor (placed as :func:`_placement` says): :meth:`run`
    runs the worker program on its node until the study is done; :meth:`stop`, called meanwhile,
    passes a signal on to it."""

    def __init__(self, number: int, threads: int, gpu_share: float = 0.0) -> None:
        self.number, self.threads, self.gpu_share = number, threads, gpu_share
        self.process: subprocess.Popen | None = None
        self.stopped: int | None = None
        self.lock = threading.Lock()

    def run(self, spec: str, cwd: str, node_store: str | None, env: Mapping[str, str]) -> dict[str, Any]:
        """Run the worker program with the options ``spec`` (JSON) in the folder ``cwd`` (where
        this node has it), with its store folder ``$TMPDIR/sweeplab-node-{node_store}`` of this
        node when the head serves the stores (the node's data cache: made by its first trial,
        read by the later ones); returns its exit status, its last lines and where its whole
        output is."""
        import ray

        from sweeplab.sweeps.workers import MAIN_PID, THREAD_POOLS, WORKER_ENV

        node, host = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        if node_store is not None:
            own = node_folder(node_store)
            if isinstance(own, str):  # another user's, or open to others: one line, and the sweep stops
                return {"code": 2, "output": f"error: {own}", "log": None, "node": node, "host": host}
            options = json.loads(spec)
            options["tracking"]["store_dir"] = str(own)
            spec = json.dumps(options)
        folder = Path(tempfile.mkdtemp(prefix=f"sweeplab-worker-{self.number}-"))
        (folder / "options.json").write_text(spec, encoding="utf-8")
        log = folder / "worker.log"
        environment = {**os.environ, **env, NODE_ENV: node, WORKER_ENV: str(self.number), "SWEEPLAB_THREADS": str(self.threads)}
        environment.pop(MAIN_PID, None)  # the worker watches its parent, this actor: gone with the sweep or its node
        environment.update(card_environment(ray.get_gpu_ids(), self.gpu_share))
        for pool in THREAD_POOLS:
            environment.setdefault(pool, str(self.threads))
        with self.lock:
            if self.stopped is not None:
                shutil.rmtree(folder, ignore_errors=True)
                return {"code": 128 + self.stopped, "output": "", "log": None, "node": node, "host": host}
            with log.open("w", encoding="utf-8") as out:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "sweeplab.sweeps.worker", str(folder / "options.json")],
                    cwd=cwd if os.path.isdir(cwd) else None, stdout=out, stderr=subprocess.STDOUT, env=environment,
                    start_new_session=True)
        code = self.process.wait()
        output = _tail(log)
        (folder / "options.json").unlink(missing_ok=True)
        kept = code != 0 and bool(output)  # the whole output stays on the node only when the worker ended badly, saying why
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)
        return {"code": code, "output": output, "log": str(log) if kept else None, "node": node, "host": host}

    def stop(self, signum: int) -> None:
        """Pass ``signum`` on to the worker program (or keep it from starting)."""
        with self.lock:
            self.stopped = signum
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signum)


def node_folder(tag: str) -> Path | str:
    """The store folder of this node's workers for the sweep ``tag`` names:
    ``$TMPDIR/sweeplab-UID-node-TAG``, made with mode 700; or why it cannot be used (one line): a
    folder there that is another user's, a link, or open to others (its resume states are
    unpickled and its data cache read: nobody else may write there)."""
    folder = Path(tempfile.gettempdir()) / f"sweeplab-{os.getuid()}-node-{tag}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = folder.lstat()
    except OSError as exc:
        return f"--ray: this node cannot make its store folder {folder} ({exc.strerror})"
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        return (f"--ray: the node's store folder {folder} is not a folder of this user's alone (mode "
                f"{stat.S_IMODE(found.st_mode):o}, owner {found.st_uid}); remove it, or set TMPDIR for the nodes")
    return folder


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_LINES:])
    except OSError:
        return ""
