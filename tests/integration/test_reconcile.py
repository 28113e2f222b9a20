"""Reconciliation on a real database (issue 9, item 1's state transitions and item 6's NOTIFY):
events recorded once, statuses only forward, terminal states sticky, older news never wins, an
event that beats the worker applied the moment the fax id is stored, the application told."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select

from outbox import fax_state, fax_states_by_reference
from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.events import FaxEvent
from outbox.models import PauseReason, fax_events
from outbox.reconcile import EventResult, Reconciler
from outbox.submit import Outcome
from tests.integration.test_submit import Harness, accepted, harness  # noqa: F401

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def event(kind: str, fax_id: str, at: datetime, **data: Any) -> FaxEvent:
    status = {
        "fax.queued": "queued",
        "fax.sending": "in_progress",
        "fax.retry_scheduled": "in_progress",
        "fax.delivered": "delivered",
        "fax.failed": "failed",
    }.get(kind)
    body = {"id": fax_id, "status": status, **data}
    event_id = f"evt_{uuid.uuid4().hex}"
    envelope = {"event_id": event_id, "event": kind, "timestamp": at.isoformat(), "data": body}
    return FaxEvent(event_id, kind, at, body, envelope)


@pytest.fixture
def reconciler(engine: Engine) -> Iterator[Reconciler]:
    reconciler = Reconciler(engine, Alerter(FrozenClock(T0)), None, FrozenClock(T0))
    yield reconciler
    reconciler.close()  # alert deliveries under way, before the engine goes


def submitted(harness: Harness, fax_id: str, ref: str = "r1") -> int:  # noqa: F811
    """A row accepted by mintfax as `fax_id`, through the real submit path."""
    row = harness.enqueue(ref=ref)
    harness.sender.script = [accepted(fax_id)]
    harness.dispatch()
    assert harness.submit(row) is Outcome.SUBMITTED
    return row


def test_delivered_closes_the_row_with_pages_and_time(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
) -> None:
    row = submitted(harness, "fax-a")
    done = event("fax.delivered", "fax-a", T0, pages=3, completed_at=T0.isoformat())
    assert reconciler.handle_event(done) is EventResult.APPLIED
    state = harness.row(row)
    assert (state["status"], state["pages"], state["completed_at"]) == ("delivered", 3, T0)
    assert state["mintfax_status"] == "delivered"


def test_failed_keeps_mintfaxs_error_code_and_message(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
) -> None:
    row = submitted(harness, "fax-b")
    failed = event("fax.failed", "fax-b", T0, error_code="busy", error_message="line busy")
    assert reconciler.handle_event(failed) is EventResult.APPLIED
    state = harness.row(row)
    assert (state["status"], state["status_reason"]) == ("failed", "busy")
    assert (state["error_code"], state["error_message"]) == ("busy", "line busy")


def test_a_duplicate_event_is_recorded_once_and_changes_nothing(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    engine: Engine,
) -> None:
    submitted(harness, "fax-c")
    sending = event("fax.sending", "fax-c", T0)
    assert reconciler.handle_event(sending) is EventResult.APPLIED
    assert reconciler.handle_event(sending) is EventResult.DUPLICATE
    with engine.connect() as conn:
        assert len(conn.execute(select(fax_events)).all()) == 1


def test_statuses_only_move_forward_and_older_news_never_wins(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
) -> None:
    row = submitted(harness, "fax-d")
    later, earlier = T0 + timedelta(seconds=30), T0
    assert reconciler.handle_event(event("fax.sending", "fax-d", later)) is EventResult.APPLIED
    # Reordered: an older event of the same rank, then one of a lower rank.
    assert reconciler.handle_event(event("fax.sending", "fax-d", earlier)) is EventResult.STALE
    assert reconciler.handle_event(event("fax.queued", "fax-d", later)) is EventResult.STALE
    assert harness.row(row)["last_event_at"] == later
    assert reconciler.handle_event(event("fax.delivered", "fax-d", later)) is EventResult.APPLIED
    # Terminal is sticky, whatever arrives after it.
    failed = event("fax.failed", "fax-d", later + timedelta(minutes=5), error_code="busy")
    assert reconciler.handle_event(failed) is EventResult.STALE
    assert harness.row(row)["status"] == "delivered"


def test_an_event_that_beats_the_worker_is_applied_when_the_fax_id_is_stored(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    engine: Engine,
) -> None:
    early = event("fax.delivered", "fax-e", T0, pages=2)
    assert reconciler.handle_event(early) is EventResult.PENDING
    row = submitted(harness, "fax-e")  # the worker stores the id now
    state = harness.row(row)
    assert (state["status"], state["pages"]) == ("delivered", 2)
    with engine.connect() as conn:
        [(outcome, outbox_id)] = conn.execute(
            select(fax_events.c.outcome, fax_events.c.outbox_id)
        ).all()
    assert (outcome, outbox_id) == ("applied", row)


def test_the_race_between_webhook_and_worker_never_loses_the_event(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
) -> None:
    # Both orders, many times, with the two sides running at the same moment.
    rows = []
    for n in range(30):
        fax_id = f"fax-race-{n}"
        row = harness.enqueue(ref=f"race-{n}")
        harness.sender.script = [accepted(fax_id)]
        harness.dispatch()
        start = threading.Barrier(2)

        def webhook(fax_id: str, start: threading.Barrier) -> None:
            start.wait()
            reconciler.handle_event(event("fax.delivered", fax_id, T0))

        thread = threading.Thread(target=webhook, args=(fax_id, start))
        thread.start()
        start.wait()
        assert harness.submit(row) is Outcome.SUBMITTED or harness.row(row)["status"] == "delivered"
        thread.join()
        rows.append(row)
    assert [harness.row(r)["status"] for r in rows] == ["delivered"] * len(rows)


def balance_event(kind: str, at: datetime, available: int = 100) -> FaxEvent:
    data = {"available": available, "held": 0, "currency": "USD"}
    eid = f"evt_{uuid.uuid4().hex}"
    return FaxEvent(eid, kind, at, data, {"event_id": eid, "event": kind, "data": data})


def test_balance_low_alerts_once_per_episode(
    engine: Engine,
    harness: Harness,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    clock = FrozenClock(T0)
    reconciler = Reconciler(engine, Alerter(clock), None, clock)
    request.addfinalizer(reconciler.close)
    for minute in range(3):  # mintfax may repeat balance.low while it hovers
        reconciler.handle_event(balance_event("balance.low", T0 + timedelta(minutes=minute)))
        clock.advance(60)
    reconciler.handle_event(balance_event("balance.topup", T0 + timedelta(minutes=5), 9000))
    clock.advance(240)
    reconciler.handle_event(balance_event("balance.low", T0 + timedelta(minutes=9)))
    assert [a["kind"] for a in harness.alerts()] == ["balance_low", "balance_low"]


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN fax_outbox_final")
        yield conn


def test_the_application_hears_each_final_state_once(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    listener: psycopg.Connection[Any],
) -> None:
    rows = [submitted(harness, f"fax-n{n}", ref=f"n{n}") for n in range(3)]
    for n, kind in enumerate(["fax.delivered", "fax.failed", "fax.delivered"]):
        for _ in range(2):  # a duplicate final event notifies nothing more
            reconciler.handle_event(event(kind, f"fax-n{n}", T0 + timedelta(seconds=n)))
    heard = [json.loads(n.payload) for n in listener.notifies(timeout=1.0, stop_after=10)]
    assert sorted((h["id"], h["status"]) for h in heard) == [
        (rows[0], "delivered"),
        (rows[1], "failed"),
        (rows[2], "delivered"),
    ]
    assert {h["reference"] for h in heard} == {"n0", "n1", "n2"}


def test_the_helper_reads_a_faxs_state_by_id_and_by_reference(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    engine: Engine,
) -> None:
    row = submitted(harness, "fax-h", ref="invoice-7")
    with engine.connect() as conn:
        before = fax_state(conn, row)
    assert before is not None and (before.status, before.final) == ("submitted", False)
    failed = event("fax.failed", "fax-h", T0, error_code="no_answer", error_message="no answer")
    reconciler.handle_event(failed)
    with engine.connect() as conn:
        after = fax_state(conn, row)
        [same] = fax_states_by_reference(conn, "invoice-7")
        assert fax_state(conn, row + 1000) is None
    assert after == same
    assert after is not None and after.final
    assert (after.status, after.error_code, after.error_message) == (
        "failed",
        "no_answer",
        "no answer",
    )
    assert after.mintfax_fax_id == "fax-h" and after.completed_at == T0


def test_a_topup_event_ends_a_balance_pause_and_only_that(
    harness: Harness,  # noqa: F811
    engine: Engine,
    request: pytest.FixtureRequest,
) -> None:
    reconciler = Reconciler(engine, Alerter(harness.clock), harness.fleet, harness.clock)
    request.addfinalizer(reconciler.close)
    harness.fleet.pause(PauseReason.INSUFFICIENT_BALANCE, by="test 402")
    harness.fleet.pause(PauseReason.OPERATOR, by="an operator")
    data = {"available": 5000, "held": 0, "currency": "USD", "amount": 5000}
    topup = FaxEvent("evt_topup_1", "balance.topup", T0, data, {"event_id": "evt_topup_1"})
    assert reconciler.handle_event(topup) is EventResult.APPLIED
    assert [p.reason for p in harness.fleet.open_pauses()] == ["operator"]
    assert reconciler.handle_event(topup) is EventResult.DUPLICATE


def test_a_status_mintfax_never_documented_is_ignored(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
) -> None:
    row = submitted(harness, "fax-u")
    odd = event("fax.sending", "fax-u", T0)
    odd = FaxEvent(odd.event_id, odd.event_type, T0, {"id": "fax-u", "status": "teleported"}, {})
    assert reconciler.handle_event(odd) is EventResult.IGNORED
    state = harness.row(row)
    assert (state["status"], state["mintfax_status"]) == ("submitted", "queued")


def test_a_topup_is_applied_even_when_redis_is_down(
    harness: Harness,  # noqa: F811
    engine: Engine,
    request: pytest.FixtureRequest,
) -> None:
    # The pause ends in Postgres (the truth); the Redis mirror is healed by beat's sync.
    import redis as redis_lib

    from outbox.pause import FleetControl, PauseMirror
    from workers.single_host.embedded import free_port

    harness.fleet.pause(PauseReason.INSUFFICIENT_BALANCE, by="test 402")
    dead = redis_lib.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    fleet = FleetControl(engine, PauseMirror(dead), Alerter(harness.clock), harness.clock)
    reconciler = Reconciler(engine, Alerter(harness.clock), fleet, harness.clock)
    request.addfinalizer(reconciler.close)
    data = {"available": 5000, "held": 0}
    topup = FaxEvent("evt_topup_2", "balance.topup", T0, data, {"event_id": "evt_topup_2"})
    assert reconciler.handle_event(topup) is EventResult.APPLIED
    assert harness.fleet.open_pauses() == []


# --- group commit: events that arrive together, one statement (Reconciler.handle_events) ---

# The receiver writes a batch in a worker thread (`handle_events`) or awaits it on its event
# loop (`handle_events_async`, what `faxout webhooks serve` runs): both must say the same.
WRITERS = pytest.mark.parametrize("writer", ["thread", "loop"])


def handle_batch(
    reconciler: Reconciler, events: list[FaxEvent], writer: str
) -> list[EventResult | Exception]:
    """The batch path the receiver takes with `writer`."""
    if writer == "thread":
        return reconciler.handle_events(events)

    async def on_a_loop() -> list[EventResult | Exception]:
        try:
            return await reconciler.handle_events_async(events)
        finally:
            await reconciler.aclose()

    return asyncio.run(on_a_loop())


@WRITERS
def test_a_batch_applies_each_event_as_it_would_alone(
    harness: Harness,  # noqa: F811
    engine: Engine,
    request: pytest.FixtureRequest,
    writer: str,
) -> None:
    reconciler = Reconciler(engine, Alerter(harness.clock), harness.fleet, harness.clock)
    request.addfinalizer(reconciler.close)
    rows = [submitted(harness, f"fax-b{n}", ref=f"b{n}") for n in range(3)]
    harness.fleet.pause(PauseReason.INSUFFICIENT_BALANCE, by="test 402")
    sending = event("fax.sending", "fax-b0", T0)
    delivered = event("fax.delivered", "fax-b0", T0 + timedelta(seconds=5), pages=2)
    failed = event("fax.failed", "fax-b1", T0, error_code="busy", error_message="Busy")
    early = event("fax.delivered", "fax-later", T0)  # no row holds this id yet
    data = {"available": 5000, "held": 0}
    topup = FaxEvent("evt_topup_b", "balance.topup", T0, data, {"event_id": "evt_topup_b"})
    low = FaxEvent("evt_low_b", "balance.low", T0, data, {"event_id": "evt_low_b"})
    batch = [delivered, sending, failed, failed, early, topup, low, sending]
    assert handle_batch(reconciler, batch, writer) == [
        EventResult.APPLIED,
        EventResult.STALE,  # older news than the delivery just applied
        EventResult.APPLIED,
        EventResult.DUPLICATE,  # the same event twice in one batch
        EventResult.PENDING,
        EventResult.APPLIED,
        EventResult.APPLIED,
        EventResult.DUPLICATE,
    ]
    assert (harness.row(rows[0])["status"], harness.row(rows[0])["pages"]) == ("delivered", 2)
    assert harness.row(rows[1])["error_code"] == "busy"
    assert harness.row(rows[2])["status"] == "submitted"
    assert harness.fleet.open_pauses() == []  # the top-up ended the balance pause
    assert [a["kind"] for a in harness.alerts()] == ["fleet_paused", "balance_low"]
    # Each event written once, with what became of it; a replay of the batch changes nothing.
    with engine.connect() as conn:
        recorded = dict(conn.execute(select(fax_events.c.event_id, fax_events.c.outcome)).all())
    assert recorded[delivered.event_id] == "applied" and recorded[sending.event_id] == "stale"
    assert recorded[early.event_id] == "pending" and len(recorded) == 6
    assert set(handle_batch(reconciler, batch, writer)) == {EventResult.DUPLICATE}
    # The early event waits for its row, and is applied the moment the id is stored.
    later = submitted(harness, "fax-later", ref="b-later")
    assert harness.row(later)["status"] == "delivered"


@WRITERS
def test_an_event_the_database_refuses_fails_alone_not_its_batch(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    writer: str,
) -> None:
    # JSON accepts "\u0000" in a string; Postgres's jsonb refuses it. The verifier lets such a
    # signed body through, so the database is where it fails: that event's sender gets a 503
    # (and mintfax retries it), every other event of its batch is applied.
    rows = [submitted(harness, f"fax-p{n}", ref=f"p{n}") for n in range(2)]
    good = [event("fax.delivered", f"fax-p{n}", T0) for n in range(2)]
    poison = event("fax.failed", "fax-p9", T0, error_message="nul \u0000 byte")
    results = handle_batch(reconciler, [good[0], poison, good[1]], writer)
    assert results[0] is EventResult.APPLIED and results[2] is EventResult.APPLIED
    assert isinstance(results[1], Exception)
    assert {harness.row(r)["status"] for r in rows} == {"delivered"}


@WRITERS
def test_concurrent_batches_about_the_same_faxes_never_deadlock(
    harness: Harness,  # noqa: F811
    reconciler: Reconciler,
    writer: str,
) -> None:
    fax_ids = [f"fax-c{n}" for n in range(12)]
    rows = {submitted(harness, fax_id, ref=fax_id): fax_id for fax_id in fax_ids}
    batches = [
        [event("fax.sending", f, T0 + timedelta(seconds=k)) for f in order]
        for k, order in enumerate([fax_ids, fax_ids[::-1], fax_ids[6:] + fax_ids[:6]] * 4)
    ]
    results: list[list[EventResult | Exception]] = []
    barrier = threading.Barrier(len(batches))

    def run(batch: list[FaxEvent]) -> None:
        barrier.wait()
        results.append(handle_batch(reconciler, batch, writer))

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    flat = [r for batch in results for r in batch]
    assert len(flat) == 12 * len(batches)
    assert not [r for r in flat if isinstance(r, Exception)]
    # The newest event of each fax won, whatever order the batches committed in.
    newest = T0 + timedelta(seconds=len(batches) - 1)
    assert {harness.row(r)["last_event_at"] for r in rows} == {newest}
