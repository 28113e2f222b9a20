"""What every failure means: `outbox.retry.decide`, table by table.

The RNG is pinned to the top of every range, so each decision is one exact value: a backoff of
attempt n waits its full ceiling min(30, 2 ** (n - 1)) s, an in-progress 409 waits 2 s * 1.5.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from outbox import errors
from outbox.errors import (
    ApiKeyMismatch,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    DatabaseUnavailable,
    FaxOutboxError,
    FieldError,
    FleetStateUnavailable,
    IdempotencyConflict,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    IdempotencyWindowClosed,
    InsufficientBalance,
    LeaseExpired,
    MintfaxError,
    OperationRefused,
    RateLimited,
    RequestRejected,
    ServerError,
    SubmitIncomplete,
    TransportError,
    UnexpectedError,
    UnexpectedResponse,
    ValidationFailed,
    WebhookRefused,
)
from outbox.fax_client import MintfaxClient
from outbox.models import TERMINAL_STATUSES, FaxStatus, Outcome, PauseReason
from outbox.repository import ClaimedFax
from outbox.retry import (
    CoolDown,
    Decision,
    GiveUp,
    PauseFleet,
    RetryAt,
    RetryPolicy,
    attempts_exhausted,
    decide,
)
from outbox.submit import plan_failure

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy()  # 5 attempts
LAST = POLICY.max_attempts - 1  # attempts made before the last one


class TopOfRange(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def at(
    seconds: float,
    counts: bool,
    outcome: Outcome = Outcome.RETRY_SCHEDULED,
    *,
    unknown: bool = False,
) -> RetryAt:
    return RetryAt(NOW + timedelta(seconds=seconds), counts, outcome, unknown)


def pause(reason: PauseReason) -> PauseFleet:
    return PauseFleet(reason, NOW)


def give_up(
    status: FaxStatus,
    reason: str,
    *,
    alert: bool = False,
    counts: bool = True,
    outcome: Outcome | None = None,
) -> GiveUp:
    return GiveUp(status, reason, alert, counts, outcome or Outcome(status.value))


FAILED_OUT_OF_ATTEMPTS = give_up(FaxStatus.FAILED, "retries_exhausted", alert=True)
REVIEW_UNKNOWN = give_up(FaxStatus.NEEDS_REVIEW, "unknown_outcome", alert=True)
REVIEW_UNEXPECTED = give_up(FaxStatus.NEEDS_REVIEW, "unexpected_error", alert=True)
UNKNOWN_RESEND = at(2, True, unknown=True)

# error -> (decision after the 2nd attempt failed, decision after the last attempt failed)
TABLE: list[tuple[FaxOutboxError, Decision, Decision]] = [
    # Known to have sent nothing: `failed` once the attempts run out (if none was unknown).
    (ConnectFailed("connection refused"), at(2, True), FAILED_OUT_OF_ATTEMPTS),
    # Unknown outcomes never end in `failed`: the fax may exist at mintfax.
    (TransportError("connection reset"), UNKNOWN_RESEND, REVIEW_UNKNOWN),
    (TransportError("201 without a fax id", status_code=201), UNKNOWN_RESEND, REVIEW_UNKNOWN),
    (ServerError("503", status_code=503), UNKNOWN_RESEND, REVIEW_UNKNOWN),
    (
        UnexpectedResponse("404 without an envelope", status_code=404),
        pause(PauseReason.UNEXPECTED_RESPONSE),
        pause(PauseReason.UNEXPECTED_RESPONSE),
    ),
    (UnexpectedError(ValueError("boom")), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (
        LeaseExpired("worker lost"),
        at(0, True, unknown=True),
        give_up(FaxStatus.NEEDS_REVIEW, "unknown_outcome_attempts_exhausted", alert=True),
    ),
    (
        RateLimited("slow down", retry_after=34, status_code=429),
        CoolDown(34.0, NOW + timedelta(seconds=34)),
        CoolDown(34.0, NOW + timedelta(seconds=34)),
    ),
    (
        IdempotencyInProgress("busy", status_code=409),
        at(3, False, Outcome.IN_PROGRESS),
        at(3, False, Outcome.IN_PROGRESS),
    ),
    (
        FleetStateUnavailable("Redis unavailable"),
        at(5, False, Outcome.THROTTLED),
        at(5, False, Outcome.THROTTLED),
    ),
    (
        DatabaseUnavailable("connection refused"),
        at(5, False, Outcome.THROTTLED),
        at(5, False, Outcome.THROTTLED),
    ),
    (
        InsufficientBalance("top up", status_code=402),
        pause(PauseReason.INSUFFICIENT_BALANCE),
        pause(PauseReason.INSUFFICIENT_BALANCE),
    ),
    (
        AuthenticationFailed("no", status_code=401),
        pause(PauseReason.AUTHENTICATION_FAILED),
        pause(PauseReason.AUTHENTICATION_FAILED),
    ),
    (
        ApiKeyMismatch("MINTFAX_API_KEY", "is a live key"),
        pause(PauseReason.API_KEY_MISMATCH),
        pause(PauseReason.API_KEY_MISMATCH),
    ),
    (
        ConfigurationError("MINTFAX_API_KEY_FILE", "cannot be read"),
        pause(PauseReason.AUTHENTICATION_FAILED),
        pause(PauseReason.AUTHENTICATION_FAILED),
    ),
    (
        IdempotencyKeyReuse("reuse", status_code=409, error="idempotency_key_reuse"),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_key_reuse", alert=True),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_key_reuse", alert=True),
    ),
    (
        IdempotencyWindowClosed(NOW - timedelta(hours=25)),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_window", alert=True, counts=False),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_window", alert=True, counts=False),
    ),
    (
        RequestRejected("bad number", status_code=422, error="invalid_number"),
        give_up(FaxStatus.REJECTED, "invalid_number"),
        give_up(FaxStatus.REJECTED, "invalid_number"),
    ),
    (
        RequestRejected("teapot", status_code=418),
        give_up(FaxStatus.REJECTED, "rejected"),
        give_up(FaxStatus.REJECTED, "rejected"),
    ),
    (
        ValidationFailed([FieldError("filename", "is PNG"), FieldError("to", "not E.164")]),
        give_up(
            FaxStatus.REJECTED, "invalid_filename", counts=False, outcome=Outcome.REJECTED_LOCALLY
        ),
        give_up(
            FaxStatus.REJECTED, "invalid_filename", counts=False, outcome=Outcome.REJECTED_LOCALLY
        ),
    ),
    # Errors the client never raises during a submission: nobody knows what happened.
    (MintfaxError("something new"), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (IdempotencyConflict("k", 7), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (FaxOutboxError("?"), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (WebhookRefused("bad signature", 401), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (SubmitIncomplete("1: paused"), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
    (OperationRefused(1, "final", "it is final"), REVIEW_UNEXPECTED, REVIEW_UNEXPECTED),
]


def _id(case: tuple[FaxOutboxError, Decision, Decision]) -> str:
    return f"{type(case[0]).__name__}-{case[0]}"


@pytest.mark.parametrize(("error", "with_attempts_left", "_last"), TABLE, ids=map(_id, TABLE))
def test_what_a_failure_means(
    error: FaxOutboxError, with_attempts_left: Decision, _last: Decision
) -> None:
    assert decide(NOW, 1, error, POLICY, TopOfRange()) == with_attempts_left


@pytest.mark.parametrize(("error", "_left", "on_the_last_attempt"), TABLE, ids=map(_id, TABLE))
def test_what_a_failure_of_the_last_attempt_means(
    error: FaxOutboxError, _left: Decision, on_the_last_attempt: Decision
) -> None:
    assert decide(NOW, LAST, error, POLICY, TopOfRange()) == on_the_last_attempt


def test_the_table_covers_every_error_class() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, FaxOutboxError)
    }
    assert {type(error) for error, _, _ in TABLE} == defined


@pytest.mark.parametrize(("error", "decision", "_last"), TABLE, ids=map(_id, TABLE))
def test_retryable_means_the_fax_waits_for_another_try(
    error: FaxOutboxError, decision: Decision, _last: Decision
) -> None:
    assert error.retryable == isinstance(decision, RetryAt | CoolDown)


def test_the_lost_lease_rule_the_rescuer_applies_in_bulk() -> None:
    assert attempts_exhausted(LeaseExpired("x")) == decide(
        NOW, LAST, LeaseExpired("x"), POLICY, TopOfRange()
    )
    with pytest.raises(ValueError, match="never uses an attempt"):
        attempts_exhausted(RateLimited("x", retry_after=1))


# -- HTTP answers, through the real client ----------------------------------------------------


def _status(
    code: int, body: object = None, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(code, content=body, headers=headers)
        return httpx.Response(code, json=body, headers=headers)

    return handler


def _raises(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


REJECTED = give_up(FaxStatus.REJECTED, "validation_failed")
RESEND = at(2, True)
MISCONFIGURED = pause(PauseReason.UNEXPECTED_RESPONSE)
HTTP_TABLE: list[tuple[str, Callable[[httpx.Request], httpx.Response], Decision]] = [
    ("connect error", _raises(httpx.ConnectError("refused")), RESEND),
    ("connect timeout", _raises(httpx.ConnectTimeout("slow")), RESEND),
    ("read timeout", _raises(httpx.ReadTimeout("slow")), UNKNOWN_RESEND),
    ("reset mid-response", _raises(httpx.RemoteProtocolError("reset")), UNKNOWN_RESEND),
    ("201, not JSON", _status(201, b"<html>ok</html>"), UNKNOWN_RESEND),
    ("201 without a fax id", _status(201, {"status": "queued"}), UNKNOWN_RESEND),
    ("200, a JSON list", _status(200, [1, 2]), UNKNOWN_RESEND),
    ("301 redirect", _status(301, b"", {"Location": "https://elsewhere/"}), MISCONFIGURED),
    ("500", _status(500, {"error": "internal_error"}), UNKNOWN_RESEND),
    ("502, an HTML proxy page", _status(502, b"<html>bad gateway</html>"), UNKNOWN_RESEND),
    ("503", _status(503, {"error": "service_unavailable"}), UNKNOWN_RESEND),
    ("504", _status(504), UNKNOWN_RESEND),
    ("400", _status(400, {"error": "validation_failed"}), REJECTED),
    ("404", _status(404, {"error": "validation_failed"}), REJECTED),
    ("410", _status(410, {"error": "validation_failed"}), REJECTED),
    ("413", _status(413, {"error": "validation_failed"}), REJECTED),
    ("415", _status(415, {"error": "validation_failed"}), REJECTED),
    ("422", _status(422, {"error": "validation_failed"}), REJECTED),
    # Not mintfax's own refusal (a wrong base URL, a proxy): wrong for every fax alike.
    ("404 without an envelope", _status(404, b"<html>Not Found</html>"), MISCONFIGURED),
    ("413 from a proxy", _status(413, b"<html>Too Large</html>"), MISCONFIGURED),
    ("422 without an envelope", _status(422, b""), MISCONFIGURED),
    ("401", _status(401, {"error": "unauthorized"}), pause(PauseReason.AUTHENTICATION_FAILED)),
    ("403", _status(403, {"error": "forbidden"}), pause(PauseReason.AUTHENTICATION_FAILED)),
    (
        "402",
        _status(402, {"error": "insufficient_balance"}),
        pause(PauseReason.INSUFFICIENT_BALANCE),
    ),
    (
        "409 in progress",
        _status(409, {"error": "idempotency_key_in_progress"}),
        at(3, False, Outcome.IN_PROGRESS),
    ),
    (
        "409 reuse",
        _status(409, {"error": "idempotency_key_reuse"}),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_key_reuse", alert=True),
    ),
    (
        "409 of another kind",
        _status(409, {"error": "conflict"}),
        give_up(FaxStatus.NEEDS_REVIEW, "idempotency_key_reuse", alert=True),
    ),
    (
        "429 with Retry-After seconds",
        _status(429, {"error": "rate_limited"}, {"Retry-After": "7"}),
        CoolDown(7.0, NOW + timedelta(seconds=7)),
    ),
    (
        "429 with an HTTP-date",
        _status(
            429,
            {"error": "rate_limited"},
            {
                "Retry-After": "Sun, 01 Mar 2026 12:00:12 GMT",
                "Date": "Sun, 01 Mar 2026 12:00:00 GMT",
            },
        ),
        CoolDown(12.0, NOW + timedelta(seconds=12)),
    ),
    (
        "429 without Retry-After",
        _status(429, {"error": "rate_limited"}),
        CoolDown(30.0, NOW + timedelta(seconds=30)),
    ),
]


@pytest.mark.parametrize(
    ("answer", "handler", "decision"), HTTP_TABLE, ids=[row[0] for row in HTTP_TABLE]
)
def test_what_each_http_answer_means(
    answer: str, handler: Callable[[httpx.Request], httpx.Response], decision: Decision
) -> None:
    client = MintfaxClient(
        "http://mintfax.test/v1",
        SecretStr("fx_test_key"),
        transport=httpx.MockTransport(handler),
    )
    with client, pytest.raises(FaxOutboxError) as caught:
        client.send_fax(
            to="+15005550001",
            document=b"%PDF-1.4 x",
            filename="a.pdf",
            idempotency_key="k" * 64,
            retries=3,
        )
    assert decide(NOW, 1, caught.value, POLICY, TopOfRange()) == decision


# -- submit writes the decision down, and only that -------------------------------------------

CLAIMED = ClaimedFax(
    id=42,
    idempotency_key="k" * 64,
    to_number="+15005550001",
    document=b"%PDF-1.4 x",
    filename="a.pdf",
    retries=3,
    attempts=1,
    first_attempt_at=NOW - timedelta(minutes=5),
)


@pytest.mark.parametrize(("error", "decision", "_last"), TABLE, ids=map(_id, TABLE))
def test_the_row_records_the_decision(
    error: FaxOutboxError, decision: Decision, _last: Decision
) -> None:
    plan = plan_failure(CLAIMED, error, decision, NOW)
    values = plan.values
    assert plan.outcome is decision.outcome
    assert values["last_error"] == error.envelope()
    assert values.get("attempts", CLAIMED.attempts) == CLAIMED.attempts + decision.consumes_attempt
    assert plan.pause == (decision.reason if isinstance(decision, PauseFleet) else None)
    assert plan.cooldown == (decision.seconds if isinstance(decision, CoolDown) else None)
    if isinstance(decision, GiveUp):
        assert (values["status"], values["status_reason"]) == (decision.status, decision.reason)
        assert ("completed_at" in values) == (decision.status in TERMINAL_STATUSES)
        assert (plan.alert is not None) == decision.alert
        if plan.alert is not None:
            assert plan.alert.fax_id == CLAIMED.id and decision.reason in plan.alert.message
    else:
        assert (values["status"], values["next_attempt_at"]) == (FaxStatus.PENDING, decision.at)
        assert "status_reason" not in values and plan.alert is None


def test_the_attempt_log_gets_mintfaxs_status_and_request_id() -> None:
    error = ServerError("503", status_code=503, request_id="req_9")
    plan = plan_failure(CLAIMED, error, decide(NOW, 1, error, POLICY, TopOfRange()), NOW)
    assert (plan.http_status, plan.request_id) == (503, "req_9")


@pytest.mark.parametrize(
    ("earlier_unknown", "expected"), [(False, FAILED_OUT_OF_ATTEMPTS), (True, REVIEW_UNKNOWN)]
)
def test_failed_only_when_no_attempt_of_the_row_was_unknown(
    earlier_unknown: bool, expected: Decision
) -> None:
    # The last attempt sent nothing, but an earlier one may have created the fax.
    last = ConnectFailed("connection refused")
    decision = decide(NOW, LAST, last, POLICY, TopOfRange(), outcome_unknown_before=earlier_unknown)
    assert decision == expected
