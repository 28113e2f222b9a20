"""Exactly once at the edges (issue 8, items 1, 2 and 6), on real Postgres and Redis, through
the real mintfax client over an in-process transport that plays each kind of failure.

1. An unknown outcome is never a terminal failure: when the attempts run out and any attempt
   may have created the fax, the row goes to `needs_review` (reason `unknown_outcome`, alert);
   `failed` only when every attempt is known to have created nothing.
2. Nothing escapes `submit` once the token is taken: any exception in the send path becomes a
   recorded attempt, and the rest of the message is still sent.
6. A misconfiguration pauses the fleet instead of rejecting the backlog: an answer without
   mintfax's error envelope, and the same refusal for many faxes in a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from outbox.errors import ConfigurationError
from outbox.fax_client import MintfaxClient
from outbox.models import fleet_pauses
from outbox.submit import Outcome, submit_faxes
from tests.integration.test_submit import Harness, harness  # noqa: F401 (the fixture)

Handler = Callable[[httpx.Request], httpx.Response]
BASE_URL = "https://api.mintfax.test/v1"
CREATED = {"id": "fax_abc", "status": "queued", "to": "+15005550001"}


def _raising(exc: type[Exception]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)  # type: ignore[call-arg]

    return handler


def _answer(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return handler


def _envelope(status: int, code: str) -> Handler:
    body = {"error": code, "message": f"{code} says mintfax", "request_id": "req_x"}
    return _answer(status, json.dumps(body).encode())


TIMEOUT = _raising(httpx.ReadTimeout)
RESET = _raising(httpx.ReadError)
DROPPED = _raising(httpx.RemoteProtocolError)
REFUSED = _raising(httpx.ConnectError)
ERROR_503 = _envelope(503, "service_unavailable")
UNREADABLE_201 = _answer(201, b"<html>ok</html>", "text/html")


@pytest.fixture
def scripted(harness: Harness) -> Iterator[list[Handler]]:  # noqa: F811
    """The mintfax client of the harness answers each request with the next handler."""
    script: list[Handler] = []

    def transport(request: httpx.Request) -> httpx.Response:
        handler = script.pop(0) if script else _answer(201, json.dumps(CREATED).encode())
        return handler(request)

    client = MintfaxClient(
        BASE_URL, lambda: harness.ctx.api_key(), transport=httpx.MockTransport(transport)
    )
    harness.ctx.sender = client
    yield script
    client.close()


def _run_out(harness: Harness, fax_id: int) -> list[Outcome]:  # noqa: F811
    """Submit the row again and again, as the schedule makes it due, until it leaves pending."""
    outcomes = []
    for _ in range(harness.ctx.policy.max_attempts + 1):
        harness.make_due()
        harness.dispatch()
        outcomes.append(harness.submit(fax_id))
        if harness.row(fax_id)["status"] != "pending":
            break
    return outcomes


@pytest.mark.parametrize(
    "failure",
    [TIMEOUT, RESET, DROPPED, ERROR_503, UNREADABLE_201],
    ids=["timeout", "reset", "dropped-response", "503", "unreadable-2xx"],
)
def test_attempts_run_out_on_an_unknown_outcome_into_review_never_failed(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
    failure: Handler,
) -> None:
    fax_id = harness.enqueue()
    scripted.extend([failure] * harness.ctx.policy.max_attempts)
    outcomes = _run_out(harness, fax_id)
    assert outcomes[-1] is Outcome.NEEDS_REVIEW
    row = harness.row(fax_id)
    assert (row["status"], row["status_reason"]) == ("needs_review", "unknown_outcome")
    assert row["attempts"] == harness.ctx.policy.max_attempts
    [alert] = [a for a in harness.alerts() if a["fax_id"] == fax_id]
    assert alert["kind"] == "needs_review"


def test_a_commit_then_drop_followed_by_refused_connections_is_still_unknown(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
) -> None:
    # The first POST may have created the fax; the four after it never left this host.
    fax_id = harness.enqueue()
    scripted.extend([DROPPED] + [REFUSED] * (harness.ctx.policy.max_attempts - 1))
    _run_out(harness, fax_id)
    row = harness.row(fax_id)
    assert (row["status"], row["status_reason"]) == ("needs_review", "unknown_outcome")


def test_only_attempts_known_to_have_sent_nothing_end_in_failed(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
) -> None:
    fax_id = harness.enqueue()
    scripted.extend([REFUSED] * harness.ctx.policy.max_attempts)
    assert _run_out(harness, fax_id)[-1] is Outcome.FAILED
    row = harness.row(fax_id)
    assert (row["status"], row["status_reason"]) == ("failed", "retries_exhausted")
    assert row["outcome_unknown"] is False


def test_an_exception_in_the_send_path_is_a_recorded_attempt_and_the_message_goes_on(
    harness: Harness,  # noqa: F811
) -> None:
    class Exploding:
        def __init__(self) -> None:
            self.calls = 0

        def send_fax(self, **kwargs: object) -> object:
            self.calls += 1
            if self.calls == 1:
                raise ValueError("header value 'Bearer fx_test_abc' not allowed")
            return harness.sender.send_fax(**kwargs)

    harness.ctx.sender = Exploding()  # type: ignore[assignment]
    first, second = harness.enqueue(ref="a"), harness.enqueue(ref="b")
    harness.dispatch()
    outcomes = submit_faxes(harness.ctx, [first, second])
    assert outcomes == [Outcome.NEEDS_REVIEW, Outcome.SUBMITTED]
    row = harness.row(first)
    assert (row["status"], row["status_reason"]) == ("needs_review", "unexpected_error")
    [attempt] = harness.attempts(first)
    assert attempt["outcome"] == "needs_review"
    assert attempt["error"]["kind"] == "UnexpectedError"
    stored = json.dumps([row["last_error"], attempt["error"], harness.alerts()], default=str)
    assert "fx_test_abc" not in stored  # the exception's text is never kept
    assert harness.row(second)["status"] == "submitted"


def test_a_key_that_vanishes_between_the_check_and_the_send_pauses_once(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
) -> None:
    reads = {"n": 0}

    def key() -> SecretStr:
        reads["n"] += 1
        if reads["n"] > 1:  # the pre-send check read it; the client's read fails
            raise ConfigurationError("MINTFAX_API_KEY_FILE", "cannot be read (No such file)")
        return SecretStr("fx_test_abc")

    harness.ctx.api_key = key
    first, second = harness.enqueue(ref="a"), harness.enqueue(ref="b")
    harness.dispatch()
    assert submit_faxes(harness.ctx, [first, second])[0] is Outcome.PAUSED
    assert harness.row(first)["status"] == "pending"
    assert [a["outcome"] for a in harness.attempts(first)] == ["paused"]
    assert [a["kind"] for a in harness.alerts()] == ["fleet_paused"]
    assert [p.reason for p in harness.fleet.open_pauses()] == ["authentication_failed"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b"<html><body>Not Found</body></html>"),  # base URL without /v1
        (413, b"<html>413 Request Entity Too Large</html>"),  # a proxy's body limit
        (405, b""),
        (301, b""),  # a redirect (http -> https, or a moved host)
    ],
)
def test_an_answer_without_mintfaxs_envelope_pauses_the_fleet_and_keeps_the_rows(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
    status: int,
    body: bytes,
) -> None:
    rows = [harness.enqueue(ref=f"r{n}") for n in range(3)]
    scripted.append(_answer(status, body, "text/html"))
    harness.dispatch()
    assert submit_faxes(harness.ctx, rows) == [
        Outcome.PAUSED,
        Outcome.NOT_CLAIMED,
        Outcome.NOT_CLAIMED,
    ]
    assert [harness.row(r)["status"] for r in rows] == ["pending"] * 3
    [pause] = harness.fleet.open_pauses()
    assert pause.reason == "unexpected_response"
    [alert] = harness.alerts()
    assert alert["kind"] == "fleet_paused"
    assert (
        f"HTTP {status}" in alert["message"]
        and "https://api.mintfax.test/v1/fax" in alert["message"]
    )


def test_mintfaxs_own_refusal_still_rejects_only_that_fax(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
) -> None:
    fax_id = harness.enqueue()
    scripted.append(_envelope(422, "invalid_file_type"))
    harness.dispatch()
    assert harness.submit(fax_id) is Outcome.REJECTED
    assert harness.fleet.open_pauses() == []


def test_the_same_refusal_many_times_in_a_row_trips_the_breaker_once(
    harness: Harness,  # noqa: F811
    scripted: list[Handler],
) -> None:
    harness.ctx.rejection_breaker = 3
    rows = [harness.enqueue(ref=f"r{n}") for n in range(6)]
    # A success between refusals restarts the count; then three in a row trip it.
    scripted.extend(
        [_envelope(422, "unsupported_country")] * 2
        + [_answer(201, json.dumps(CREATED).encode())]
        + [_envelope(422, "unsupported_country")] * 3
    )
    harness.dispatch()
    outcomes = submit_faxes(harness.ctx, rows)
    assert outcomes == [Outcome.REJECTED] * 2 + [Outcome.SUBMITTED] + [Outcome.REJECTED] * 3
    [pause] = harness.fleet.open_pauses()
    assert pause.reason == "rejections_in_a_row"
    assert pause.detail["error"] == "unsupported_country"
    [alert] = harness.alerts()
    assert "unsupported_country" in alert["message"]
    with harness.engine.connect() as conn:
        assert len(conn.execute(select(fleet_pauses)).all()) == 1
