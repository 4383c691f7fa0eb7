"""The errors sweeplab raises on purpose, each a one-line message and an exit status.

::

    SweeplabError            every error below; ``except SweeplabError`` catches them all
    ├── UsageError           bad input: a file, a value, a flag (exit 2, nothing written)
    ├── Unreachable          a database or tracking server stayed away (exit 75, EX_TEMPFAIL)
    ├── SweepFailed          the sweep ran and every trial failed (exit 1)
    └── InternalError        sweeplab itself failed while running a trial (exit 70, EX_SOFTWARE)

Only what a trainer raises fails a trial (its reason on the trial and its run) and the sweep goes
on; an error in sweeplab's own bookkeeping around a trial (summarising its curve, logging its
artifacts) stops the sweep as :class:`InternalError`, since every later trial would fail alike
and look like the model's fault. The same command resumes the sweep once the cause is fixed.
"""

from __future__ import annotations

__all__ = ["InternalError", "SweepFailed", "SweeplabError", "Unreachable", "UsageError"]


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
    waits (``--outage-limit``). The message names it and the last error, in one line. Nothing
    finished is lost: the same command resumes the sweep once it answers again."""

    exit_code = 75


class SweepFailed(SweeplabError):
    """The sweep ran but no trial finished (each failure's reason is on its MLflow run)."""

    exit_code = 1


class InternalError(SweeplabError):
    """sweeplab failed around a trial, not the trainer (see the module docstring). The message
    names the trial, the error and the log file holding its traceback."""

    exit_code = 70
