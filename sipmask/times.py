"""Times as users see them: ISO-8601 UTC out, ISO-8601 or Unix seconds in."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float | None, *, ms: bool = False) -> str | None:
    """Unix seconds → `2027-01-15T08:00:00Z` (with `.000` milliseconds when `ms`)."""
    if ts is None:
        return None
    spec = "milliseconds" if ms else "seconds"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """`--since` / `?since=`: Unix seconds or ISO-8601 (UTC when no zone is given).
    Raises ValueError for anything else."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
