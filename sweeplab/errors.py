"""The one exception type the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["SweeplabError"]


class SweeplabError(Exception):
    """Bad input from the user (a file, a value, a flag). The message is the whole story: it
    names the thing and what was expected, in one line, and the CLI prints it without a
    traceback."""
