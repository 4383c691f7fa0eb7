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
``CUDA_VISIBLE_DEVICES``. Their output goes to ``STORE/workers/worker-N.log``; the main process
shows progress from the study, then scores the test split and closes the parent run. A worker
killed mid-trial is found by the others (``sweeps.recovery``), which run its parameters again;
Ctrl-C in the main process, or its death by any signal, interrupts every worker.

Run as a program (``python -m sweeplab.sweeps.workers OPTIONS.json``) it is one worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeplab.errors import InternalError, SweeplabError, Unreachable, UsageError
from sweeplab.tracker.reconnect import stop_retrying

__all__ = ["run_workers"]

_PATHS = ("data_dir", "store_dir", "cache_dir")


def _dump(options: Any, path: Path) -> None:
    data = asdict(options)
    data["overrides"] = dict(options.overrides)
    path.write_text(json.dumps(data, default=str), encoding="utf-8")


def _load(path: Path) -> Any:
    from sweeplab.sweeps.driver import SweepOptions

    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _PATHS:
        data[key] = Path(data[key]) if data[key] is not None else None
    data["gpus"] = tuple(data["gpus"])
    known = {f.name for f in fields(SweepOptions)}
    return SweepOptions(**{k: v for k, v in data.items() if k in known})


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _report_new(study: optuna.Study, seen: set[int], observer: Any, best: list[float | None], maximise: bool) -> None:
    """Tell the observer about trials that finished since the last look."""
    from sweeplab.sweeps.recovery import outcome  # here: a worker sets its SIGINT handler before importing MLflow

    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if trial.number in seen:
            continue
        seen.add(trial.number)
        state = outcome(trial)
        if state == "duplicate":  # a queued grid cell another trial ran: it never started
            continue
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and (best[0] is None or (value > best[0] if maximise else value < best[0])):
            best[0] = value
        observer.trial_finished(trial.number, state, value, best[0])


def _start_worker(i: int, options: Any, spec: Path, log: Path) -> subprocess.Popen:
    """Worker ``i``: its threads, its GPU in turn, its log (appended to: a replacement's output
    follows the output of the worker it replaces). In a session of its own, so that Ctrl-C in the
    terminal reaches the main process alone, which interrupts each worker once."""
    env = {**os.environ, "SWEEPLAB_THREADS": str(_threads(options.workers)), _MAIN_PID: str(os.getpid())}
    if options.gpus:
        env["CUDA_VISIBLE_DEVICES"] = options.gpus[i % len(options.gpus)]
    with log.open("a", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", "sweeplab.sweeps.workers", str(spec)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _ended_badly(code: int) -> str:
    """How a worker that did not end normally ended, in words."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def run_workers(options: Any, study: optuna.Study, target: int, observer: Any, folder: Path) -> list[str]:
    """Start ``options.workers`` worker processes on this sweep and wait for them (see the module
    docstring). A worker that stops on bad input makes this a one-line error; Ctrl-C stops them all.

    A worker that dies otherwise (the kernel's out-of-memory killer, a crash) while the study
    still needs trials is replaced, up to ``options.workers`` replacements in all, so that the
    retry of its trial is run; returns a note for each such death."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "options.json"
    _dump(replace(options, workers=1, role="worker"), spec)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    observer.sweep_started(study.study_name, target, done)
    seen = {t.number for t in study.get_trials(deepcopy=False)}
    best: list[float | None] = [study.best_value if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None]
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    logs = [folder / f"worker-{i}.log" for i in range(options.workers)]
    for log in logs:
        log.write_text("", encoding="utf-8")
    processes: dict[int, subprocess.Popen] = {}
    notes: list[str] = []
    given_up: set[int] = set()
    try:
        for i, log in enumerate(logs):  # one by one: a Ctrl-C meanwhile reaches those already started
            processes[i] = _start_worker(i, options, spec, log)
        while True:
            _report_new(study, seen, observer, best, maximise)
            codes = {i: p.poll() for i, p in processes.items()}  # poll each: a killed worker is reaped, not left a zombie
            gone = [i for i, code in codes.items() if code == Unreachable.exit_code]
            if gone:  # the outage outlasted --outage-limit in a worker: the others face it too
                raise Unreachable(_last_line(logs[gone[0]]).removeprefix("error: "))
            for i in [i for i, code in codes.items() if code not in (None, 0, 2) and i not in given_up]:
                finished = sum(1 for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
                replace_it = finished < target and len(notes) < options.workers
                notes.append(f"worker {i} {_ended_badly(codes[i])} (see {logs[i]})"
                             + ("; a replacement was started" if replace_it else ""))
                if replace_it:
                    processes[i] = _start_worker(i, options, spec, logs[i])
                else:
                    given_up.add(i)
            if all(p.poll() is not None for p in processes.values()):
                break
            time.sleep(1.0)
        _report_new(study, seen, observer, best, maximise)
    except BaseException:  # Ctrl-C, or the storage stayed unreachable: stop every worker, then say why
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # each closes its running trial as killed
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    for i, process in processes.items():
        for error in (UsageError, InternalError):
            if process.returncode == error.exit_code:
                raise error(f"worker {i} stopped: {_last_line(logs[i])}")
    return notes


def _last_line(log: Path) -> str:
    """The last line a worker wrote (its one-line error), or where to look."""
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else f"see {log}"


#: The environment variable that gives a worker its main process's pid.
_MAIN_PID = "SWEEPLAB_MAIN_PID"

#: Seconds between two looks of a worker at its main process, and between two interruptions.
_WATCH_SECONDS = 1.0
_REPEAT_SECONDS = 10.0


def _stop_with_main() -> None:
    """Interrupt this worker (SIGINT, as Ctrl-C would) once its main process has died, even by
    ``kill -9``: the worker then closes its running trial as interrupted and exits, instead of
    training on unseen (holding a GPU that the rerun's workers need). A daemon thread watches the
    parent pid; it interrupts again every ``_REPEAT_SECONDS`` while the worker still runs, since
    Python drops a KeyboardInterrupt that lands in a finaliser or an import's weakref callback.
    (The kernel's parent-death signal is no simpler: it comes once for each thread of the dying
    main process, and cuts the clean-up short.)"""
    main_pid = int(os.environ.get(_MAIN_PID, os.getppid()))

    def watch() -> None:
        while os.getppid() == main_pid:
            time.sleep(_WATCH_SECONDS)
        stop_retrying()  # a storage call waiting out an outage gives up now
        while True:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(_REPEAT_SECONDS)

    threading.Thread(target=watch, name="sweeplab-main-watch", daemon=True).start()


def main() -> None:
    """One worker: run the sweep described by the options file until the study is done."""
    # A process started in the background by a non-interactive shell (`sweep run ... &` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt: the
    # interruption that stops a worker (Ctrl-C, its main process's death) would be lost. Set
    # first, so that an interruption during the imports below is not lost either.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch

    from sweeplab.sweeps.driver import run_sweep

    torch.set_num_threads(int(os.environ.get("SWEEPLAB_THREADS", "1")))
    try:
        _stop_with_main()
        run_sweep(_load(Path(sys.argv[1])))
    except SweeplabError as exc:  # one line in the worker's log, and the error's exit status for the main process
        print(f"error: {exc}", flush=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
