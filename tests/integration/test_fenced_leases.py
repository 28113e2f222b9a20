"""Fenced leases (issue 8, item 3) and the 24 h guard counted from the first POST (item 7).

Each test drives one worker's submission with the stand-in client of test_submit.py and moves
the row behind its back (rescue, re-claim, cancel) at the moment that matters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from outbox import repository
from outbox.errors import InsufficientBalance
from outbox.fax_client import SubmitResult
from outbox.models import fax_attempts
from outbox.rescuer import LeaseRescuer
from outbox.submit import Outcome
from outbox.throttle import ThrottleDecision
from tests.integration.test_submit import Harness, accepted, harness

__all__ = ["harness"]  # the fixture, shared with test_submit.py


def _rescue(h: Harness) -> None:
    """The worker's lease runs out and beat's rescuer gives the row back to `pending`."""
    h.clock.advance(h.ctx.lease_seconds + 1)
    rescuer = LeaseRescuer(h.engine, h.ctx.alerter, h.clock, max_attempts=5)
    assert rescuer.run_once() == 1


def _attempt_log(h: Harness, fax_id: int) -> list[dict[str, Any]]:
    with h.engine.connect() as conn:
        rows = conn.execute(
            select(fax_attempts).where(fax_attempts.c.fax_id == fax_id).order_by(fax_attempts.c.id)
        )
        return [dict(r._mapping) for r in rows]


def test_same_owner_name_on_another_claim_does_not_let_the_old_claim_write(
    harness: Harness,
) -> None:
    """host:pid repeats across containers: the write-back is fenced by the claim's token."""
    fax_id = harness.enqueue()
    harness.dispatch()

    def rescued_and_reclaimed_by_a_namesake(**kwargs: Any) -> SubmitResult:
        _rescue(harness)
        harness.dispatch()
        with harness.engine.begin() as conn:
            again = repository.claim_for_submit(
                conn, fax_id, owner="test-worker", now=harness.clock.now(), lease_seconds=60
            )
        assert again is not None
        return accepted("fax-first")

    harness.sender.send_fax = rescued_and_reclaimed_by_a_namesake  # type: ignore[method-assign]
    assert harness.submit(fax_id) is Outcome.LEASE_LOST
    row = harness.row(fax_id)
    # Still the second claim's: the first one's 201 will come back to it as a replay.
    assert row["status"] == "sending" and row["mintfax_fax_id"] is None
    [logged] = _attempt_log(harness, fax_id)
    assert logged["mintfax_fax_id"] == "fax-first" and logged["lease_lost"] is True
    assert harness.alerts() == []


def test_lease_is_checked_just_before_the_post(harness: Harness) -> None:
    """Rescued, then cancelled, while the worker slept for the throttle: nothing is sent."""
    fax_id = harness.enqueue()
    harness.dispatch()
    decisions = iter(
        [ThrottleDecision(False, 0.5, "throttled", 0.0), ThrottleDecision(True, 0.0, "ok", 0.0)]
    )
    harness.ctx.throttle = type(
        "T", (), {"try_acquire": lambda self: next(decisions), "cooldown": lambda self, s: None}
    )()

    def slow_sleep(seconds: float) -> None:
        _rescue(harness)
        with harness.engine.begin() as conn:
            conn.execute(
                text("UPDATE fax_outbox SET status = 'cancelled' WHERE id = :id"), {"id": fax_id}
            )

    harness.ctx.sleep = slow_sleep
    assert harness.submit(fax_id) is Outcome.LEASE_LOST
    assert harness.sender.calls == []
    assert harness.row(fax_id)["status"] == "cancelled"


def test_inline_throttle_waits_never_run_the_lease_below_the_request_timeout(
    harness: Harness,
) -> None:
    """A contended throttle keeps saying 'half a second': the worker gives the row back
    before a POST could outlive its lease, instead of sending on a lease about to end."""
    ticks = [1000.0]
    harness.ctx.monotonic = lambda: ticks[0]
    harness.ctx.http_timeout = 30
    harness.ctx.throttle = type(
        "T",
        (),
        {
            "try_acquire": lambda self: ThrottleDecision(ticks[0] > 1100, 0.5, "throttled", 0.0),
            "cooldown": lambda self, s: None,
        },
    )()

    def sleep(seconds: float) -> None:
        ticks[0] += seconds
        harness.clock.advance(seconds)

    harness.ctx.sleep = sleep
    fax_id = harness.enqueue()
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.THROTTLED
    assert harness.sender.calls == []
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 0 and row["lease_token"] is None
    assert ticks[0] - 1000 < harness.ctx.lease_seconds - harness.ctx.http_timeout


def test_a_201_on_a_lost_lease_is_applied_to_the_waiting_row(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()

    def slow_201(**kwargs: Any) -> SubmitResult:
        _rescue(harness)  # the row waits in pending for its resend
        return accepted("fax-late")

    harness.sender.send_fax = slow_201  # type: ignore[method-assign]
    assert harness.submit(fax_id) is Outcome.SUBMITTED
    row = harness.row(fax_id)
    assert row["status"] == "submitted" and row["mintfax_fax_id"] == "fax-late"
    assert row["attempts"] == 1  # the rescue's attempt was this one
    [logged] = _attempt_log(harness, fax_id)
    assert logged["lease_lost"] is True and logged["mintfax_fax_id"] == "fax-late"
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.NOT_CLAIMED  # never sent again


def test_a_201_for_a_row_cancelled_meanwhile_is_alerted_with_its_fax_id(
    harness: Harness,
) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()

    def slow_201(**kwargs: Any) -> SubmitResult:
        _rescue(harness)
        with harness.engine.begin() as conn:
            conn.execute(
                text("UPDATE fax_outbox SET status = 'cancelled' WHERE id = :id"), {"id": fax_id}
            )
        return accepted("fax-orphan")

    harness.sender.send_fax = slow_201  # type: ignore[method-assign]
    assert harness.submit(fax_id) is Outcome.LEASE_LOST
    assert harness.row(fax_id)["status"] == "cancelled"
    [alert] = harness.alerts()
    assert alert["kind"] == "orphan_submission" and alert["fax_id"] == fax_id
    assert "fax-orphan" in alert["message"] and alert["severity"] == "critical"
    [logged] = _attempt_log(harness, fax_id)
    assert logged["mintfax_fax_id"] == "fax-orphan"


def test_a_402_on_a_lost_lease_still_pauses_the_fleet(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()

    def slow_402(**kwargs: Any) -> SubmitResult:
        _rescue(harness)
        raise InsufficientBalance("no money", status_code=402)

    harness.sender.send_fax = slow_402  # type: ignore[method-assign]
    assert harness.submit(fax_id) is Outcome.LEASE_LOST
    assert [p.reason for p in harness.fleet.open_pauses()] == ["insufficient_balance"]
    assert harness.ctx.mirror.is_paused()
    [logged] = _attempt_log(harness, fax_id)
    assert logged["http_status"] == 402 and logged["lease_lost"] is True


def test_the_24h_guard_counts_from_the_first_post_not_the_first_claim(harness: Harness) -> None:
    """A row claimed and given back unsent (a pause) has not started mintfax's window."""
    fax_id = harness.enqueue()
    harness.dispatch()
    harness.ctx.mirror.publish([repository.Pause(1, "operator", {}, harness.clock.now(), None)])
    assert harness.submit(fax_id) is Outcome.PAUSED
    assert harness.row(fax_id)["first_attempt_at"] is None
    harness.ctx.mirror.publish([])
    harness.clock.advance(3600)
    harness.dispatch()
    posted_at = harness.clock.now()
    assert harness.submit(fax_id) is Outcome.SUBMITTED
    assert harness.row(fax_id)["first_attempt_at"] == posted_at
