"""The balance watch on real Postgres and Redis, with the real client against the simulator over
HTTP: one alert per low-balance episode, a 402 pause lifted when the balance is topped up, and
a resume that cannot burst past the fleet throttle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, func, select

from outbox.alerts import Alerter
from outbox.balance_watch import RESUMED_BY, BalanceWatch
from outbox.clock import FrozenClock
from outbox.events import FaxEvent
from outbox.fax_client import MintfaxClient
from outbox.models import PauseReason, alerts, balance_snapshots, fleet_pauses
from outbox.pause import FleetControl, PauseMirror
from outbox.reconcile import EventResult, Reconciler
from outbox.throttle import FleetThrottle
from tests.sandbox_fixtures import SandboxHandle

LOW, RESUME = 500, 1000


@dataclass
class Harness:
    engine: Engine
    sandbox: SandboxHandle
    clock: FrozenClock
    fleet: FleetControl
    watch: BalanceWatch
    gated: FleetThrottle

    def check(self) -> None:
        self.watch.run_once()
        self.clock.advance(BalanceWatch.interval)

    def low_alerts(self) -> list[str]:
        with self.engine.connect() as conn:
            query = select(alerts.c.dedupe_key).where(alerts.c.kind == "balance_low")
            return list(conn.execute(query.order_by(alerts.c.id)).scalars())


@pytest.fixture
def harness(engine: Engine, redis_url: str, sandbox: SandboxHandle) -> Iterator[Harness]:
    sandbox.configure(rate_limit_per_minute=0)
    clock = FrozenClock(datetime.now(UTC))
    client = MintfaxClient(sandbox.base_url, SecretStr(sandbox.api_key), timeout=5)
    r = redis.Redis.from_url(redis_url)

    def seconds() -> float:
        return clock.now().timestamp()

    alerter = Alerter(clock, None)
    mirror = PauseMirror(r)
    fleet = FleetControl(engine, mirror, alerter, clock)
    reads = FleetThrottle(r, 60, time_source=seconds)  # what Runtime.read_throttle is
    watch = BalanceWatch(
        engine, client, alerter, fleet, clock, throttle=reads, low_cents=LOW, resume_cents=RESUME
    )
    gated = FleetThrottle(r, 60, time_source=seconds, gate_key=mirror.key)  # the senders'
    yield Harness(engine, sandbox, clock, fleet, watch, gated)
    client.close()
    r.close()


def test_one_alert_per_low_balance_episode(harness: Harness) -> None:
    harness.sandbox.set_balance(5_000)
    harness.check()
    assert harness.low_alerts() == []

    harness.sandbox.set_balance(300)  # episode 1
    for _ in range(3):
        harness.check()
    harness.sandbox.set_balance(700)  # back above the low mark, not yet at the resume mark
    harness.check()
    harness.sandbox.set_balance(400)  # the same episode: a wobble, not a new one
    harness.check()
    assert len(harness.low_alerts()) == 1

    harness.sandbox.set_balance(None, top_up=10_000)  # the episode ends
    harness.check()
    harness.sandbox.set_balance(100)  # episode 2
    harness.check()
    harness.check()
    keys = harness.low_alerts()
    assert len(keys) == 2 and keys[0] != keys[1]
    assert all(key.startswith("balance_low:") for key in keys)
    with harness.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(balance_snapshots)).scalar_one() == 9


def _webhooks(harness: Harness) -> Reconciler:
    """mintfax's balance webhooks, applied as the receiver applies them, on the watch's clock."""
    return Reconciler(harness.engine, Alerter(harness.clock, None), None, harness.clock)


def _event(kind: str, available: int) -> FaxEvent:
    data = {"available": available, "held": 0, "currency": "USD"}
    eid = f"evt_{uuid.uuid4().hex}"
    return FaxEvent(eid, kind, datetime.now(UTC), data, {"event_id": eid, "data": data})


def test_the_watch_and_mintfaxs_balance_low_share_one_episode_and_one_alert(
    harness: Harness,
) -> None:
    # mintfax's balance.low and the watch's own low mark are two signals of one low balance:
    # whichever comes first raises the episode's alert, the other finds it open.
    webhooks = _webhooks(harness)
    try:
        harness.sandbox.set_balance(300)
        harness.check()  # the watch first
        assert webhooks.handle_event(_event("balance.low", 300)) is EventResult.APPLIED
        harness.check()
        assert len(harness.low_alerts()) == 1

        # A top-up closes the episode; still below the low mark, the watch opens a new one.
        harness.sandbox.set_balance(400)
        webhooks.handle_event(_event("balance.topup", 400))
        harness.check()
        assert len(harness.low_alerts()) == 2

        # Back up: the watch ends that one; then mintfax's balance.low comes first.
        harness.sandbox.set_balance(None, top_up=10_000)
        harness.check()
        harness.clock.advance(60)
        webhooks.handle_event(_event("balance.low", 200))
        harness.sandbox.set_balance(200)
        harness.check()
        webhooks.handle_event(_event("balance.low", 150))  # repeated while it hovers
        keys = harness.low_alerts()
        assert len(keys) == 3 and len(set(keys)) == 3
    finally:
        webhooks.close()


def test_mintfax_repeating_balance_low_above_our_marks_is_one_episode(harness: Harness) -> None:
    # mintfax's low mark (20 % of the last top-up) can sit far above ours: the watch reads the
    # balance as fine and closes the episode, while mintfax repeats balance.low each time the
    # balance hovers across its own mark (released holds lift it). Until a top-up, that is one
    # episode and one alert, not one per repeat.
    webhooks = _webhooks(harness)
    try:
        harness.sandbox.set_balance(20_000)  # above LOW and RESUME here, below mintfax's mark
        for _ in range(3):
            webhooks.handle_event(_event("balance.low", 20_000))
            harness.check()
        assert len(harness.low_alerts()) == 1
        webhooks.handle_event(_event("balance.topup", 120_000))  # a new cycle at mintfax
        harness.check()
        webhooks.handle_event(_event("balance.low", 19_000))
        assert len(harness.low_alerts()) == 2
    finally:
        webhooks.close()


def test_a_topup_with_no_episode_open_writes_no_reading(harness: Harness) -> None:
    webhooks = _webhooks(harness)
    try:
        harness.sandbox.set_balance(5_000)
        harness.check()
        webhooks.handle_event(_event("balance.topup", 99_999))
        with harness.engine.connect() as conn:
            readings = conn.execute(select(balance_snapshots.c.available)).scalars().all()
        assert readings == [5_000]  # only mintfax's answer to the watch: no figure made up
    finally:
        webhooks.close()


def test_a_balance_pause_is_lifted_when_the_balance_is_topped_up(harness: Harness) -> None:
    harness.fleet.pause(PauseReason.INSUFFICIENT_BALANCE, detail={"status": 402}, by="worker")
    harness.fleet.pause(PauseReason.OPERATOR, by="ops")
    harness.sandbox.set_balance(800)  # above the low mark, below the resume mark: stays paused
    harness.check()
    assert {p.reason for p in harness.fleet.open_pauses()} == {
        PauseReason.INSUFFICIENT_BALANCE,
        PauseReason.OPERATOR,
    }

    harness.sandbox.set_balance(None, top_up=50_000)
    report = harness.watch.run_once()
    assert report.resumed
    # Only the balance pause is the watch's to end; an operator's stays.
    assert [p.reason for p in harness.fleet.open_pauses()] == [PauseReason.OPERATOR]
    harness.fleet.resume(by="ops")
    harness.clock.advance(BalanceWatch.interval)
    again = harness.watch.run_once()
    assert again.snapshot is not None and not again.resumed  # nothing left to lift
    with harness.engine.connect() as conn:
        ended_by = conn.execute(
            select(fleet_pauses.c.ended_by).where(
                fleet_pauses.c.reason == PauseReason.INSUFFICIENT_BALANCE
            )
        ).scalar_one()
    assert ended_by == RESUMED_BY


def test_a_resume_never_bursts_past_the_throttle(harness: Harness) -> None:
    """Every send takes a token of the gated fleet throttle right before its request: while
    paused none is handed out, and after the watch lifts the pause tokens come at the
    throttle's pace, however many rows were waiting."""
    harness.fleet.pause(PauseReason.INSUFFICIENT_BALANCE, detail={}, by="worker")
    assert harness.gated.try_acquire().reason == "paused"
    harness.sandbox.set_balance(None, top_up=50_000)
    assert harness.watch.run_once().resumed  # its balance read took the free token: shared
    assert not harness.gated.try_acquire().granted
    harness.clock.advance(harness.gated.emission_interval)

    decisions = [harness.gated.try_acquire() for _ in range(50)]  # 50 senders at once
    assert sum(d.granted for d in decisions) == harness.gated.burst == 1
    assert all(d.reason == "throttled" for d in decisions if not d.granted)


def test_a_check_takes_a_token_and_skips_when_none_is_free(harness: Harness) -> None:
    harness.sandbox.set_balance(5_000)
    first = harness.watch.run_once()  # takes the one free token
    second = harness.watch.run_once()  # same instant: no token, no request
    assert first.snapshot is not None and first.snapshot.available == 5_000
    assert second.snapshot is None
