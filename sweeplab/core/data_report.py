"""What a reader skipped and why: counts per problem with the first offending lines or files.

A type of the core because a task's loaded data carries its reports
(:attr:`sweeplab.core.Loaded.reports`) to every part that shows them; the readers that fill them
are in :mod:`sweeplab.datasets`, and the error they raise when nothing is usable is
:class:`sweeplab.datasets.errors.DataError`.

When the data lose too much, a sweep stops before its first trial (:func:`bad_rows` says why, in
one line; ``--allow-bad-rows`` goes on). Two things stop it:

* a last line cut short: the file does not end with a newline and its last row is malformed, the
  mark of a copy or a download that stopped mid-file (the rows after it are missing too, and
  nothing says how many). A last row that parses is kept: a file without a final newline is
  common, and a row cut inside free text cannot be told from a whole one;
* a file that loses more than :data:`BAD_ROW_SHARE` (1%) of its rows to problems found while it
  is read: a malformed row, an unknown label, a missing file. Blank lines are not rows lost.

Fewer bad rows than that are reported (file, problem and line numbers) and the sweep goes on.
Images that do not decode are found later, when the data are prepared for the first trial, and
are added to the reports then (shown in the sweep's summary); they are not counted here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ALLOW_FLAG", "BAD_ROW_SHARE", "CUT_SHORT", "EMPTY_LINE", "ReadReport", "bad_rows"]

_KEEP = 5  # offending places remembered per problem; the count is always exact

#: The share of a file's rows it may lose to problems before a sweep stops (more than 1%).
BAD_ROW_SHARE = 0.01
#: The problem of a malformed last row with no newline after it (see the module docstring).
CUT_SHORT = "last line cut short (no newline at the end of the file)"
#: A blank line a reader counts: reported, but not a row lost.
EMPTY_LINE = "empty line"
#: The flag that lets a sweep go on with what is left.
ALLOW_FLAG = "--allow-bad-rows"


@dataclass
class ReadReport:
    """Counts of rows read, used and skipped, per problem kind (``missing image``, ...).

    Readers never die on one bad row: they record it here and go on. ``where`` is a line number
    or a file name, so a user can find the row.

    ``open_end`` is the number of the file's last line when no newline ends it, set by the reader
    before it reads that line: a row skipped at that line number is counted as :data:`CUT_SHORT`,
    whatever else is wrong with it, since being cut is why it is malformed.
    """

    source: str
    rows: int = 0
    used: int = 0
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)
    open_end: int | None = None

    def skip(self, problem: str, where: str | int) -> None:
        """Record one skipped row."""
        if self.open_end is not None and isinstance(where, int) and where == self.open_end:
            problem = CUT_SHORT
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

    @property
    def lost(self) -> int:
        """Skipped rows that held data (blank lines left out)."""
        return self.skipped - self.counts.get(EMPTY_LINE, 0)

    @property
    def cut_at(self) -> int | None:
        """The line number of a last line cut short, or ``None``."""
        return self.open_end if self.counts.get(CUT_SHORT) else None

    def problems(self) -> list[str]:
        """One human-readable line per problem, e.g. ``3 x missing image (first: 12, 40, 77)``; a
        last line cut short as ``PATH:LINE: last line cut short (...)``."""
        return [
            f"{self.source}:{self.open_end}: {CUT_SHORT}" if problem == CUT_SHORT
            else f"{self.source}: {n} x {problem} (first: {', '.join(self.first[problem])})"
            for problem, n in sorted(self.counts.items())
        ]

    def lines(self) -> list[str]:
        """:meth:`problems`, then one line per note."""
        return self.problems() + [f"{self.source}: {text}" for text in self.notes]

    def places(self, problem: str) -> str:
        """Where ``problem`` was found, for a message: ``lines 4, 9, 12, ...`` (or the files)."""
        first, more = self.first[problem], ", ..." if self.counts[problem] > len(self.first[problem]) else ""
        if all(w.isdigit() for w in first):
            return f"line{'s' if self.counts[problem] > 1 else ''} {', '.join(first)}{more}"
        return ", ".join(first) + more

    def as_dict(self) -> dict[str, object]:
        """Plain values for logging as a JSON artifact."""
        return {
            "source": self.source,
            "rows": self.rows,
            "used": self.used,
            "skipped": {k: {"count": v, "first": self.first[k]} for k, v in self.counts.items()},
            "notes": list(self.notes),
        }


def bad_rows(reports: Iterable[ReadReport], share: float = BAD_ROW_SHARE) -> str | None:
    """Why these data should stop a sweep, in one line, or ``None`` when they may go on: the first
    file whose last line is cut short, else the first that loses more than ``share`` of its rows
    (see the module docstring). The line names the file, the lines and :data:`ALLOW_FLAG`."""
    reports = list(reports)
    for report in reports:
        if report.cut_at is not None:
            others = report.lost - report.counts.get(CUT_SHORT, 0)
            also = f" ({others} more row{'s' if others > 1 else ''} skipped: {_problems(report)})" if others else ""
            return (f"{report.source}:{report.cut_at}: the last line is cut short (no newline at the end of the file: "
                    f"a copy or download that stopped?){also}; expected a complete file (fix it, or pass {ALLOW_FLAG} "
                    f"to go on with the {report.used} usable rows)")
    for report in reports:
        if report.rows and report.lost > share * report.rows:
            return (f"{report.source}: {report.lost} of {report.rows} rows skipped ({report.lost / report.rows:.1%}, "
                    f"more than {share:.0%}): {_problems(report)}; fix them, or pass {ALLOW_FLAG} "
                    f"to go on with the {report.used} rows left")
    return None


def _problems(report: ReadReport) -> str:
    """``3 x malformed row (...) at lines 4, 9, 12; 1 x unknown tag (...) at line 20``, blank lines
    and a cut last line left out."""
    return "; ".join(f"{n} x {problem} at {report.places(problem)}" for problem, n in sorted(report.counts.items())
                     if problem not in (CUT_SHORT, EMPTY_LINE))
