"""The one clock for recorded times: ISO-8601 UTC strings (worklist rows, audit, model changes, cards)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now(timespec: str = "microseconds") -> str:
    """The current time as ISO-8601 UTC (``timespec`` as :meth:`datetime.isoformat`: ``"seconds"`` for
    cards and logs a person reads, microseconds where rows are ordered by it)."""
    return datetime.now(UTC).isoformat(timespec=timespec)
