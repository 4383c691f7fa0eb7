"""``sweep run --workers K``: K worker processes on one machine share one study.

The main process does what must happen once (validate, read and prepare the data into the disk
cache, create the study and the MLflow parent run, recover from a killed run), then starts K
processes that each run the same sweep as ``role="worker"``: they draw trials from the shared
Optuna storage (the embedded journal file, or an RDB) until the study holds ``--trials``
finished trials in all, so the number is a total, not per worker; a worker waits rather than
start a trial that the trials running elsewhere would make one too many. With ``--sampler
grid`` the main process queues the cells and the workers only take queued trials, so each cell
runs exactly once.

Each worker gets ``cores // K`` torch threads (two processes with two threads each on two cores
slow down several times) and, with ``--gpus 0,1``, one GPU in turn through
``CUDA_VISIBLE_DEVICES``; ``--gpus 0`` with ``--workers 4`` (or ``--gpus 0,0,1,1``) puts
several workers on one card (:mod:`sweeplab.sweeps.sharing`). Their output goes to ``STORE/workers/worker-N.log``; the main process
shows progress from the study, then scores the test split and closes the parent run. A worker
killed mid-trial is found by the others (``sweeps.recovery``), which run its parameters again;
Ctrl-C in the main process, or its death by any signal, interrupts every worker; a stop signal
(``SIGTERM``...) is passed on to each as itself, so that each trial saves its resume state.

Each worker is the program :mod:`sweeplab.sweeps.worker` (``python -m sweeplab.sweeps.worker
OPTIONS.json``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeplab.core.stopping import Stopped
from sweeplab.errors import InternalError, SweepFailed, SweeplabError, Unreachable, UsageError
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.sharing import worker_environment

__all__ = ["MAIN_PID", "STOPPING", "THREAD_POOLS", "WORKER_ENV", "StudyProgress", "ended_badly", "run_workers"]



def _dump(options: SweepOptions, path: Path) -> None:
    path.write_text(json.dumps(options.as_json(), default=str), encoding="utf-8")


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


class StudyProgress:
    """What the main process shows of the trials its workers run, read from the study: the
    sweep's start when made, then each trial that finished since the last look (:meth:`report`)."""

    def __init__(self, study: optuna.Study, target: int, observer: Any) -> None:
        self.study, self.observer = study, observer
        observer.sweep_started(study.study_name, target, self.finished())
        self.seen = {t.number for t in study.get_trials(deepcopy=False)}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.best: float | None = study.best_value if complete else None
        self.maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE

    def finished(self) -> int:
        """The study's finished (complete or pruned) trials."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED))

    def report(self) -> None:
        """Tell the observer about trials that finished since the last look."""
        from sweeplab.sweeps.outcomes import outcome  # here: a worker sets its SIGINT handler before importing MLflow

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if trial.number in self.seen:
                continue
            self.seen.add(trial.number)
            state = outcome(trial)
            if state == "duplicate":  # a queued grid cell another trial ran: it never started
                continue
            value = trial.value if trial.state == TrialState.COMPLETE else None
            if value is not None and (self.best is None or (value > self.best if self.maximise else value < self.best)):
                self.best = value
            self.observer.trial_finished(trial.number, state, value, self.best)


def _start_worker(i: int, options: SweepOptions, spec: Path, log: Path) -> subprocess.Popen:
    """Worker ``i``: its threads, its GPU in turn, its log (appended to: a replacement's output
    follows the output of the worker it replaces). In a session of its own, so that Ctrl-C in the
    terminal reaches the main process alone, which interrupts each worker once."""
    threads = str(_threads(options.runtime.workers))
    env = {**os.environ, "SWEEPLAB_THREADS": threads, MAIN_PID: str(os.getpid()), WORKER_ENV: str(i)}
    for pool in THREAD_POOLS:  # numpy's and scikit-learn's thread pools too, unless the user set them
        env.setdefault(pool, threads)
    env.update(worker_environment(options.runtime.cards, options.runtime.workers, i))  # its cards, round robin
    with log.open("a", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", "sweeplab.sweeps.worker", str(spec)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def ended_badly(code: int) -> str:
    """How a worker that did not end normally ended, in words."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def run_workers(options: SweepOptions, study: optuna.Study, target: int, observer: Any, folder: Path) -> list[str]:
    """Start ``options.runtime.workers`` worker processes on this sweep and wait for them (see the module
    docstring). A worker that stops on bad input makes this a one-line error; Ctrl-C stops them all.

    A worker that dies otherwise (the kernel's out-of-memory killer, a crash) while the study
    still needs trials is replaced, up to ``options.runtime.workers`` replacements in all, so that the
    retry of its trial is run; returns a note for each such death."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "options.json"
    _dump(options.with_(workers=1, role="worker"), spec)
    progress = StudyProgress(study, target, observer)
    logs = [folder / f"worker-{i}.log" for i in range(options.runtime.workers)]
    for log in logs:
        log.write_text("", encoding="utf-8")
    processes: dict[int, subprocess.Popen] = {}
    notes: list[str] = []
    given_up: set[int] = set()
    try:
        for i, log in enumerate(logs):  # one by one: a Ctrl-C meanwhile reaches those already started
            processes[i] = _start_worker(i, options, spec, log)
        while True:
            progress.report()
            codes = {i: p.poll() for i, p in processes.items()}  # poll each: a killed worker is reaped, not left a zombie
            stopped = next(((i, STOPPING[code]) for i, code in codes.items() if code in STOPPING), None)
            if stopped is not None:  # bad input, sweeplab's own error, a store away: the others meet it too
                i, error = stopped
                line = _last_line(logs[i]).removeprefix("error: ")
                raise error(line if error is Unreachable else f"worker {i} stopped: {line}")
            for i in [i for i, code in codes.items() if code not in (None, 0) and i not in given_up]:
                finished = progress.finished()
                replace_it = finished < target and len(notes) < options.runtime.workers
                notes.append(f"worker {i} {ended_badly(codes[i])} (see {logs[i]})"
                             + ("; a replacement was started" if replace_it else ""))
                if replace_it:
                    processes[i] = _start_worker(i, options, spec, logs[i])
                else:
                    given_up.add(i)
            if all(p.poll() is not None for p in processes.values()):
                break
            time.sleep(1.0)
        progress.report()
    except BaseException as exc:  # Ctrl-C, a stop signal, or the storage stayed unreachable: stop every worker, then say why
        # A stop signal is passed on as itself: each worker's trial stops at its next step and saves
        # its resume state; otherwise an interruption (each closes its running trial as killed).
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signum)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finished = progress.finished()
    if finished == 0 and all(p.returncode != 0 for p in processes.values()):
        i = max(processes)
        raise SweepFailed(f"no trial finished and every worker ended badly; worker {i} "
                          f"{ended_badly(processes[i].returncode)}: {_last_line(logs[i]).removeprefix('error: ')}")
    return notes


#: The exit statuses of a worker that stop the sweep at once (see sweeplab.errors), and the
#: error the main process raises for each; any other failure (a crash) gets a replacement.
STOPPING: dict[int, type[SweeplabError]] = {error.exit_code: error for error in (UsageError, InternalError, Unreachable)}


def _last_line(log: Path) -> str:
    """The last line a worker wrote (its one-line error), or where to look."""
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else f"see {log}"


#: The environment variable that gives a worker its main process's pid.
MAIN_PID = "SWEEPLAB_MAIN_PID"

#: Set (to the worker's index) in a worker process.
WORKER_ENV = "SWEEPLAB_WORKER"

#: The thread-pool sizes of the numerical libraries a trainer may use besides torch.
THREAD_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
