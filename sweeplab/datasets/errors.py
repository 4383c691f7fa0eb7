"""The error the readers raise for data that cannot be used at all."""

from __future__ import annotations

from sweeplab.errors import UsageError

__all__ = ["DataError"]


class DataError(UsageError):
    """A data directory or file that cannot be used at all: one line naming it and what was
    expected (exit 2). A single bad row is not an error: the reader counts it in its
    :class:`~sweeplab.core.data_report.ReadReport` and goes on."""
