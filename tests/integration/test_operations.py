"""Fax history and operator actions (issue 11, item 3) on real Postgres and Redis, with the real
client against the simulator over HTTP: list, show, retry (same key; refused past mintfax's
24 h window; --new-key), cancel (never under a worker's feet), the bulk forms, and races of an
action against a worker's claim and against another action."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from outbox import operations, repository
from outbox.errors import OperationRefused, ValidationFailed
from outbox.fax_client import MintfaxClient
from outbox.models import FaxStatus
from outbox.submit import Outcome
from tests.integration import parked
from tests.integration.parked import park_with_unknown_outcome
from tests.integration.test_submit import Harness, harness  # noqa: F401
from tests.sandbox_fixtures import SandboxHandle

mintfax = parked.mintfax  # the fixture, for this module's tests

ALICE = "alice"


def act(engine: Engine, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with engine.begin() as conn:
        return action(conn, *args, **kwargs)


def history(engine: Engine, fax_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return repository.fax_history(conn, fax_id)["actions"]


def send(harness: Harness, row: int) -> Outcome:  # noqa: F811
    harness.dispatch()
    return harness.submit(row)


# --- retry -------------------------------------------------------------------------------------


def test_retry_sends_a_parked_fax_again_with_its_key_exactly_once(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    before = harness.row(row)

    result = act(engine, operations.retry_fax, row, actor=ALICE, now=harness.clock.now())
    assert (result.from_status, result.to_status) == (FaxStatus.NEEDS_REVIEW, FaxStatus.PENDING)
    state = harness.row(row)
    # Same key, fresh attempts, the first POST and the unknown outcome remembered.
    assert (state["status"], state["attempts"], state["status_reason"]) == ("pending", 0, None)
    assert state["idempotency_key"] == before["idempotency_key"]
    assert state["first_attempt_at"] == before["first_attempt_at"]
    assert state["outcome_unknown"] is True

    assert send(harness, row) is Outcome.SUBMITTED
    [fax] = sandbox.faxes()
    assert fax["idempotency_key"] == before["idempotency_key"]
    [entry] = history(engine, row)
    assert (entry["action"], entry["actor"], entry["from_status"], entry["to_status"]) == (
        "retry",
        ALICE,
        "needs_review",
        "pending",
    )
    assert entry["detail"] == {"attempts_before": 5, "reason_before": "unknown_outcome"}


def test_retry_past_the_24_h_window_is_refused_and_new_key_sends_a_second_fax(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    # The first POST created the fax and its answer was lost: mintfax HAS it.
    row = park_with_unknown_outcome(harness, sandbox, {"commit_then_drop": 1.0})
    assert len(sandbox.faxes()) == 1
    harness.clock.advance(24 * 3600)
    before = harness.row(row)

    with pytest.raises(OperationRefused) as refused:
        act(engine, operations.retry_fax, row, actor=ALICE, now=harness.clock.now())
    assert refused.value.code == "window_passed"
    assert "24 h idempotency window" in refused.value.reason
    assert "--new-key" in refused.value.reason
    assert harness.row(row) == before  # nothing changed, nothing recorded
    assert history(engine, row) == []

    result = act(
        engine, operations.retry_fax, row, actor=ALICE, new_key=True, now=harness.clock.now()
    )
    assert result.new_fax_id is not None and result.new_fax_id != row
    assert result.warning is not None and "twice" in result.warning
    old, new = harness.row(row), harness.row(result.new_fax_id)
    assert (old["status"], old["status_reason"]) == ("cancelled", "resent_with_new_key")
    assert new["status"] == "pending"
    assert new["idempotency_key"] != old["idempotency_key"]
    for same in ("to_number", "document_sha256", "filename", "reference", "retries"):
        assert new[same] == old[same]
    assert [a["action"] for a in history(engine, row)] == ["resend"]
    assert history(engine, row)[0]["detail"]["new_fax_id"] == result.new_fax_id
    assert history(engine, result.new_fax_id)[0]["detail"] == {"resent_from": row}

    # What --new-key said it means: the new fax is a second fax at mintfax.
    assert send(harness, result.new_fax_id) is Outcome.SUBMITTED
    assert len(sandbox.faxes()) == 2

    # Once per fax: a repeated resend never makes a third.
    with pytest.raises(OperationRefused) as again:
        act(engine, operations.retry_fax, row, actor=ALICE, new_key=True)
    assert again.value.code == "already_resent"
    assert str(result.new_fax_id) in again.value.reason


def test_a_retried_fax_that_waits_past_the_window_is_parked_by_the_worker_not_sent(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    # Retried inside the window (safe), then the fleet is paused for a day: the worker's guard
    # must still see the unknown outcome, though the retry gave the row fresh attempts.
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    act(engine, operations.retry_fax, row, actor=ALICE, now=harness.clock.now())
    harness.clock.advance(24 * 3600)
    assert send(harness, row) is Outcome.NEEDS_REVIEW
    state = harness.row(row)
    assert (state["status"], state["status_reason"]) == ("needs_review", "idempotency_window")
    assert sandbox.faxes() == []


def test_retry_refusals_name_the_reason_and_change_nothing(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    submitted = harness.enqueue(ref="ok")
    assert send(harness, submitted) is Outcome.SUBMITTED
    rejected = harness.enqueue(to="+15005550099", ref="bad")
    assert send(harness, rejected) is Outcome.REJECTED
    sending = harness.enqueue(ref="busy")
    harness.dispatch()
    with engine.begin() as conn:
        assert repository.claim_for_submit(conn, sending, owner="w:1", now=None, lease_seconds=60)

    cases = {
        submitted: ("accepted", "mintfax accepted it"),
        rejected: ("final", "--new-key"),
        sending: ("in_flight", "w:1"),
        10**9: ("not_found", "no such fax"),
    }
    for fax_id, (code, words) in cases.items():
        before = harness.row(fax_id) if fax_id != 10**9 else None
        with pytest.raises(OperationRefused) as refused:
            act(engine, operations.retry_fax, fax_id, actor=ALICE)
        assert refused.value.code == code and words in refused.value.reason, refused.value
        if before is not None:
            assert harness.row(fax_id) == before
            assert history(engine, fax_id) == []
    # --new-key does not apply to what mintfax has or a worker holds, nor to a pending fax.
    pending = harness.enqueue(ref="waiting")
    for fax_id, code in ((submitted, "accepted"), (sending, "in_flight"), (pending, "pending")):
        with pytest.raises(OperationRefused) as refused:
            act(engine, operations.retry_fax, fax_id, actor=ALICE, new_key=True)
        assert refused.value.code == code
    with pytest.raises(ValidationFailed):
        act(engine, operations.retry_fax, pending, actor=" ")


def test_new_key_resends_a_rejected_fax_as_a_new_fax_and_keeps_the_original(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    rejected = harness.enqueue(to="+15005550099", ref="bad")
    assert send(harness, rejected) is Outcome.REJECTED
    result = act(engine, operations.retry_fax, rejected, actor=ALICE, new_key=True)
    assert result.warning is None  # nothing of it can be at mintfax
    assert harness.row(rejected)["status"] == "rejected"  # final stays final
    assert harness.row(result.new_fax_id)["status"] == "pending"


def test_retry_of_a_pending_fax_makes_it_due_now(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    row = harness.enqueue()
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE fax_outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = :i"),
            {"i": row},
        )
    with engine.begin() as conn:
        conn.execute(text("UPDATE fax_outbox SET attempts = 2 WHERE id = :i"), {"i": row})
    result = act(engine, operations.retry_fax, row, actor=ALICE)
    assert result.message == "was pending; due now"
    assert harness.row(row)["attempts"] == 2  # only made due: a pending fax keeps its count
    assert harness.dispatch() == [row]


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_withdraws_a_pending_fax_and_no_worker_sends_it(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    row = harness.enqueue()
    harness.dispatch()  # its message is already on its way to a worker
    result = act(engine, operations.cancel_fax, row, actor=ALICE)
    assert (result.to_status, result.warning) == (FaxStatus.CANCELLED, None)
    state = harness.row(row)
    assert (state["status"], state["status_reason"]) == ("cancelled", "cancelled_by_operator")
    assert harness.submit(row) is Outcome.NOT_CLAIMED
    assert sandbox.faxes() == []
    [entry] = history(engine, row)
    assert (entry["action"], entry["actor"]) == ("cancel", ALICE)


def test_cancel_of_a_fax_whose_outcome_is_unknown_warns(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    result = act(engine, operations.cancel_fax, row, actor=ALICE)
    assert result.warning is not None and "still be delivered" in result.warning


def test_cancel_refuses_what_a_worker_holds_or_mintfax_accepted(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    submitted = harness.enqueue(ref="ok")
    assert send(harness, submitted) is Outcome.SUBMITTED
    sending = harness.enqueue(ref="busy")
    harness.dispatch()
    with engine.begin() as conn:
        claimed = repository.claim_for_submit(
            conn, sending, owner="w:1", now=None, lease_seconds=60
        )
    assert claimed is not None
    for fax_id, code in ((submitted, "accepted"), (sending, "in_flight")):
        before = harness.row(fax_id)
        with pytest.raises(OperationRefused) as refused:
            act(engine, operations.cancel_fax, fax_id, actor=ALICE)
        assert refused.value.code == code
        assert harness.row(fax_id) == before
    # The worker's lease is intact: its own write still lands.
    with engine.begin() as conn:
        assert repository.update_claimed(
            conn, sending, token=claimed.lease_token, values={"status": FaxStatus.PENDING}
        )
    act(engine, operations.cancel_fax, sending, actor=ALICE)
    with pytest.raises(OperationRefused) as refused:
        act(engine, operations.cancel_fax, sending, actor=ALICE)
    assert (refused.value.code, refused.value.reason) == ("final", "it is already cancelled")


# --- races -------------------------------------------------------------------------------------


def test_a_claim_waits_for_a_cancel_in_progress_and_then_finds_nothing(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    row = harness.enqueue()
    harness.dispatch()
    claimed: list[Any] = []
    with engine.begin() as conn:
        operations.cancel_fax(conn, row, actor=ALICE)
        # The worker claims while the cancel's transaction is open: it must wait for it.
        worker = threading.Thread(
            target=lambda: claimed.append(
                act(
                    engine,
                    repository.claim_for_submit,
                    row,
                    owner="w:1",
                    now=None,
                    lease_seconds=60,
                )
            )
        )
        worker.start()
        worker.join(0.5)
        assert worker.is_alive(), "the claim did not wait for the cancel's lock"
    worker.join(10)
    assert claimed == [None]
    assert harness.row(row)["status"] == "cancelled"


def test_cancel_and_claim_at_the_same_time_one_wins_never_both(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    rows = [harness.enqueue(ref=f"race-{n}") for n in range(40)]
    harness.dispatch()
    wins = {"cancel": 0, "claim": 0}
    for row in rows:
        start = threading.Barrier(2)

        def cancel(row: int = row, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                act(engine, operations.cancel_fax, row, actor=ALICE)
            except OperationRefused as refused:
                return f"refused: {refused.code}"
            return "cancelled"

        def claim(row: int = row, start: threading.Barrier = start) -> str:
            start.wait()
            got = act(
                engine, repository.claim_for_submit, row, owner="w:1", now=None, lease_seconds=60
            )
            return "claimed" if got else "none"

        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(cancel), pool.submit(claim)
            cancelled, claimed = (f.result() for f in pending)
        status = harness.row(row)["status"]
        assert (cancelled, claimed, status) in (
            ("cancelled", "none", "cancelled"),
            ("refused: in_flight", "claimed", "sending"),
        ), (cancelled, claimed, status)
        wins["cancel" if status == "cancelled" else "claim"] += 1
    assert sum(wins.values()) == len(rows)


def test_two_resends_at_once_make_one_new_fax(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    rejected = harness.enqueue(to="+15005550099", ref="bad")
    assert send(harness, rejected) is Outcome.REJECTED
    start = threading.Barrier(2)

    def resend() -> Any:
        start.wait()
        try:
            return act(engine, operations.retry_fax, rejected, actor=ALICE, new_key=True)
        except OperationRefused as refused:
            return refused

    with ThreadPoolExecutor(2) as pool:
        outcomes = [f.result() for f in [pool.submit(resend), pool.submit(resend)]]
    done = [o for o in outcomes if isinstance(o, operations.ActionResult)]
    refused = [o for o in outcomes if isinstance(o, OperationRefused)]
    assert len(done) == 1 and [r.code for r in refused] == ["already_resent"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM fax_outbox")).scalar_one() == 2


def test_two_retries_at_once_send_the_fax_once(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    start = threading.Barrier(2)

    def retry() -> Any:
        start.wait()
        return act(engine, operations.retry_fax, row, actor=ALICE, now=harness.clock.now())

    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(retry), pool.submit(retry)]]
    assert sorted(r.from_status.value for r in results) == ["needs_review", "pending"]
    assert send(harness, row) is Outcome.SUBMITTED
    assert send(harness, row) is Outcome.NOT_CLAIMED
    assert len(sandbox.faxes()) == 1


# --- bulk, list and show -----------------------------------------------------------------------


def test_bulk_actions_act_on_each_row_and_report_refusals(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    rows = [harness.enqueue(ref=f"b-{n}") for n in range(3)]
    result = operations.cancel_all(engine, "pending", actor=ALICE)
    assert sorted(r.fax_id for r in result.done) == rows and result.refused == []
    for status, new_key in (("delivered", False), ("pending", True), ("nonsense", False)):
        with pytest.raises(ValidationFailed):
            operations.retry_all(engine, status, actor=ALICE, new_key=new_key)
    with pytest.raises(ValidationFailed):
        operations.cancel_all(engine, "failed", actor=ALICE)
    # Resent in bulk once; the second bulk run refuses each (already resent), nothing new.
    again = operations.retry_all(engine, "cancelled", actor=ALICE, new_key=True)
    assert len(again.done) == 3
    twice = operations.retry_all(engine, "cancelled", actor=ALICE, new_key=True)
    assert len(twice.done) == 0 and {r.code for r in twice.refused} == {"already_resent"}


def test_list_filters_and_masks_and_show_tells_everything(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    ok = harness.enqueue(ref="ref-ok")
    assert send(harness, ok) is Outcome.SUBMITTED
    bad = harness.enqueue(to="+15005550099", ref="ref-bad")
    assert send(harness, bad) is Outcome.REJECTED
    waiting = harness.enqueue(ref="ref-wait")

    with engine.connect() as conn:
        everything = operations.list_faxes(conn)
        assert [r["id"] for r in everything] == [waiting, bad, ok]
        assert {r["to"] for r in everything} == {"+1500*****01", "+1500*****99"}
        assert all("to_number" not in r for r in everything)
        assert [r["id"] for r in operations.list_faxes(conn, status="rejected")] == [bad]
        assert [r["id"] for r in operations.list_faxes(conn, status=["pending", "submitted"])] == [
            waiting,
            ok,
        ]
        assert [r["id"] for r in operations.list_faxes(conn, reference="ref-ok")] == [ok]
        assert operations.list_faxes(conn, since=timedelta(hours=1), limit=1)[0]["id"] == waiting
        assert operations.list_faxes(conn, since=harness.clock.now() + timedelta(days=1)) == []
        [rejected_row] = operations.list_faxes(conn, status="rejected")
        assert (rejected_row["last_http_status"], rejected_row["last_error_code"]) == (
            422,
            "validation_failed",
        )
        with pytest.raises(ValidationFailed):
            operations.list_faxes(conn, status="lost")

        [detail] = operations.show_fax(conn, bad)
        assert detail.row["to_number"] == "+15005550099"  # in full: the operator checks it
        assert "document" not in detail.row and "lease_token" not in detail.row
        [attempt] = detail.attempts
        assert attempt["http_status"] == 422 and attempt["error_code"] == "validation_failed"
        assert attempt["request_id"] and attempt["request_id"].startswith("req_")
        assert attempt["action"]  # mintfax's advice, as its envelope gave it
        assert [d.row["id"] for d in operations.show_fax(conn, reference="ref-ok")] == [ok]
        assert operations.show_fax(conn, 10**9) == []
        # JSON-ready.
        import json

        json.dumps(detail.as_json())


@pytest.mark.parametrize(
    ("given", "hours"), [("2h", 2.0), ("90m", 1.5), ("3d", 72.0), ("45s", 45 / 3600)]
)
def test_since_accepts_ages(given: str, hours: float) -> None:
    assert operations.parse_since(given) == timedelta(hours=hours)


def test_since_accepts_dates_and_refuses_nonsense() -> None:
    assert operations.parse_since("2026-11-30").isoformat() == "2026-11-30T00:00:00+00:00"  # type: ignore[union-attr]
    assert operations.parse_since("2026-11-30T10:00:00+01:00").isoformat() == (  # type: ignore[union-attr]
        "2026-11-30T10:00:00+01:00"
    )
    with pytest.raises(ValidationFailed):
        operations.parse_since("yesterday")


def test_show_tells_the_webhook_events_of_a_fax(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
    engine: Engine,
) -> None:
    from outbox.alerts import Alerter
    from outbox.reconcile import Reconciler
    from tests.integration.test_reconcile import event

    row = harness.enqueue()
    assert send(harness, row) is Outcome.SUBMITTED
    fax_id = harness.row(row)["mintfax_fax_id"]
    reconciler = Reconciler(engine, Alerter(harness.clock), None, harness.clock)
    try:
        delivered = event("fax.delivered", fax_id, harness.clock.now(), pages=1)
        reconciler.handle_event(delivered)
        reconciler.handle_event(delivered)  # a duplicate is recorded once
    finally:
        reconciler.close()
    with engine.connect() as conn:
        [detail] = operations.show_fax(conn, row)
    assert detail.row["status"] is FaxStatus.DELIVERED
    assert [(e["event_id"], e["event_type"], e["outcome"]) for e in detail.events] == [
        (delivered.event_id, "fax.delivered", "applied")
    ]
    # A delivered fax: nothing to retry or cancel.
    for action in (operations.retry_fax, operations.cancel_fax):
        with pytest.raises(OperationRefused) as refused:
            act(engine, action, row, actor=ALICE)
        assert refused.value.code == "accepted"


def test_a_fax_whose_worker_died_mid_send_waits_for_the_rescuer(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    row = harness.enqueue()
    harness.dispatch()
    long_ago = harness.clock.now() - timedelta(hours=1)
    with engine.begin() as conn:  # claimed by a worker that then died: its lease ran out
        assert repository.claim_for_submit(
            conn, row, owner="dead:1", now=long_ago, lease_seconds=60
        )
    for action in (operations.cancel_fax, operations.retry_fax):
        with pytest.raises(OperationRefused) as refused:
            act(engine, action, row, actor=ALICE)
        assert refused.value.code == "in_flight"
        assert "lease rescuer" in refused.value.reason and "dead:1" in refused.value.reason
    assert harness.row(row)["status"] == "sending"
    with engine.begin() as conn:
        repository.rescue_expired_leases(
            conn,
            now=None,
            max_attempts=5,
            exhausted_status=FaxStatus.NEEDS_REVIEW,
            exhausted_reason="unknown_outcome",
            limit=10,
        )
    result = act(engine, operations.cancel_fax, row, actor=ALICE)
    assert result.warning is not None  # the dead worker's POST may have reached mintfax
