"""An injectable clock: time is a dependency, passed even into SQL as `now`.

Production code asks a `Clock` for the time; tests hand in a `FrozenClock` they move by hand.
Production runs on the database's clock (`DatabaseClock`): its statements are given no `now`
(`sql_now` is None, so SQL uses its own `now()`), and the times it computes in Python (a
retry's `next_attempt_at`) count from the database's clock with the host's monotonic clock, so
no host's wall clock, however wrong, moves a lease, a rescue, a dispatch or the 24 h guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time (timezone-aware, UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The host's wall clock (not for leases or schedules: see `DatabaseClock`)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to, for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move time forward by `seconds` and return the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, moment: datetime) -> None:
        """Jump to `moment`."""
        self._now = moment


class DatabaseClock:
    """The database's clock: what production runs on (invariant 3).

    `now()` is the database's `now()`, read at most every `refresh` seconds through `read`,
    carried forward in between with the host's monotonic clock (which a wrong or stepped
    wall clock does not move). Statements are given no `now` at all (`sql_now`).
    """

    def __init__(
        self,
        read: Callable[[], datetime],
        *,
        refresh: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._refresh = refresh
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._anchor: tuple[datetime, float] | None = None

    def now(self) -> datetime:
        with self._lock:
            ticks = self._monotonic()
            if self._anchor is None or ticks - self._anchor[1] > self._refresh:
                before = self._monotonic()
                try:
                    moment = self._read()
                except Exception:
                    # The database is away (a restart): the last reading, carried forward on
                    # the monotonic clock, is as good as ever, and a worker that has just
                    # made a POST must be able to stamp its outcome to keep it.
                    if self._anchor is None:
                        raise
                    moment, anchored = self._anchor
                    return moment + timedelta(seconds=ticks - anchored)
                # The reading was taken somewhere in the round trip: call it its middle.
                ticks = self._monotonic()
                self._anchor = (moment, (before + ticks) / 2)
            moment, anchored = self._anchor
        return moment + timedelta(seconds=ticks - anchored)


def sql_now(clock: Clock) -> datetime | None:
    """The `now` to pass into SQL: None for the database's clock (SQL then uses `now()`),
    the injected clock's time otherwise (tests)."""
    return None if isinstance(clock, DatabaseClock) else clock.now()
