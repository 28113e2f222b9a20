"""The client hands every answer's X-RateLimit-* headers to `on_rate_limit`, before returning or
raising, and a failing hook never costs the answer (outbox/provider_limit.py relies on both)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from outbox.errors import RateLimited
from outbox.fax_client import MintfaxClient, RateLimitInfo

HEADERS = {"x-ratelimit-limit": "30", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "12"}


def _client(handler: httpx.MockTransport, hook: object) -> MintfaxClient:
    return MintfaxClient(
        "https://mintfax.test/v1",
        SecretStr("fx_test_hook"),
        transport=handler,
        on_rate_limit=hook,  # type: ignore[arg-type]
    )


def test_the_hook_sees_every_answer_success_or_refusal() -> None:
    seen: list[RateLimitInfo] = []
    answers = iter(
        [
            httpx.Response(200, json={"available": 5, "held": 0}, headers=HEADERS),
            httpx.Response(429, json={"error": "rate_limit_exceeded"}, headers=HEADERS),
            httpx.Response(200, json={"available": 5, "held": 0}),  # no headers: no call
        ]
    )
    client = _client(httpx.MockTransport(lambda request: next(answers)), seen.append)
    client.get_balance()
    with pytest.raises(RateLimited):
        client.get_balance()
    client.get_balance()
    assert [(i.limit, i.remaining, i.reset_seconds) for i in seen] == [(30, 0, 12.0)] * 2


def test_a_failing_hook_never_costs_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    def hook(info: RateLimitInfo) -> None:
        raise RuntimeError("fx_test_hook should never be logged")

    answer = httpx.Response(201, json={"id": "f-1", "status": "queued"}, headers=HEADERS)
    client = _client(httpx.MockTransport(lambda request: answer), hook)
    result = client.send_fax(
        to="+15005550001",
        document=b"%PDF-1.4\n%%EOF\n",
        filename="a.pdf",
        idempotency_key="k-1",
        retries=0,
    )
    assert result.fax_id == "f-1"
    assert "RuntimeError" in caplog.text
    assert "fx_test_hook" not in caplog.text
