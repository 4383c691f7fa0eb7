"""One worker of ``sweep run --workers K`` (see :mod:`sweeplab.sweeps.workers`), as a program:
``python -m sweeplab.sweeps.worker OPTIONS.json`` runs the sweep the options file describes as
``role="worker"`` until the study is done, and stops when its main process is gone.

It exits with the status of the error that stopped it (:class:`~sweeplab.errors.SweeplabError`'s
``exit_code``: 2 bad input, 70 internal error, 75 a store stayed unreachable), its one-line
message last in its log, which the main process reads.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from sweeplab.errors import SweeplabError
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.signals import stop_on_signals
from sweeplab.sweeps.workers import MAIN_PID
from sweeplab.tracker.reconnect import stop_retrying

__all__ = ["main"]


def _load(path: Path) -> SweepOptions:
    """The options the main process wrote for its workers (:func:`sweeplab.sweeps.workers.run_workers`)."""
    return SweepOptions.from_json(json.loads(path.read_text(encoding="utf-8")))


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
    main_pid = int(os.environ.get(MAIN_PID, os.getppid()))

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
    from sweeplab.sweeps.driver import run_sweep  # after the handler: importing it takes seconds
    from sweeplab.trainers.device import set_threads

    set_threads(int(os.environ.get("SWEEPLAB_THREADS", "1")))
    try:
        _stop_with_main()
        options = _load(Path(sys.argv[1]))
        if options.tracking.served_artifacts is not None and options.tracking.tracking_uri is not None:
            from sweeplab.tracker.artifact_proxy import route_through_server

            route_through_server(options.tracking.served_artifacts, options.tracking.tracking_uri)
        with stop_on_signals():
            run_sweep(options)
    except SweeplabError as exc:  # one line in the worker's log, and the error's exit status for the main process
        print(f"error: {exc}", flush=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or its main process's end 130; a stop signal 128 + its number
        raise SystemExit(getattr(exc, "exit_code", 130)) from None


if __name__ == "__main__":
    main()
