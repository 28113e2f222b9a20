"""submit_fax on real Postgres and Redis, with an in-process stand-in for the mintfax client.

The real client against the real sandbox over HTTP is covered in tests/acceptance; here every
outcome of one submission is driven precisely, and the row, the attempt log, the pause
episodes, the alerts and the fleet throttle are checked in the real stores.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, select, text, update

from outbox import enqueue_fax, repository
from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.errors import (
    AuthenticationFailed,
    ConfigurationError,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    InsufficientBalance,
    RateLimited,
    RequestRejected,
    ServerError,
    TransportError,
)
from outbox.fax_client import SubmitResult
from outbox.models import alerts, fax_attempts, fax_outbox
from outbox.pause import FleetControl, PauseMirror
from outbox.rescuer import LeaseRescuer
from outbox.submit import Outcome, SubmitContext, submit_fax
from outbox.throttle import FleetThrottle, ThrottleDecision

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def accepted(fax_id: str, *, replayed: bool = False) -> SubmitResult:
    return SubmitResult(
        fax_id=fax_id,
        status="queued",
        status_code=201,  # a replay repeats the stored 201
        request_id="req_1",
        replayed=replayed,
        duration_ms=3,
    )


@dataclass
class ScriptedSender:
    """Answers each send_fax with the next scripted result (an exception is raised)."""

    script: list[SubmitResult | Exception] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def send_fax(self, **kwargs: Any) -> SubmitResult:
        self.calls.append(kwargs)
        result = self.script.pop(0) if self.script else accepted(f"fax-{len(self.calls)}")
        if isinstance(result, Exception):
            raise result
        return result


@dataclass
class Harness:
    engine: Engine
    ctx: SubmitContext
    sender: ScriptedSender
    clock: FrozenClock
    throttle: FleetThrottle
    fleet: FleetControl

    def enqueue(self, to: str = "+15005550001", ref: str = "r1", **kw: Any) -> int:
        with self.engine.begin() as conn:
            row_id = enqueue_fax(
                conn,
                to=to,
                document=PDF,
                filename="a.pdf",
                reference=ref,
                environment="sandbox",
                **kw,
            ).id
            due = conn.execute(
                select(fax_outbox.c.next_attempt_at).where(fax_outbox.c.id == row_id)
            ).scalar_one()
        # The row is due from the database's now(); a test slower than the fixture's one-second
        # lead (a loaded machine) would otherwise find it not due yet and claim nothing.
        if due >= self.clock.now():
            self.clock.set(due + timedelta(seconds=1))
        return row_id

    def dispatch(self) -> list[int]:
        with self.engine.begin() as conn:
            return repository.dispatch_due(
                conn, now=self.clock.now(), limit=100, redispatch_after=60
            )

    def submit(self, fax_id: int) -> Outcome:
        return submit_fax(self.ctx, fax_id)

    def row(self, fax_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = repository.fax_row(conn, fax_id)
        assert row is not None
        return dict(row)

    def attempts(self, fax_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(fax_attempts)
                .where(fax_attempts.c.fax_id == fax_id)
                .order_by(fax_attempts.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def alerts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(alerts).order_by(alerts.c.id))]

    def make_due(self) -> None:
        self.clock.advance(3600)


@pytest.fixture
def harness(engine: Engine, redis_url: str) -> Iterator[Harness]:
    client = redis.Redis.from_url(redis_url)
    # A second ahead of the database clock, so rows enqueued during the test are due.
    clock = FrozenClock(datetime.now(UTC) + timedelta(seconds=1))
    mirror = PauseMirror(client)
    throttle = FleetThrottle(client, 60_000, gate_key=mirror.key)  # as workers/runtime.py
    alerter = Alerter(clock)
    sender = ScriptedSender()
    ctx = SubmitContext(
        engine=engine,
        sender=sender,
        throttle=throttle,
        mirror=mirror,
        alerter=alerter,
        clock=clock,
        rng=random.Random(7),
        api_key=lambda: SecretStr("fx_test_abc"),
        environment="sandbox",
        worker_id="test-worker",
        lease_seconds=60,
        sleep=lambda s: None,
    )
    yield Harness(
        engine, ctx, sender, clock, throttle, FleetControl(engine, mirror, alerter, clock)
    )
    client.close()


def test_submitted_row_keeps_key_and_fax_id(harness: Harness) -> None:
    fax_id = harness.enqueue()
    assert harness.dispatch() == [fax_id]
    assert harness.submit(fax_id) is Outcome.SUBMITTED
    row = harness.row(fax_id)
    assert row["status"] == "submitted" and row["mintfax_fax_id"] == "fax-1"
    assert row["attempts"] == 1 and row["lease_owner"] is None
    assert harness.sender.calls[0]["idempotency_key"] == row["idempotency_key"]
    assert harness.sender.calls[0]["to"] == "+15005550001"
    [attempt] = harness.attempts(fax_id)
    assert attempt["outcome"] == "submitted" and attempt["http_status"] == 201


def test_a_replayed_acceptance_is_a_submission_logged_as_a_replay(harness: Harness) -> None:
    """After a lost 201, the resend with the same key comes back as mintfax's replay."""
    fax_id = harness.enqueue()
    harness.sender.script = [TransportError("reset"), accepted("fax-9", replayed=True)]
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.RETRY_SCHEDULED
    harness.make_due()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.REPLAYED
    row = harness.row(fax_id)
    assert row["status"] == "submitted" and row["mintfax_fax_id"] == "fax-9"
    assert row["attempts"] == 2
    assert [(a["outcome"], a["http_status"]) for a in harness.attempts(fax_id)] == [
        ("retry_scheduled", None),
        ("replayed", 201),
    ]


def test_duplicate_message_does_nothing(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.SUBMITTED
    assert harness.submit(fax_id) is Outcome.NOT_CLAIMED
    assert len(harness.sender.calls) == 1


def test_undispatched_row_is_not_claimed(harness: Harness) -> None:
    """A stale message for a row waiting for its retry must not jump the schedule."""
    fax_id = harness.enqueue()
    assert harness.submit(fax_id) is Outcome.NOT_CLAIMED
    assert harness.sender.calls == []


def test_transient_errors_retry_with_same_key_then_park_for_review(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.sender.script = [
        TransportError("reset"),
        ServerError("503", status_code=503),
        ServerError("500", status_code=500),
        TransportError("timeout"),
        ServerError("503", status_code=503),
    ]
    for attempt in range(1, 5):
        harness.dispatch()
        assert harness.submit(fax_id) is Outcome.RETRY_SCHEDULED
        row = harness.row(fax_id)
        assert row["status"] == "pending" and row["attempts"] == attempt
        delay = (row["next_attempt_at"] - harness.clock.now()).total_seconds()
        assert 0 <= delay <= min(30, 2 ** (attempt - 1))
        harness.make_due()
    harness.dispatch()
    # Any of these may have created the fax: never `failed` (issue 8, item 1).
    assert harness.submit(fax_id) is Outcome.NEEDS_REVIEW
    row = harness.row(fax_id)
    assert row["status"] == "needs_review" and row["status_reason"] == "unknown_outcome"
    assert row["attempts"] == 5
    assert {c["idempotency_key"] for c in harness.sender.calls} == {row["idempotency_key"]}
    [alert] = harness.alerts()
    assert alert["kind"] == "needs_review" and alert["fax_id"] == fax_id


def test_429_cools_the_whole_fleet_down_without_using_an_attempt(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.sender.script = [RateLimited("slow down", retry_after=20, status_code=429)]
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.RATE_LIMITED
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 0
    assert (row["next_attempt_at"] - harness.clock.now()).total_seconds() == pytest.approx(20)
    assert 18 < harness.throttle.cooldown_remaining() <= 20
    # Another worker now gets the cooldown's remaining time instead of a token.
    assert harness.throttle.acquire() > 18


def test_402_pauses_the_fleet_with_one_alert_until_resumed(harness: Harness) -> None:
    first, second = harness.enqueue(ref="a"), harness.enqueue(ref="b")
    harness.sender.script = [InsufficientBalance("no money", status_code=402)]
    harness.dispatch()
    assert harness.submit(first) is Outcome.PAUSED
    assert harness.ctx.mirror.is_paused()
    # The second row's message arrives while paused: nothing is claimed, nothing is sent.
    assert harness.submit(second) is Outcome.NOT_CLAIMED
    assert len(harness.sender.calls) == 1
    assert harness.row(first)["attempts"] == 0 and harness.row(first)["status"] == "pending"
    assert harness.dispatch() == []  # relays dispatch nothing while paused
    [alert] = harness.alerts()
    assert alert["kind"] == "fleet_paused" and alert["severity"] == "critical"

    ended = harness.fleet.resume(by="test")
    assert [p.reason for p in ended] == ["insufficient_balance"]
    assert not harness.ctx.mirror.is_paused()
    assert sorted(harness.dispatch()) == sorted([first, second])
    assert harness.submit(first) is Outcome.SUBMITTED
    assert harness.submit(second) is Outcome.SUBMITTED
    # A new 402 later is a new episode, with its own alert.
    third = harness.enqueue(ref="c")
    harness.sender.script = [InsufficientBalance("again", status_code=402)]
    harness.dispatch()
    assert harness.submit(third) is Outcome.PAUSED
    assert [a["kind"] for a in harness.alerts()] == ["fleet_paused", "fleet_paused"]


def test_mirror_check_stops_a_claimed_row_before_sending(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()
    harness.ctx.mirror.publish([repository.Pause(1, "operator", {}, harness.clock.now(), None)])
    assert harness.submit(fax_id) is Outcome.PAUSED
    assert harness.sender.calls == []
    assert harness.row(fax_id)["status"] == "pending"


@pytest.mark.parametrize(
    ("error", "outcome", "status", "attempts"),
    [
        (AuthenticationFailed("bad key", status_code=401), Outcome.PAUSED, "pending", 0),
        (IdempotencyInProgress("busy", status_code=409), Outcome.IN_PROGRESS, "pending", 0),
        (IdempotencyKeyReuse("reuse", status_code=409), Outcome.NEEDS_REVIEW, "needs_review", 1),
        (
            RequestRejected(
                "bad",
                status_code=422,
                error="validation_failed",
                context={"errors": {"to": ["use a magic number"]}},
            ),
            Outcome.REJECTED,
            "rejected",
            1,
        ),
    ],
)
def test_each_refusal_lands_where_it_belongs(
    harness: Harness, error: Exception, outcome: Outcome, status: str, attempts: int
) -> None:
    fax_id = harness.enqueue()
    harness.sender.script = [error]
    harness.dispatch()
    assert harness.submit(fax_id) is outcome
    row = harness.row(fax_id)
    assert row["status"] == status and row["attempts"] == attempts
    assert row["last_error"]["kind"] == type(error).__name__
    if status == "rejected":
        assert row["status_reason"] == "validation_failed"
        assert row["last_error"]["context"] == {"errors": {"to": ["use a magic number"]}}


def _insert_plain(engine: Engine, **values: Any) -> int:
    with engine.begin() as conn:
        return conn.execute(
            fax_outbox.insert().values(**values).returning(fax_outbox.c.id)
        ).scalar_one()


def test_spoofed_file_from_plain_sql_is_rejected_without_calling_mintfax(
    harness: Harness,
) -> None:
    fax_id = _insert_plain(
        harness.engine, to_number="+15005550001", document=PNG, filename="x.pdf", reference="s"
    )
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.REJECTED_LOCALLY
    row = harness.row(fax_id)
    assert row["status"] == "rejected" and row["status_reason"] == "invalid_filename"
    assert "PNG" in row["last_error"]["message"]
    assert harness.sender.calls == []


def test_production_refuses_a_test_key_by_pausing_the_fleet(harness: Harness) -> None:
    harness.ctx.environment = "production"
    fax_id = _insert_plain(
        harness.engine, to_number="+12025550143", document=PDF, filename="a.pdf", reference="p"
    )
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.PAUSED
    assert harness.sender.calls == []
    [pause] = harness.fleet.open_pauses()
    assert pause.reason == "api_key_environment_mismatch"
    assert "fx_test_abc" not in str(harness.alerts())


def test_unknown_outcome_past_24h_goes_to_review_not_resend(harness: Harness) -> None:
    fax_id = harness.enqueue()
    with harness.engine.begin() as conn:
        conn.execute(
            update(fax_outbox)
            .where(fax_outbox.c.id == fax_id)
            .values(attempts=2, first_attempt_at=harness.clock.now() - timedelta(hours=25))
        )
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.NEEDS_REVIEW
    assert harness.sender.calls == []
    assert harness.row(fax_id)["status_reason"] == "idempotency_window"
    assert [a["kind"] for a in harness.alerts()] == ["needs_review"]


def test_long_throttle_wait_gives_the_row_back_without_an_attempt(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.throttle.cooldown(10)
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.THROTTLED
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 0 and row["lease_owner"] is None
    assert (row["next_attempt_at"] - harness.clock.now()).total_seconds() > 8
    assert harness.sender.calls == []


def test_short_throttle_wait_is_slept_inline(harness: Harness) -> None:
    slept: list[float] = []
    harness.ctx.sleep = slept.append
    decisions = iter(
        [
            ThrottleDecision(False, 0.3, "throttled", 0.0),
            ThrottleDecision(True, 0.0, "granted", 0.0),
        ]
    )
    harness.ctx.throttle = type(
        "T", (), {"try_acquire": lambda self: next(decisions), "cooldown": lambda self, s: None}
    )()
    fax_id = harness.enqueue()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.SUBMITTED
    assert slept == [0.3]


def test_lost_lease_does_not_overwrite_the_new_owner(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()

    def steal(**kwargs: Any) -> SubmitResult:
        with harness.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE fax_outbox SET lease_owner = 'other', lease_token = gen_random_uuid()"
                    " WHERE id = :id"
                ),
                {"id": fax_id},
            )
        return accepted("fax-x")

    harness.sender.send_fax = steal  # type: ignore[method-assign]
    assert harness.submit(fax_id) is Outcome.LEASE_LOST
    row = harness.row(fax_id)
    assert row["status"] == "sending" and row["lease_owner"] == "other"


def test_rescuer_returns_expired_leases_and_parks_exhausted_ones(harness: Harness) -> None:
    rescuer = LeaseRescuer(harness.engine, harness.ctx.alerter, harness.clock, max_attempts=5)
    young, old = harness.enqueue(ref="young"), harness.enqueue(ref="old")
    harness.dispatch()
    with harness.engine.begin() as conn:
        for fax_id, attempts in ((young, 0), (old, 4)):
            claimed = repository.claim_for_submit(
                conn, fax_id, owner="dead-worker", now=harness.clock.now(), lease_seconds=30
            )
            assert claimed is not None
            conn.execute(
                update(fax_outbox).where(fax_outbox.c.id == fax_id).values(attempts=attempts)
            )
    assert rescuer.run_once() == 0  # leases still valid
    harness.clock.advance(31)
    assert rescuer.run_once() == 2
    assert harness.row(young)["status"] == "pending" and harness.row(young)["attempts"] == 1
    assert harness.row(old)["status"] == "needs_review"
    assert [a["fax_id"] for a in harness.alerts()] == [old]
    # The rescued row is sent again with the same key: a replay at mintfax.
    harness.dispatch()
    assert harness.submit(young) is Outcome.SUBMITTED


def test_rescuer_drains_every_expired_lease_batch_after_batch(harness: Harness) -> None:
    rescuer = LeaseRescuer(harness.engine, harness.ctx.alerter, harness.clock, max_attempts=5)
    rescuer.batch_size = 2
    ids = [harness.enqueue(ref=f"r{n}") for n in range(5)]
    harness.dispatch()
    with harness.engine.begin() as conn:
        for fax_id in ids:
            repository.claim_for_submit(
                conn, fax_id, owner="dead-worker", now=harness.clock.now(), lease_seconds=30
            )
    harness.clock.advance(31)
    assert rescuer.run_once() == 5  # batches of 2, 2 and 1 in one pass
    assert {harness.row(fax_id)["status"] for fax_id in ids} == {"pending"}


def test_lost_message_is_redispatched(harness: Harness) -> None:
    fax_id = harness.enqueue()
    assert harness.dispatch() == [fax_id]
    assert harness.dispatch() == []  # in flight: not published twice
    harness.clock.advance(61)  # ... its message never arrived
    assert harness.dispatch() == [fax_id]


def test_unreachable_redis_gives_the_row_back_without_sending(harness: Harness) -> None:
    from workers.single_host.embedded import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    harness.ctx.throttle = FleetThrottle(dead, 60_000)
    fax_id = harness.enqueue()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.THROTTLED
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 0
    wait = (row["next_attempt_at"] - harness.clock.now()).total_seconds()
    assert wait == pytest.approx(harness.ctx.policy.fleet_state_wait_seconds)
    assert harness.sender.calls == []
    assert harness.attempts(fax_id) == []  # nothing was attempted


def test_unreadable_key_file_pauses_instead_of_failing_rows(
    harness: Harness, tmp_path: Path
) -> None:
    from outbox.settings import Settings

    settings = Settings.from_env({"MINTFAX_API_KEY_FILE": str(tmp_path / "missing")})
    harness.ctx.api_key = settings.api_key
    fax_id = harness.enqueue()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.PAUSED
    assert harness.sender.calls == []
    [pause] = harness.fleet.open_pauses()
    assert pause.reason == "authentication_failed"
    assert harness.row(fax_id)["last_error"]["kind"] == "ConfigurationError"


def test_a_key_the_client_cannot_send_pauses_the_fleet(harness: Harness) -> None:
    """The client refuses a key it cannot put in a header: wrong for every fax, not this one."""
    fax_id = harness.enqueue()
    harness.sender.script = [ConfigurationError("MINTFAX_API_KEY", "holds a space")]
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.PAUSED
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 0
    [pause] = harness.fleet.open_pauses()
    assert pause.reason == "authentication_failed"


def test_autocommit_fast_path_records_the_same_outcomes(harness: Harness) -> None:
    """Workers run claim, release and the common finish on an autocommit connection."""
    harness.ctx.autocommit_engine = harness.engine.execution_options(isolation_level="AUTOCOMMIT")
    ok, retried, throttled = (
        harness.enqueue(ref="a"),
        harness.enqueue(ref="b"),
        harness.enqueue(ref="c"),
    )
    harness.sender.script = [accepted("fax-ok"), ServerError("503", status_code=503)]
    harness.dispatch()
    assert harness.submit(ok) is Outcome.SUBMITTED
    assert harness.submit(retried) is Outcome.RETRY_SCHEDULED
    harness.throttle.cooldown(10)
    assert harness.submit(throttled) is Outcome.THROTTLED
    assert harness.row(ok)["status"] == "submitted"
    assert harness.row(retried)["attempts"] == 1
    assert [a["outcome"] for a in harness.attempts(ok)] == ["submitted"]
    assert [a["http_status"] for a in harness.attempts(retried)] == [503]
    assert harness.attempts(retried)[0]["error"]["kind"] == "ServerError"
    assert harness.row(throttled)["status"] == "pending"


def test_non_canonical_number_from_plain_sql_is_rejected_without_calling_mintfax(
    harness: Harness,
) -> None:
    # Issue 8, item 5: the database keyed "+4402071234567" as written while the worker checked
    # (and would have sent) that raw string; the helper keyed "+442071234567". Now the worker
    # refuses what the helper refuses, naming the canonical form, before any call.
    fax_id = _insert_plain(
        harness.engine, to_number="+4402071234567", document=PDF, filename="a.pdf", reference="uk"
    )
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.REJECTED_LOCALLY
    row = harness.row(fax_id)
    assert row["status"] == "rejected" and row["status_reason"] == "invalid_to"
    assert row["last_error"]["context"] == {
        "errors": {
            "to": ["+4402071234567 is not in canonical E.164 form; did you mean +442071234567?"]
        }
    }
    assert harness.sender.calls == []
