"""Outgoing webhooks: envelope, both signing generations (checked independently), retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from standardwebhooks import Webhook

from mintfax_sandbox.webhooks import DeliveryPolicy, Target, WebhookDispatcher
from tests.sandbox_fixtures import SandboxHandle, WebhookSink


def _register(sandbox: SandboxHandle, url: str, events: list[str] | None = None) -> str:
    with sandbox.client() as client:
        response = client.post("/account/webhooks", json={"url": url, "events": events})
    assert response.status_code == 201
    secret: str = response.json()["signing_secret"]
    return secret


def _delivered(fax_id: str) -> Any:
    return lambda events: any(
        e["event"] == "fax.delivered" and e["data"]["id"] == fax_id for e in events
    )


def test_generation_a_signature_matches_a_hand_computed_hmac(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    secret = _register(sandbox, webhook_sink.url)
    fax_id = sandbox.send_fax().json()["id"]
    webhook_sink.wait_for(_delivered(fax_id))
    assert len(webhook_sink.received) == 3  # queued, sending, delivered
    for request in webhook_sink.received:
        timestamp = request.headers["x-mintfax-timestamp"]
        assert abs(int(timestamp) - time.time()) < 60
        # The key is the secret string exactly as issued, `whsec_` prefix included.
        expected = hmac.new(
            secret.encode("utf-8"), f"{timestamp}.".encode() + request.body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(request.headers["x-mintfax-signature"], expected)
        assert "webhook-signature" not in request.headers


def test_generation_b_signature_verifies_with_the_reference_library(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    sandbox.configure(webhook_signing="b")
    secret = _register(sandbox, webhook_sink.url)
    fax_id = sandbox.send_fax().json()["id"]
    webhook_sink.wait_for(_delivered(fax_id))
    verifier = Webhook(secret)
    for request in webhook_sink.received:
        payload = verifier.verify(request.body, request.headers)
        assert request.headers["webhook-id"] == payload["event_id"]
        assert "x-mintfax-signature" not in request.headers


def test_envelope_fields_and_event_data(sandbox: SandboxHandle, webhook_sink: WebhookSink) -> None:
    _register(sandbox, webhook_sink.url)
    fax_id = sandbox.send_fax("+15005550007", idempotency_key="env-1").json()["id"]
    events = webhook_sink.wait_for(_delivered(fax_id))
    assert [e["event"] for e in events] == ["fax.queued", "fax.sending", "fax.delivered"]
    for event in events:
        assert set(event) == {"event_id", "event", "timestamp", "data"}
        assert event["event_id"].startswith("evt_")
        assert event["timestamp"].endswith("Z")
    assert len({e["event_id"] for e in events}) == 3
    assert events[0]["data"]["status"] == "queued"
    assert events[0]["data"]["created_at"]
    assert events[1]["data"]["status"] == "in_progress"
    assert events[1]["data"]["submitted_at"]
    delivered = events[2]["data"]
    assert (delivered["id"], delivered["status"], delivered["pages"]) == (fax_id, "delivered", 3)
    assert delivered["completed_at"]
    assert delivered["idempotency_key"] == "env-1"
    assert delivered["error_code"] is None


def test_subscriptions_filter_events_and_deleted_endpoints_get_nothing(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    _register(sandbox, webhook_sink.url, ["fax.delivered"])
    fax_id = sandbox.send_fax().json()["id"]
    events = webhook_sink.wait_for(_delivered(fax_id))
    assert [e["event"] for e in events] == ["fax.delivered"]
    with sandbox.client() as client:
        for endpoint in client.get("/account/webhooks").json()["data"]:
            client.delete(f"/account/webhooks/{endpoint['id']}")
    second = sandbox.send_fax().json()["id"]
    sandbox.wait_for_fax(second)
    time.sleep(0.2)
    assert len(webhook_sink.events()) == 1


def test_per_fax_webhook_url_is_signed_with_the_account_secret(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    secret = sandbox.webhook_secret()
    fax_id = sandbox.send_fax(webhook_url=webhook_sink.url).json()["id"]
    webhook_sink.wait_for(_delivered(fax_id))
    for request in webhook_sink.received:
        ts = request.headers["x-mintfax-timestamp"]
        expected = hmac.new(secret.encode(), f"{ts}.".encode() + request.body, hashlib.sha256)
        assert request.headers["x-mintfax-signature"] == expected.hexdigest()


def test_endpoint_registered_and_per_fax_url_on_the_same_url_get_one_copy(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    _register(sandbox, webhook_sink.url)
    fax_id = sandbox.send_fax(webhook_url=webhook_sink.url).json()["id"]
    events = webhook_sink.wait_for(_delivered(fax_id))
    time.sleep(0.1)
    assert len(events) == len({e["event_id"] for e in events}) == 3


def test_non_2xx_is_retried_with_the_same_event_id_and_a_fresh_signature(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    secret = _register(sandbox, webhook_sink.url, ["fax.queued"])
    webhook_sink.responses = [500, 503, 404]
    sandbox.send_fax()
    events = webhook_sink.wait_for(lambda ev: len(ev) == 4)
    assert len({e["event_id"] for e in events}) == 1
    for request in webhook_sink.received:
        ts = request.headers["x-mintfax-timestamp"]
        expected = hmac.new(secret.encode(), f"{ts}.".encode() + request.body, hashlib.sha256)
        assert request.headers["x-mintfax-signature"] == expected.hexdigest()
    gaps = [
        b.received_at - a.received_at
        for a, b in zip(webhook_sink.received, webhook_sink.received[1:], strict=False)
    ]
    assert gaps[2] > gaps[0]  # exponential backoff
    stats = sandbox.stats()
    assert (stats["webhooks_delivered"], stats["webhooks_failed"]) == (1, 0)
    [record] = sandbox.webhooks()
    assert (record["status"], record["attempts"], record["last_status_code"]) == (
        "delivered",
        4,
        200,
    )


def test_a_slow_endpoint_counts_as_failed_and_delivery_gives_up_after_max_attempts(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    sandbox.configure(webhook_timeout_seconds=0.2, webhook_max_attempts=3)
    _register(sandbox, webhook_sink.url, ["fax.queued"])
    webhook_sink.delay_seconds = 0.5
    sandbox.send_fax()
    deadline = time.monotonic() + 10
    while sandbox.stats()["webhooks_failed"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [record] = sandbox.webhooks()
    assert (record["status"], record["attempts"]) == ("failed", 3)
    assert record["last_error"] == "ReadTimeout"
    assert len(webhook_sink.received) == 3


def test_unreachable_endpoint_does_not_slow_the_api(sandbox: SandboxHandle) -> None:
    sandbox.configure(webhook_max_attempts=2)
    _register(sandbox, "http://127.0.0.1:9/nothing-listens-here")
    started = time.monotonic()
    for _ in range(5):
        assert sandbox.send_fax().status_code == 201
    assert time.monotonic() - started < 2


def test_duplicate_and_reordered_deliveries_at_configured_rates(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    _register(sandbox, webhook_sink.url, ["fax.queued", "fax.delivered"])
    sandbox.set_faults(webhook_duplicate=0.5, webhook_reorder=0.3, seed=11)
    ids = [sandbox.send_fax().json()["id"] for _ in range(20)]
    webhook_sink.wait_for(
        lambda ev: {e["data"]["id"] for e in ev if e["event"] == "fax.delivered"} >= set(ids)
    )
    time.sleep(0.5)
    events = webhook_sink.events()
    event_ids = [e["event_id"] for e in events]
    duplicates = len(event_ids) - len(set(event_ids))
    assert 8 <= duplicates <= 32  # ~0.5 of 40 events
    # A held-back fax.queued arrives after its own fax.delivered at least once.
    reordered = 0
    for fax_id in ids:
        kinds = [e["event"] for e in events if e["data"]["id"] == fax_id]
        if kinds.index("fax.delivered") < kinds.index("fax.queued"):
            reordered += 1
    assert reordered >= 1
    assert sum(r["duplicate"] for r in sandbox.webhooks()) == duplicates


def test_deliveries_post_at_most_max_in_flight_at_once_and_all_arrive() -> None:
    # The chaos run's 30,000 events: every delivery task queued inside httpx's connection pool,
    # whose scheduling is quadratic in its queue, and the simulator stopped answering its API.
    in_flight = 0
    most = 0
    received: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        received.append(json.loads(request.content)["event_id"])
        return httpx.Response(200)

    async def drive() -> WebhookDispatcher:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        dispatcher = WebhookDispatcher(
            client, DeliveryPolicy, lambda rate: False, lambda ok: None, max_in_flight=8
        )
        for n in range(200):
            envelope = {"event_id": f"evt_{n}", "event": "fax.queued", "data": {}}
            dispatcher.send(
                envelope, json.dumps(envelope).encode(), [Target("http://sink/h", "whsec_AAAA")]
            )
        deadline = time.monotonic() + 10
        while len(received) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await dispatcher.close()
        await client.aclose()
        return dispatcher

    dispatcher = asyncio.run(drive())
    assert sorted(received) == sorted(f"evt_{n}" for n in range(200))
    assert most == 8
    assert all(record.status == "delivered" for record in dispatcher.log)
