"""The trial a program runs as, when sweeplab runs it as a command (``sweep run -- COMMAND``).

A program swept as a command reports each evaluation and learns whether to stop::

    from sweeplab import trial

    config = trial.config()                      # the trial's values, e.g. {"lr": 0.01, ...}
    for epoch in range(1, config["epochs"] + 1):
        ...
        if trial.report(epoch, {"train_loss": ..., "val_loss": ..., "val_accuracy": ...}):
            break                                # pruned, or past its overfitting onset

:func:`report` sends the evaluation to the sweep that started the program (over the Unix socket
named by ``SWEEPLAB_TRIAL_SOCKET``) and returns its answer: ``True`` when the trial should stop.
A program that goes on after ``True`` is ended (``SIGTERM``, then ``SIGKILL``). ``checkpoint=``
names a file or folder that holds the model of this evaluation: sweeplab copies it when the
evaluation is the trial's best so far, and the copy becomes the trial's checkpoint.

A long trial keeps its own state in :func:`folder` and says so with ``saved=True``; a retry of
the trial (after a kill, a preemption, a stop signal) finds it there, and :func:`resumed` says the
step it was saved at, with the curve up to that step already recorded. Name each state by its
step: a stop between the save and the report leaves the sweep one step behind the program's
newest file, and the retry must load the one :func:`resumed` names::

    start = 1
    if trial.resumed() is not None:
        start = int(trial.resumed()) + 1
        model.load_state_dict(torch.load(trial.folder() / f"state-{start - 1}.pt"))
    for epoch in range(start, config["epochs"] + 1):
        ...
        torch.save(model.state_dict(), trial.folder() / f"state-{epoch}.pt")
        (trial.folder() / f"state-{epoch - 2}.pt").unlink(missing_ok=True)  # keep the last two
        if trial.report(epoch, metrics, saved=True):
            break

A retry on a machine that does not hold the folder (the sweep's stores are shared, its disks are
not) starts afresh: :func:`resumed` is then ``None``. :func:`seed` is the trial's seed.

Under ``torchrun`` (or any launcher that sets ``RANK``) only rank 0 reports; the other ranks send
nothing, and when ``torch.distributed`` is initialised every rank gets rank 0's answer through a
broadcast, so all ranks stop at the same evaluation: every rank must then call :func:`report` at
the same evaluations, as a data-parallel loop does.

Run outside a sweep (no ``SWEEPLAB_TRIAL_SOCKET``), :func:`report` prints the evaluation as a
line and returns ``False``, and :func:`config` is empty, so the program runs as it did.

This module uses the standard library alone, so that a program pays nothing for it. A program in
another language reports by printing lines instead (see :mod:`sweeplab.trainers.command`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_ENV", "FOLDER_ENV", "RESUMED_ENV", "SEED_ENV", "SOCKET_ENV", "SweepGone", "config", "folder", "report",
           "resumed", "seed"]

#: The environment variable holding the trial's values as a JSON object.
CONFIG_ENV = "SWEEPLAB_TRIAL_CONFIG"
#: The environment variable naming the Unix socket the sweep listens on for this trial's reports.
SOCKET_ENV = "SWEEPLAB_TRIAL_SOCKET"
#: The environment variable naming the folder the trial's attempts share (:func:`folder`).
FOLDER_ENV = "SWEEPLAB_TRIAL_FOLDER"
#: The environment variable holding the step a retried trial goes on from (:func:`resumed`).
RESUMED_ENV = "SWEEPLAB_RESUMED_STEP"
#: The environment variable holding the trial's seed (:func:`seed`).
SEED_ENV = "SWEEPLAB_TRIAL_SEED"

_connection: socket.socket | None = None
_replies: Any = None


class SweepGone(RuntimeError):
    """The sweep that started this program no longer answers (it was killed): the trial is over."""


def config() -> dict[str, Any]:
    """The trial's values (the space's searched and fixed values over the defaults); empty outside
    a sweep."""
    text = os.environ.get(CONFIG_ENV)
    return dict(json.loads(text)) if text else {}


def folder() -> Path | None:
    """The folder where the program keeps its own state, kept across the trial's attempts and
    deleted once the trial has ended; ``None`` outside a sweep."""
    name = os.environ.get(FOLDER_ENV)
    return Path(name) if name else None


def seed() -> int | None:
    """The trial's seed (the sweep's ``--seed`` and the trial's number), to seed the program's
    generators with, as sweeplab seeds a built-in trial; ``None`` outside a sweep."""
    text = os.environ.get(SEED_ENV)
    return int(text) if text else None


def resumed() -> float | None:
    """The step of the last report made with ``saved=True`` by an earlier attempt of this trial
    (its state then in :func:`folder`); ``None`` for a first attempt, or when none was saved."""
    step = os.environ.get(RESUMED_ENV)
    return float(step) if step else None


def _rank() -> int:
    """This process's rank among the processes of a multi-process trial (``RANK``, as torchrun
    sets it); 0 for a program of one process."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _ask(message: Mapping[str, Any]) -> bool:
    """Send one evaluation to the sweep and read its answer."""
    global _connection, _replies
    path = os.environ[SOCKET_ENV]
    try:
        if _connection is None:
            _connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _connection.connect("\0" + path[1:] if path.startswith("@") else path)  # @NAME: Linux's abstract namespace
            _replies = _connection.makefile("r", encoding="utf-8")
        _connection.sendall((json.dumps(message) + "\n").encode("utf-8"))
        line = _replies.readline()
    except OSError as exc:
        raise SweepGone(f"the sweep that runs this trial does not answer at {path}: {exc}") from None
    if not line:
        raise SweepGone(f"the sweep that runs this trial closed {path}")
    return bool(json.loads(line)["stop"])


def _shared(answer: bool) -> bool:
    """Rank 0's ``answer``, on every rank of an initialised ``torch.distributed`` group."""
    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return answer
    box = [answer]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def report(step: int | float, metrics: Mapping[str, float], checkpoint: str | os.PathLike[str] | None = None,
           saved: bool = False) -> bool:
    """Report the evaluation at ``step`` (the epoch, or the optimizer step) with ``metrics`` by
    name; ``checkpoint``, a file or folder holding this evaluation's model; ``saved``: the
    program's state as of this evaluation is in :func:`folder`. Returns ``True`` when the trial
    should stop (see the module docstring)."""
    values = {str(name): float(value) for name, value in metrics.items()}
    if _rank() != 0:
        return _shared(False)
    if SOCKET_ENV not in os.environ:
        print(" ".join([f"step={step:g}", *(f"{name}={value:g}" for name, value in values.items())]), flush=True)
        return _shared(False)
    message = {"step": float(step), "metrics": values,
               "checkpoint": os.path.abspath(checkpoint) if checkpoint is not None else None, "saved": bool(saved)}
    return _shared(_ask(message))
