"""How a failed trial is worded and recorded: its reason (on the trial and its run), and the
traceback of sweeplab's own errors in ``STORE/logs/errors.log``."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from types import FrameType

from sweeplab.errors import InternalError, TrainerError, first_line
from sweeplab.sweeps.outcomes import INTERNAL_ERROR
from sweeplab.trainers.oom import out_of_memory

__all__ = ["drop_locals", "failure_reason", "internal_error", "internal_reason"]


def failure_reason(error: TrainerError) -> str:
    """The ``fail_reason`` of a trial its trainer failed: the error's type and first line,
    prefixed with ``out of memory:`` when the GPU or the host ran out, so that such trials can
    be found by a query and told apart from bugs."""
    reason = first_line(error.error)
    return f"out of memory: {reason}" if out_of_memory(error.error) else reason


def internal_reason(error: BaseException) -> str:
    """The ``fail_reason`` of a trial sweeplab's own ``error`` failed."""
    return f"{INTERNAL_ERROR}: {first_line(error)}"


def internal_error(error: BaseException, study: str, trial: int | None, log: Path) -> InternalError:
    """Append the traceback of sweeplab's own ``error`` (in ``trial`` of ``study``) to ``log``;
    returns the one-line error that stops the sweep."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        where = f" trial {trial}" if trial is not None else ""
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} study {study}{where}\n")
        out.write("".join(traceback.format_exception(error)))
    return InternalError.of(error, study, trial, log)


def drop_locals(error: BaseException) -> None:
    """Clear the local variables of the finished frames ``error``'s traceback holds (and those of
    the exceptions it chains), so that a failed trial's model and batches are freed even when
    something keeps the exception: a log handler holding the record Optuna logs, or a notebook's
    last traceback. The frames that called a traceback's first one and have finished too (the
    trainer's, when sweeplab's error was raised again after the trainer went on) are cleared as
    well, up to the first frame still running. The text of the traceback is kept."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        if current.__traceback__ is not None:
            _clear_callers(current.__traceback__.tb_frame.f_back)
        current = current.__cause__ or current.__context__


def _clear_callers(frame: FrameType | None) -> None:
    """Clear ``frame`` and its callers' locals until one is still running."""
    while frame is not None:
        try:
            frame.clear()
        except RuntimeError:  # still running: so are its callers
            return
        frame = frame.f_back
