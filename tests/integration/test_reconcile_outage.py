"""The webhook receiver's side of a database outage (issue 12, item 5: found by the chaos run).

A 1 s Postgres restart in the chaos run wrote about 230 lines in the receiver's log: each batch
of events warned and was retried one event at a time, and each event then logged an ERROR.
Now the outage is one warning and one line when the database is back, every event is answered
503 (mintfax sends it again), and nothing is tried one by one against a database that is away.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.db import make_engine
from outbox.errors import DatabaseUnavailable
from outbox.reconcile import EventResult, Reconciler
from tests.integration.test_reconcile import T0, event
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


def test_a_database_outage_is_one_warning_and_every_event_is_unavailable(
    away: Reconciler, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    events = [event("fax.delivered", f"fax-{n}", T0) for n in range(3)]
    caplog.set_level(logging.INFO)
    for _ in range(3):  # three batches while it is away
        results = away.handle_events(events)
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
        assert back.handle_events(events) == [EventResult.PENDING] * 3
        assert _lines(caplog) == [("WARNING", "outage.database_back")]
    finally:
        back.close()


def test_a_batch_that_fails_on_its_own_is_still_applied_one_by_one(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Not an outage: an event the database refuses (a NUL byte in its payload) fails alone.
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    good = event("fax.delivered", "fax-good", T0)
    bad = event("fax.delivered", "fax-bad", T0, error_message="nul \x00 byte")
    try:
        caplog.set_level(logging.INFO)
        first, second = reconciler.handle_events([good, bad])
        assert first is EventResult.PENDING
        assert isinstance(second, Exception) and not isinstance(second, DatabaseUnavailable)
        actions = [a for _, a in _lines(caplog)]
        assert "webhook.batch_failed" in actions
        assert "outage.database_lost" not in actions
    finally:
        reconciler.close()
