"""A running trial's heartbeat: how a trial of another machine or container is found dead.

A running trial records a heartbeat every ``--heartbeat`` seconds (:func:`trial_heartbeat`):
Optuna's own heartbeats on an RDB storage, judged by the database's clock; a counter in a user
attribute on the journal file, judged by how long a reader has seen it stand still, so that no
two clocks are compared. A trial silent for twice its interval is dead
(:mod:`sweeplab.sweeps.recovery`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import optuna

from sweeplab.sweeps import optuna_private

__all__ = ["trial_heartbeat"]


@contextlib.contextmanager
def trial_heartbeat(study: optuna.Study, trial_id: int, seconds: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``seconds`` while the block runs: Optuna's heartbeat
    thread on an RDB storage, else a thread that counts up the trial's ``heartbeat`` user
    attribute on the journal file (with ``heartbeat_seconds``, so that every reader judges the
    silence by this trial's own interval). It stops once the trial is no longer RUNNING."""
    if optuna_private.has_heartbeat(optuna_private.storage_of(study)):
        with optuna_private.heartbeat_thread(trial_id, optuna_private.storage_of(study)):
            yield
        return
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            try:
                if count == 0:
                    optuna_private.storage_of(study).set_trial_user_attr(trial_id, "heartbeat_seconds", seconds)
                optuna_private.storage_of(study).set_trial_user_attr(trial_id, "heartbeat", count)
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            except Exception as exc:  # a full disk...: the trial goes on; a peer may fail it as silent
                logging.getLogger(__name__).warning("could not record the heartbeat of a trial: %s", exc)
            count += 1
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=beat, name="sweeplab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
