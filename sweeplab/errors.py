"""The errors sweeplab raises on purpose, each a one-line message and an exit status, with its
context as attributes (the trial, the store, the log file), not only in the text.

::

    SweeplabError            every error below; ``except SweeplabError`` catches them all
    ├── UsageError           bad input: a file, a value, a flag (exit 2, nothing written)
    ├── Unreachable          a database or tracking server stayed away (exit 75, EX_TEMPFAIL)
    ├── SweepFailed          the sweep ran and every trial failed (exit 1)
    ├── TrainerError         the trainer or the task's code raised (fails its trial only)
    └── InternalError        sweeplab itself failed around a trial (exit 70, EX_SOFTWARE)

Who failed is decided in one place, :mod:`sweeplab.boundary`: what the trainer's or the task's
code raised becomes a :class:`TrainerError`, which fails its trial (its reason on the trial and
its run) while the sweep goes on; any other error, raised by sweeplab's own code before, inside
or after the trainer's call, fails the trial as an :class:`InternalError` and stops the sweep,
since every later trial would fail alike and look like the model's fault. The same command
resumes the sweep once the cause is fixed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InternalError", "SweepFailed", "SweeplabError", "TrainerError", "Unreachable", "UsageError", "first_line"]


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class SweeplabError(Exception):
    """The base of every error sweeplab raises on purpose; the message is one line."""

    #: The process exit status the command line uses for this error.
    exit_code = 1


class UsageError(SweeplabError):
    """Bad input from the user (a file, a value, a flag). The message is the whole story: it
    names the thing and what was expected, in one line, and the CLI prints it without a
    traceback."""

    exit_code = 2


class Unreachable(SweeplabError):
    """A database or tracking server the sweep writes to did not answer for longer than the sweep
    waits (``--outage-limit``): ``store`` names it (its address, without credentials). The
    message names it and the last error, in one line. Nothing finished is lost: the same command
    resumes the sweep once it answers again."""

    exit_code = 75

    def __init__(self, message: str, *, store: str | None = None) -> None:
        super().__init__(message)
        self.store = store


class SweepFailed(SweeplabError):
    """The sweep ran but no trial finished (each failure's reason is on its MLflow run)."""

    exit_code = 1


class TrainerError(SweeplabError):
    """What the trainer or a task's own code (``where``: ``fit``, ``save_checkpoint``,
    ``format_predictions``, ``evaluate_test``, ``load``...) raised: ``error``. It fails its trial
    only; the message is the trial's failure reason."""

    exit_code = 1

    def __init__(self, error: BaseException, where: str) -> None:
        super().__init__(first_line(error))
        self.error, self.where = error, where

    def __reduce__(self) -> tuple[type[TrainerError], tuple[BaseException, str]]:
        return type(self), (self.error, self.where)


class InternalError(SweeplabError):
    """sweeplab failed around a trial, not the trainer (see the module docstring): ``error`` in
    trial ``trial`` (``None``: outside a trial, or not known) of study ``study``; its traceback
    is in ``log``. :meth:`of` words the message from them."""

    exit_code = 70

    def __init__(self, message: str, *, error: BaseException | None = None, study: str | None = None,
                 trial: int | None = None, log: Path | None = None) -> None:
        super().__init__(message)
        self.error, self.study, self.trial, self.log = error, study, trial, log

    @classmethod
    def of(cls, error: BaseException, study: str, trial: int | None, log: Path) -> InternalError:
        """The error that stops the sweep after sweeplab's own ``error`` (in ``trial``)."""
        where = f"trial {trial}: " if trial is not None else ""
        return cls(f"{where}sweeplab failed ({first_line(error)}); traceback in {log}; the same command resumes the sweep",
                   error=error, study=study, trial=trial, log=log)
