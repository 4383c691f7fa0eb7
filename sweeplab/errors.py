"""The exceptions the command line turns into a one-line message: bad input (exit 2) and a store
that stopped answering (exit 75, EX_TEMPFAIL: the same command, run again later, resumes)."""

from __future__ import annotations

__all__ = ["SweeplabError", "Unreachable"]


class SweeplabError(Exception):
    """Bad input from the user (a file, a value, a flag). The message is the whole story: it
    names the thing and what was expected, in one line, and the CLI prints it without a
    traceback."""


class Unreachable(Exception):
    """A database or tracking server the sweep writes to did not answer for longer than the sweep
    waits (``--outage-limit``). The message names it and the last error, in one line. Nothing
    finished is lost: the same command resumes the sweep once it answers again."""
