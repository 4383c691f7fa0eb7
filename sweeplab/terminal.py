"""Where the ``sweep`` command writes: a rich console that keeps each line whole when its output
is not a terminal."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

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


#: The width of a :class:`Screen` whose output is not a terminal: wide enough for any line.
UNBROKEN = 10_000
