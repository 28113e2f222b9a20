"""The simulator's two clocks, and timestamps written the way mintfax writes them.

`SimClock` (real UTC time plus an offset the control API can advance) stamps records and runs the
24 h idempotency window, so tests can jump a day ahead. Rate limits, carrier steps and webhook
backoff use the real monotonic clock instead, so they agree with clients over real time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class SimClock:
    """Real UTC time plus an offset that only moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> datetime:
        self.offset += timedelta(seconds=seconds)
        return self.now()


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a `Z`, as mintfax writes timestamps."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
