"""Status polling on real Postgres and Redis, with the real client against the simulator over
HTTP: polling alone closes every accepted row when no webhook ever comes; 5xx and timeouts back
off; polls never take more than their share of the rate limit, and never run before due sends.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, select, text

from outbox import enqueue_fax, repository
from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.fax_client import MintfaxClient
from outbox.models import alerts, fax_outbox
from outbox.pause import FleetControl, PauseMirror
from outbox.poller import StatusPoller, observation_from, poll_delay, poll_throttle
from outbox.reconcile import Reconciler
from outbox.settings import sqlalchemy_url
from outbox.throttle import FleetThrottle
from tests.sandbox_fixtures import SMALL_PDF, SandboxHandle

LIMIT = 60
POLL_AFTER = 600.0


@dataclass
class CountingClient:
    """The real client, with the simulated time of every poll noted."""

    client: MintfaxClient
    clock: FrozenClock
    polls: list[datetime] = field(default_factory=list)

    def get_fax(self, fax_id: str) -> dict[str, Any]:
        self.polls.append(self.clock.now())
        return self.client.get_fax(fax_id)


@dataclass
class Harness:
    engine: Engine
    sandbox: SandboxHandle
    client: MintfaxClient
    reader: CountingClient
    clock: FrozenClock
    fleet_throttle: FleetThrottle
    poller: StatusPoller
    redis: redis.Redis
    next_ref: int = 0

    def send(self, to: str, *, retries: int = 0) -> str:
        self.next_ref += 1
        return self.client.send_fax(
            to=to,
            document=SMALL_PDF,
            filename="a.pdf",
            idempotency_key=f"poll-test-{self.next_ref}-{random.random()}",
            retries=retries,
        ).fax_id

    def store_submitted(self, fax_id: str, *, ago: float = POLL_AFTER + 60) -> int:
        """A row as the worker leaves it after a 201, accepted `ago` seconds before now."""
        self.next_ref += 1
        accepted = self.clock.now() - timedelta(seconds=ago)
        with self.engine.begin() as conn:
            conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
            row_id: int = conn.execute(
                fax_outbox.insert()
                .values(
                    to_number="+15005550001",
                    document=SMALL_PDF,
                    filename="a.pdf",
                    reference=f"row-{self.next_ref}",
                    status="submitted",
                    mintfax_fax_id=fax_id,
                    mintfax_status="queued",
                    attempts=1,
                    first_attempt_at=accepted,
                    submitted_at=accepted,
                )
                .returning(fax_outbox.c.id)
            ).scalar_one()
        return row_id

    def rows(self) -> dict[int, dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(select(fax_outbox).order_by(fax_outbox.c.id))
            return {row.id: dict(row._mapping) for row in result}

    def passes(self, count: int, every: float) -> None:
        for _ in range(count):
            self.poller.run_once()
            self.clock.advance(every)


@pytest.fixture
def harness(engine: Engine, redis_url: str, sandbox: SandboxHandle) -> Iterator[Harness]:
    sandbox.configure(rate_limit_per_minute=0)
    clock = FrozenClock(datetime.now(UTC))
    client = MintfaxClient(sandbox.base_url, SecretStr(sandbox.api_key), timeout=5)
    reader = CountingClient(client, clock)
    r = redis.Redis.from_url(redis_url)

    def seconds() -> float:
        return clock.now().timestamp()

    alerter = Alerter(clock, None)
    fleet = FleetControl(engine, PauseMirror(r), alerter, clock)
    fleet_throttle = FleetThrottle(r, LIMIT, time_source=seconds)
    poller = StatusPoller(
        engine,
        reader,
        Reconciler(engine, alerter, fleet, clock),
        alerter,
        clock,
        fleet_throttle=fleet_throttle,
        poll_throttle=poll_throttle(r, LIMIT, 0.2, interval=30.0, time_source=seconds),
        poll_after=POLL_AFTER,
        sends_horizon=20.0,
        rng=random.Random(7),
        sleep=lambda s: None,
    )
    yield Harness(engine, sandbox, client, reader, clock, fleet_throttle, poller, r)
    client.close()
    r.close()


def test_polling_alone_closes_every_row_when_no_webhook_comes(harness: Harness) -> None:
    numbers = ["+15005550001", "+15005550007", "+15005550002", "+15005550008"] * 3
    fax_ids = [harness.send(to) for to in numbers]
    truth = {fax_id: harness.sandbox.wait_for_fax(fax_id) for fax_id in fax_ids}
    row_ids = {harness.store_submitted(fax_id): fax_id for fax_id in fax_ids}
    young = harness.store_submitted(harness.send("+15005550001"), ago=60)

    harness.passes(12, every=30.0)

    rows = harness.rows()
    for row_id, fax_id in row_ids.items():
        row, fax = rows[row_id], truth[fax_id]
        assert (row["status"], row["mintfax_status"]) == (fax["status"], fax["status"])
        assert row["pages"] == fax["pages"]
        assert row["error_code"] == fax.get("error_code")
        assert row["completed_at"] is not None and row["next_poll_at"] is None
    assert {rows[r]["status"] for r in row_ids} == {"delivered", "failed"}
    # Accepted a minute before the passes began: not due within these 6 minutes.
    assert rows[young]["status"] == "submitted" and rows[young]["poll_attempts"] == 0
    assert harness.sandbox.webhooks() == []  # nothing but polls told the outbox
    assert len(harness.reader.polls) == len(fax_ids)  # one poll each closed every row


def test_polls_back_off_on_5xx_and_timeouts_then_close_the_row(harness: Harness) -> None:
    fax_id = harness.send("+15005550001")
    harness.sandbox.wait_for_fax(fax_id)
    row_id = harness.store_submitted(fax_id)

    harness.sandbox.set_faults(error_503=1.0, all_endpoints=True)
    harness.poller.run_once()
    first = harness.rows()[row_id]
    assert first["status"] == "submitted" and first["poll_attempts"] == 1
    wait = (first["next_poll_at"] - harness.clock.now()).total_seconds()
    assert 0.9 * StatusPoller.backoff_base <= wait <= StatusPoller.backoff_base

    harness.clock.advance(wait - 1)  # not due yet: nothing is polled
    polls = len(harness.reader.polls)
    harness.poller.run_once()
    assert len(harness.reader.polls) == polls

    # A timeout (latency beyond the client's timeout) backs off the same way, doubled.
    harness.sandbox.set_faults(latency_ms=1500, all_endpoints=True)
    harness.poller._client = CountingClient(  # type: ignore[attr-defined]
        MintfaxClient(harness.sandbox.base_url, SecretStr(harness.sandbox.api_key), timeout=0.3),
        harness.clock,
    )
    harness.clock.advance(1)
    harness.poller.run_once()
    second = harness.rows()[row_id]
    assert second["status"] == "submitted" and second["poll_attempts"] == 2
    wait = (second["next_poll_at"] - harness.clock.now()).total_seconds()
    assert 1.8 * StatusPoller.backoff_base <= wait <= 2 * StatusPoller.backoff_base

    harness.sandbox.set_faults()
    harness.poller._client = harness.reader  # type: ignore[attr-defined]
    harness.clock.advance(wait)
    harness.poller.run_once()
    assert harness.rows()[row_id]["status"] == "delivered"


def test_a_404_for_a_fax_we_hold_is_alerted_once_and_backed_off(harness: Harness) -> None:
    row_id = harness.store_submitted("00000000-0000-4000-8000-000000000000")
    for _ in range(3):
        harness.poller.run_once()
        harness.clock.advance(StatusPoller.backoff_cap)
    row = harness.rows()[row_id]
    assert row["status"] == "submitted" and row["poll_attempts"] == 3
    with harness.engine.connect() as conn:
        raised = conn.execute(select(alerts.c.kind, alerts.c.fax_id)).all()
    assert raised == [("poll_not_found", row_id)]


def test_polls_never_exceed_their_share_and_take_fleet_tokens(harness: Harness) -> None:
    fax_ids = [harness.send("+15005550001") for _ in range(40)]
    for fax_id in fax_ids:
        harness.sandbox.wait_for_fax(fax_id)
        harness.store_submitted(fax_id)
    start = harness.clock.now()
    tat_before = harness.redis.get(harness.fleet_throttle.keys[0])

    harness.passes(80, every=5.0)  # beat far more often than its interval: the share holds

    polls = harness.reader.polls
    assert len(polls) == 40  # every row polled once, and closed
    share = int(LIMIT * 0.2)
    for i, at in enumerate(polls):
        in_window = [p for p in polls[i:] if p < at + timedelta(seconds=60)]
        assert len(in_window) <= share, (at - start, len(in_window))
    # Sustained, polling used its share (not far less): 40 polls took under 6 minutes.
    assert polls[-1] - start < timedelta(minutes=6)
    assert harness.redis.get(harness.fleet_throttle.keys[0]) != tat_before
    assert {row["status"] for row in harness.rows().values()} == {"delivered"}


def test_sends_come_first(harness: Harness) -> None:
    fax_id = harness.send("+15005550001")
    harness.sandbox.wait_for_fax(fax_id)
    row_id = harness.store_submitted(fax_id)
    with harness.engine.begin() as conn:
        enqueue_fax(
            conn,
            to="+15005550001",
            document=SMALL_PDF + b"x",
            filename="a.pdf",
            reference="waiting",
            environment="sandbox",
        )
    report = harness.poller.run_once()
    assert report.skipped == "sends" and harness.reader.polls == []
    with harness.engine.begin() as conn:  # the fleet is paused: the sends cannot go, polls may
        repository.open_pause(
            conn, reason="operator", detail={}, now=harness.clock.now(), started_by="t"
        )
    assert harness.poller.run_once().polled == 1
    assert harness.rows()[row_id]["status"] == "delivered"


def test_poll_delay_doubles_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [poll_delay(n, base=60, cap=3600, rng=rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        full = min(3600, 60 * 2 ** (n - 1))
        assert 0.9 * full <= delay <= full


def test_the_fax_resource_maps_to_an_observation() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    obs = observation_from(
        {
            "id": "f1",
            "status": "failed",
            "pages": None,
            "attempts": [{}, {}],
            "error_code": "busy",
            "error_message": "Busy",
            "updated_at": "2026-01-02T00:00:00Z",
            "completed_at": "2026-01-02T00:00:00+00:00",
        },
        fallback_time=now,
    )
    assert (obs.status, obs.attempt, obs.error_code, obs.error_message) == (
        "failed", 2, "busy", "Busy"
    )  # fmt: skip
    assert obs.observed_at == obs.completed_at == datetime(2026, 1, 2, tzinfo=UTC)
    assert observation_from({"id": "f1", "status": "queued"}, fallback_time=now).observed_at == now
    with pytest.raises(ValueError, match="no id or status"):
        observation_from({"status": "queued"}, fallback_time=now)


def test_the_selection_takes_the_longest_due_first_of_both_kinds(harness: Harness) -> None:
    fresh = [harness.store_submitted(f"fresh-{n}", ago=POLL_AFTER + 60) for n in range(8)]
    again = harness.store_submitted("again", ago=POLL_AFTER + 3600)
    with harness.engine.begin() as conn:  # polled before, due again since half an hour
        repository.schedule_next_poll(conn, again, now=harness.clock.now(), delay=-1800)
    with harness.engine.begin() as conn:
        taken = repository.due_polls(conn, now=harness.clock.now(), poll_after=POLL_AFTER, limit=4)
    assert taken is not None and {t.id for t in taken} == {again, *fresh[:3]}
    assert {t.id: t.poll_attempts for t in taken}[again] == 1


def test_one_pass_at_a_time_fleet_wide(harness: Harness) -> None:
    fax_id = harness.send("+15005550001")
    harness.sandbox.wait_for_fax(fax_id)
    row_id = harness.store_submitted(fax_id)
    with harness.engine.begin() as other_pass:  # another beat's pass, still polling
        assert repository.due_polls(other_pass, now=None, poll_after=POLL_AFTER, limit=1)
        assert harness.poller.run_once().skipped == "busy"
        assert harness.reader.polls == [] and harness.rows()[row_id]["poll_attempts"] == 0
    # That pass ended: the next one polls.
    report = harness.poller.run_once()
    assert (report.polled, report.applied, report.skipped) == (1, 1, None)
    assert harness.rows()[row_id]["status"] == "delivered"


_DYING_PASS = """
import sys, time
from sqlalchemy import create_engine
from outbox import repository
engine = create_engine(sys.argv[1])
with engine.begin() as conn:
    due = repository.due_polls(conn, now=None, poll_after=float(sys.argv[2]), limit=100)
    print(" ".join(str(t.id) for t in due), flush=True)
    time.sleep(600)  # polling, until it is killed
"""


def test_a_pass_killed_mid_poll_leaves_its_rows_due_for_the_next(
    harness: Harness, database_url: str
) -> None:
    fax_ids = [harness.send("+15005550001") for _ in range(3)]
    for fax_id in fax_ids:
        harness.sandbox.wait_for_fax(fax_id)
    # Accepted long enough ago on the database's clock too: the dying pass reads with now().
    rows = {harness.store_submitted(fax_id, ago=POLL_AFTER * 10) for fax_id in fax_ids}
    url = sqlalchemy_url(database_url)
    with subprocess.Popen(
        [sys.executable, "-c", _DYING_PASS, url, str(POLL_AFTER)], stdout=subprocess.PIPE, text=True
    ) as dying:
        assert dying.stdout is not None
        assert {int(i) for i in dying.stdout.readline().split()} == rows
        assert harness.poller.run_once().skipped == "busy"  # it holds the pass...
        dying.kill()  # ... and is killed -9 between selecting its rows and polling them
        dying.wait(10)
    for _ in range(50):  # until Postgres has noticed the dead connection
        if harness.poller.run_once().skipped != "busy":
            break
        time.sleep(0.1)
    # No claim to wait out (a hold would have kept them 5 minutes): polled within seconds,
    # as fast as the fleet throttle (1/s here) allows.
    harness.passes(3, every=1.0)
    assert {harness.rows()[r]["status"] for r in rows} == {"delivered"}
    assert len(harness.reader.polls) == 3
