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

The nodes must reach the sweep's stores as given: the store folder on a filesystem they share
(true of a cluster on one machine), or ``--tracking-uri`` and ``--storage`` servers; the folder
the command runs in is each worker's too, where the nodes have it (a task's FILE.py, a relative
data folder). When records are kept in files, each worker first checks that it sees this
machine's store folder and stops the sweep with one line if not (else it would start a store of
its own). Serving the stores from the head is not done here. A worker's output is kept on its
node; its last lines are appended to ``STORE/workers/worker-N.log`` when it ends.

Ray is an optional extra (``pip install "sweeplab[ray]"``), imported only by the functions here
that use it; importing this module costs nothing (a trial's module reads :data:`NODE_ENV`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.core.stopping import Stopped
from sweeplab.errors import SweepFailed, Unreachable, UsageError
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.ray_cluster import RAY_NAMES

if TYPE_CHECKING:
    import optuna

    from sweeplab.tracker.store import Store

__all__ = ["NODE_ENV", "run_ray_workers"]

#: Set in a worker process on a Ray node: the node's id, which its trials' runs are tagged with.
NODE_ENV = "SWEEPLAB_NODE"

#: The beginnings of store URIs that name a server (any other is a file on this machine).
_SERVED = ("http:", "https:", "databricks", "postgresql", "mysql", "mssql", "oracle")
#: What a worker on a node needs of this process's environment: the credentials of a served store.
_FORWARDED = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

_DONE_GRACE_SECONDS = 10.0  # a worker still there this long after the study is done is ended (a pending replacement)
_STOP_SECONDS = 30.0  # how long workers asked to stop get to close their trials
_PLACED_SECONDS = 5.0  # how long a placed actor takes to answer a stop; one that does not is still waiting for a node
_LOG_LINES = 200  # the last lines of a worker's output brought back to the store folder


@dataclass(frozen=True)
class _Ended:
    """How a worker's actor ended: ``code``, its worker program's exit status (None: the actor was
    lost, its node with it); ``how``, in words; ``output``, its last lines; ``refusal``, why it did
    not start (it does not see the store folder)."""

    code: int | None
    how: str
    output: str = ""
    refusal: str | None = None

    @property
    def last_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1].removeprefix("error: ") if lines else self.how


def run_ray_workers(options: SweepOptions, study: optuna.Study, target: int, observer: Any, folder: Path) -> list[str]:
    """Run ``options.runtime.workers`` workers of the sweep as Ray actors on the cluster that
    :func:`on_cluster` connected to, and wait for them (see the module docstring). A worker that
    stops on bad input or a store away makes this that one-line error, as with ``--workers``;
    one lost (its node died) or that crashed while the study still needs trials is replaced, up
    to ``options.runtime.workers`` replacements in all; returns a note for each."""
    import ray

    from sweeplab.sweeps.workers import STOPPING, StudyProgress
    from sweeplab.tracker.store import resolve_store

    folder.mkdir(parents=True, exist_ok=True)
    count = options.runtime.workers
    store = resolve_store(options.tracking.store_dir, options.tracking.tracking_uri, options.tracking.storage)
    call = (json.dumps(_worker_options(options, store).as_json(), default=str), os.getcwd(), _store_check(folder, store),
            {name: os.environ[name] for name in _FORWARDED if name in os.environ})
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
        actors[i] = actor_class.options(**placement).remote(i, max(1, int(options.runtime.resources["cpu"])))
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
                if ended[i].refusal is not None:
                    raise UsageError(ended[i].refusal)
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
        if call[2] is not None:
            Path(call[2][0]).unlink(missing_ok=True)
    if progress.finished() == 0 and ended and all(e.code != 0 for e in ended.values()):
        i = max(ended)
        raise SweepFailed(f"no trial finished and every worker ended badly; worker {i} {ended[i].how}: {ended[i].last_line}")
    return notes


def _worker_options(options: SweepOptions, store: Store) -> SweepOptions:
    """The options a worker on a node runs: one worker of the sweep, not on a cluster of its own,
    with the stores this process resolved (a node has no ``MLFLOW_TRACKING_URI`` of this shell)."""
    return options.with_(workers=1, role="worker", ray=None, trial_resources=None, store_dir=store.root,
                         tracking_uri=None if store.is_default else store.tracking_uri)


def _store_check(folder: Path, store: Store) -> tuple[str, str, str] | None:
    """When the sweep keeps records in files (the embedded store, a journal or SQLite file): a
    file only this sweep wrote, in its store folder, that each worker reads back before it starts
    (its path, its text, the folder); None when every record goes to servers."""
    if all(uri.startswith(_SERVED) for uri in (store.tracking_uri, store.optuna_storage)):
        return None
    check = folder / "ray-node-check"
    token = uuid.uuid4().hex
    check.write_text(token, encoding="utf-8")
    return str(check), token, str(store.root)


def _placement(resources: Mapping[str, float]) -> dict[str, Any]:
    """The actor options of one worker: what ``--trial-resources`` asks for, the workers spread
    over the nodes, two calls at once (its run, and a stop while it runs), no restart by Ray (the
    main process replaces a lost worker and says so)."""
    return {"num_cpus": resources["cpu"], "num_gpus": resources.get("gpu", 0),
            "resources": {n: a for n, a in resources.items() if n not in RAY_NAMES},
            "scheduling_strategy": "SPREAD", "max_concurrency": 2, "max_restarts": 0}


def _outcome(ray: Any, ref: Any) -> _Ended:
    """How the run ``ref`` of a worker's actor ended."""
    from sweeplab.sweeps.workers import ended_badly

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the actor died or cannot be reached: its node, or ray.kill
        return _Ended(None, f"was lost with its Ray actor ({type(exc).__name__}: its node may have died)")
    if "refusal" in result:
        return _Ended(-1, "did not start", refusal=result["refusal"])
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

    def __init__(self, number: int, threads: int) -> None:
        self.number, self.threads = number, threads
        self.process: subprocess.Popen | None = None
        self.stopped: int | None = None
        self.lock = threading.Lock()

    def run(self, spec: str, cwd: str, check: tuple[str, str, str] | None, env: Mapping[str, str]) -> dict[str, Any]:
        """Run the worker program with the options ``spec`` (JSON) in the folder ``cwd`` (where
        this node has it), once ``check`` shows that this node sees the store folder; returns its
        exit status, its last lines and where its whole output is, or why it did not start."""
        import ray

        from sweeplab.sweeps.workers import MAIN_PID, THREAD_POOLS, WORKER_ENV

        node, host = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        if check is not None and not _reads(check[0], check[1]):
            return {"refusal": f"--ray: node {host} ({node}) does not see this machine's store folder {check[2]}; with "
                               "--ray the nodes need the sweep's stores as given: keep the store folder on a filesystem "
                               "they share, or use --tracking-uri and --storage servers"}
        folder = Path(tempfile.mkdtemp(prefix=f"sweeplab-worker-{self.number}-"))
        (folder / "options.json").write_text(spec, encoding="utf-8")
        log = folder / "worker.log"
        environment = {**os.environ, **env, NODE_ENV: node, WORKER_ENV: str(self.number), "SWEEPLAB_THREADS": str(self.threads)}
        environment.pop(MAIN_PID, None)  # the worker watches its parent, this actor: gone with the sweep or its node
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


def _reads(path: str, text: str) -> bool:
    try:
        return Path(path).read_text(encoding="utf-8") == text
    except OSError:
        return False


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_LINES:])
    except OSError:
        return ""
