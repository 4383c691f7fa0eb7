"""Where the ``sweep`` command writes: a rich console that keeps each line whole, and ends it at
its last character, when its output is not a terminal.

It overrides rich's private ``Console._render_buffer`` (the text of what was printed, before it
is written): this module is the one place that relies on it, and
``tests/test_console_frames.py`` fails if rich changes it."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, ConsoleDimensions
from rich.segment import Segment

__all__ = ["UNBROKEN", "Screen"]


class Screen(Console):
    """A console that does not break lines when its output is not a terminal: piped to a file
    or another program, each line a command prints, and each row of a table, stays one line
    however long (rich would break them at 80 columns, or at the width of the terminal the
    command's input comes from, mid-phrase). In a terminal rich wraps at the terminal's width,
    between words; a width given (``COLUMNS``) is kept either way."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        return size if self._width is not None or self.is_terminal else ConsoleDimensions(UNBROKEN, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        """What was printed, each line without the spaces rich pads a table's rows with to its
        widest row, when the output is not a terminal (a file, a pipe: ``grep``, ``diff``)."""
        text = super()._render_buffer(buffer)
        if self.is_terminal:
            return text
        return "\n".join(line.rstrip(" ") for line in text.split("\n"))


#: The width of a :class:`Screen` whose output is not a terminal: wide enough for any line.
UNBROKEN = 10_000
