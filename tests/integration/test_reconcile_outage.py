"""The webhook receiver's side of a database outage (issue 12, item 5: found by the chaos run).

A 1 s Postgres restart in the chaos run wrote about 230 lines in the receiver's log: each batch
of events warned and was retried one event at a time, and each event then logged an ERROR.
Now the outage is one warning and one line when the database is back, every event is answered
503 (mintfax sends it again), and nothing is tried one by one against a database that is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.db import make_engine
from outbox.errors import DatabaseUnavailable
from outbox.reconcile import EventResult, Reconciler
from outbox.settings import libpq_url
from tests.integration.test_reconcile import T0, WRITERS, event, handle_batch
from workers.single_host.embedded import free_port


@pytest.fixture
def away() -> Iterator[Reconciler]:
    # Nothing listens on this port: what a restarting server looks like to a client.
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gone")
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    yield reconciler
    reconciler.close()
    engine.dispose()


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, getattr(r, "action", "")) for r in caplog.records]


@WRITERS
def test_a_database_outage_is_one_warning_and_every_event_is_unavailable(
    away: Reconciler, engine: Engine, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    events = [event("fax.delivered", f"fax-{n}", T0) for n in range(3)]
    caplog.set_level(logging.INFO)
    for _ in range(3):  # three batches while it is away
        results = handle_batch(away, events, writer)
        assert all(isinstance(r, DatabaseUnavailable) for r in results)
    with pytest.raises(DatabaseUnavailable):
        away.handle_event(events[0])
    assert _lines(caplog) == [("WARNING", "outage.database_lost")]
    assert "answering 503" in caplog.records[0].getMessage()

    # Back: the next batch is written, and the outage ends with one line.
    back = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    back.outages = away.outages  # one process: one outage log
    try:
        caplog.clear()
        assert handle_batch(back, events, writer) == [EventResult.PENDING] * 3
        assert _lines(caplog) == [("WARNING", "outage.database_back")]
    finally:
        back.close()


@WRITERS
def test_a_batch_that_fails_on_its_own_is_still_applied_one_by_one(
    engine: Engine, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    # Not an outage: an event the database refuses (a NUL byte in its payload) fails alone.
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    good = event("fax.delivered", "fax-good", T0)
    bad = event("fax.delivered", "fax-bad", T0, error_message="nul \x00 byte")
    try:
        caplog.set_level(logging.INFO)
        first, second = handle_batch(reconciler, [good, bad], writer)
        assert first is EventResult.PENDING
        assert isinstance(second, Exception) and not isinstance(second, DatabaseUnavailable)
        actions = [a for _, a in _lines(caplog)]
        assert "webhook.batch_failed" in actions
        assert "outage.database_lost" not in actions
    finally:
        reconciler.close()


def _backends(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_kept_connection_the_server_dropped_is_replaced_not_an_outage(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The receiver keeps its loop's connections between batches and does not ping them (a
    # round trip per batch). After a Postgres restart the kept one is dead: the next batch
    # must go through on a new connection, not answer 503 to the whole batch.
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))

    async def scenario() -> list[EventResult | Exception]:
        try:
            first = await reconciler.handle_events_async([event("fax.delivered", "fax-k1", T0)])
            assert first == [EventResult.PENDING]
            with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            return await reconciler.handle_events_async([event("fax.delivered", "fax-k2", T0)])
        finally:
            await reconciler.aclose()

    try:
        caplog.set_level(logging.INFO)
        assert asyncio.run(scenario()) == [EventResult.PENDING]
        actions = [a for _, a in _lines(caplog)]
        assert "webhook.reconnect" in actions
        assert "outage.database_lost" not in actions
    finally:
        reconciler.close()


def test_the_loops_connections_are_closed_when_the_receiver_stops(
    engine: Engine, database_url: str
) -> None:
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    before = _backends(database_url)

    async def scenario() -> tuple[int, int]:
        batches = [[event("fax.delivered", f"fax-c{n}-{k}", T0)] for k in range(2)
                   for n in range(3)]  # fmt: skip
        await asyncio.gather(*(reconciler.handle_events_async(b) for b in batches))
        kept = _backends(database_url)
        await reconciler.aclose()
        return kept, _backends(database_url)

    try:
        kept, after = asyncio.run(scenario())
        assert kept > before  # connections were kept for the next batches
        assert after == before
    finally:
        reconciler.close()
