"""Production runs on the database's clock, never a host's (issue 8, item 4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbox.clock import DatabaseClock, FrozenClock, sql_now
from outbox.settings import Settings
from workers.runtime import Runtime

DB_NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def test_database_clock_reads_the_database_and_carries_it_with_the_monotonic_clock() -> None:
    ticks = [100.0]
    reads: list[datetime] = []

    def read() -> datetime:
        reads.append(DB_NOW)
        return DB_NOW

    clock = DatabaseClock(read, refresh=30, monotonic=lambda: ticks[0])
    assert clock.now() == DB_NOW
    ticks[0] += 12.5
    assert clock.now() == DB_NOW + timedelta(seconds=12.5)
    assert len(reads) == 1
    ticks[0] += 30
    clock.now()
    assert len(reads) == 2  # read again once the reading is older than `refresh`


def test_a_failed_reading_keeps_the_last_one_carried_forward() -> None:
    """The database restarts while a worker holds a 201: its clock still tells the time (the
    last reading plus the monotonic clock), so the outcome can be stamped and kept."""
    ticks = [100.0]
    answers: list[datetime | Exception] = [DB_NOW, ConnectionError("refused")]

    def read() -> datetime:
        answer = answers.pop(0) if answers else DB_NOW + timedelta(seconds=50)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = DatabaseClock(read, refresh=30, monotonic=lambda: ticks[0])
    assert clock.now() == DB_NOW
    ticks[0] += 40  # the reading is stale and the database is away
    assert clock.now() == DB_NOW + timedelta(seconds=40)
    ticks[0] += 1  # back: read again
    assert clock.now() == DB_NOW + timedelta(seconds=50)


def test_without_any_reading_a_failure_is_raised() -> None:
    def read() -> datetime:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        DatabaseClock(read).now()


def test_statements_get_no_now_from_the_database_clock_and_a_test_clock_s_own() -> None:
    assert sql_now(DatabaseClock(lambda: DB_NOW)) is None
    frozen = FrozenClock(DB_NOW)
    assert sql_now(frozen) == DB_NOW


def test_every_long_lived_object_of_a_process_runs_on_the_database_clock() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "MINTFAX_API_KEY": "fx_test_unit",
        }
    )
    runtime = Runtime(settings)  # builds nothing that connects until used
    assert isinstance(runtime.clock, DatabaseClock)
    assert runtime.submit_context.clock is runtime.clock
    assert runtime.rescuer._clock is runtime.clock
    assert runtime.fleet._clock is runtime.clock
    assert runtime.dispatcher(lambda ids: None, "q").clock is runtime.clock
    assert runtime.submit_context.http_timeout == settings.http_timeout_seconds
