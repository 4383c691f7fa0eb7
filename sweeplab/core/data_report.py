"""What a reader skipped and why: counts per problem with the first offending lines or files.

A type of the core because a task's loaded data carries its reports
(:attr:`sweeplab.core.Loaded.reports`) to every part that shows them; the readers that fill them
are in :mod:`sweeplab.datasets`, and the error they raise when nothing is usable is
:class:`sweeplab.datasets.errors.DataError`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["ReadReport"]

_KEEP = 5  # offending places remembered per problem; the count is always exact


@dataclass
class ReadReport:
    """Counts of rows read, used and skipped, per problem kind (``missing image``, ...).

    Readers never die on one bad row: they record it here and go on. ``where`` is a line number
    or a file name, so a user can find the row.
    """

    source: str
    rows: int = 0
    used: int = 0
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)

    def skip(self, problem: str, where: str | int) -> None:
        """Record one skipped row."""
        self.counts[problem] += 1
        if len(self.first[problem]) < _KEEP:
            self.first[problem].append(str(where))

    def note(self, text: str) -> None:
        """Record something a user should know that is not a skipped row (a held-out split, the
        share of unknown tokens...)."""
        self.notes.append(text)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """One human-readable line per problem, e.g. ``3 x missing image (first: 12, 40, 77)``."""
        return [
            f"{self.source}: {n} x {problem} (first: {', '.join(self.first[problem])})"
            for problem, n in sorted(self.counts.items())
        ] + [f"{self.source}: {text}" for text in self.notes]

    def as_dict(self) -> dict[str, object]:
        """Plain values for logging as a JSON artifact."""
        return {
            "source": self.source,
            "rows": self.rows,
            "used": self.used,
            "skipped": {k: {"count": v, "first": self.first[k]} for k, v in self.counts.items()},
            "notes": list(self.notes),
        }
