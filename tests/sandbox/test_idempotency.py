"""Idempotency contract: replays, conflicts, the 24 h window and concurrent duplicates."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.sandbox_fixtures import SMALL_PDF, SandboxHandle


def test_same_key_and_body_replays_the_stored_response(sandbox: SandboxHandle) -> None:
    first = sandbox.send_fax(idempotency_key="k-1")
    sandbox.wait_for_fax(first.json()["id"])
    again = sandbox.send_fax(idempotency_key="k-1")
    assert again.status_code == 201
    assert again.json() == first.json()  # same id, still the original "queued" response
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-idempotency-key"] == "k-1"
    [fax] = sandbox.faxes()
    assert fax["submissions"] == 2
    stats = sandbox.stats()
    assert (stats["faxes_created"], stats["idempotent_replays"]) == (1, 1)
    assert stats["duplicate_creations"] == 0


def test_the_form_field_key_works_like_the_header(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        responses = [
            client.post(
                "/fax",
                data={"to": "+15005550001", "idempotency_key": "form-key"},
                files={"file": ("a.pdf", SMALL_PDF)},
            )
            for _ in range(2)
        ]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert responses[1].headers["idempotent-replayed"] == "true"


def test_same_key_different_body_is_409_reuse(sandbox: SandboxHandle) -> None:
    original = sandbox.send_fax("+15005550001", idempotency_key="k-2")
    for changed in (
        {"to": "+15005550007"},
        {"document": SMALL_PDF + b"x"},
        {"retries": 5},
        {"webhook_url": "http://127.0.0.1:9/hook"},
    ):
        response = sandbox.send_fax(idempotency_key="k-2", **changed)  # type: ignore[arg-type]
        assert response.status_code == 409, changed
        body = response.json()
        assert body["error"] == "idempotency_key_reuse"
        assert body["request_id"] == response.headers["x-request-id"]
    assert [f["id"] for f in sandbox.faxes()] == [original.json()["id"]]


def test_same_key_while_the_first_is_processing_is_409_in_progress(
    sandbox: SandboxHandle,
) -> None:
    sandbox.set_faults(latency_ms=1500)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(sandbox.send_fax, idempotency_key="k-3")
        deadline = time.monotonic() + 5
        while not sandbox.requests():  # the first request has arrived and is being processed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sandbox.set_faults()  # the second request is not delayed itself
        racing = sandbox.send_fax(idempotency_key="k-3")
        first = slow.result()
    assert first.status_code == 201
    assert racing.status_code == 409
    assert racing.json()["error"] == "idempotency_key_in_progress"
    assert racing.headers["retry-after"] == "1"
    later = sandbox.send_fax(idempotency_key="k-3")
    assert later.json()["id"] == first.json()["id"]
    assert sandbox.faxes()[0]["submissions"] == 3


def test_keys_expire_after_24_hours_of_simulated_time(sandbox: SandboxHandle) -> None:
    first = sandbox.send_fax(idempotency_key="k-4").json()["id"]
    sandbox.advance_clock(23 * 3600)
    assert sandbox.send_fax(idempotency_key="k-4").json()["id"] == first
    sandbox.advance_clock(3600)
    second = sandbox.send_fax(idempotency_key="k-4")
    assert second.status_code == 201
    assert second.json()["id"] != first
    assert "idempotent-replayed" not in second.headers
    # The simulator flags it: a second fax for one key is what exactly-once must never do.
    assert sandbox.stats()["duplicate_creations"] == 1


def test_rejected_requests_do_not_burn_the_key(sandbox: SandboxHandle) -> None:
    sandbox.set_balance(0)
    refused = sandbox.send_fax(idempotency_key="k-5")
    assert refused.status_code == 402
    sandbox.set_balance(1000)
    accepted = sandbox.send_fax(idempotency_key="k-5")
    assert accepted.status_code == 201
    assert "idempotent-replayed" not in accepted.headers
    assert sandbox.faxes()[0]["submissions"] == 2


def test_keyless_resubmissions_create_duplicates_and_are_counted(sandbox: SandboxHandle) -> None:
    a = sandbox.send_fax().json()["id"]
    b = sandbox.send_fax().json()["id"]
    assert a != b
    stats = sandbox.stats()
    assert stats["same_content_creations"] == 1
    assert stats["duplicate_creations"] == 0


def test_fifty_parallel_posts_with_one_key_create_one_fax(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    limits = httpx.Limits(max_connections=50)

    def post(_: int) -> httpx.Response:
        with sandbox.client(limits=limits) as client:
            return sandbox.send_fax(idempotency_key="one-intent", client=client)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    created = [r for r in responses if r.status_code == 201]
    assert all(r.status_code in (201, 409) for r in responses)
    assert all(
        r.json()["error"] == "idempotency_key_in_progress"
        for r in responses
        if r.status_code == 409
    )
    assert len({r.json()["id"] for r in created}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in created) == 1
    [fax] = sandbox.faxes()
    assert fax["submissions"] == 50
    assert sandbox.stats()["faxes_created"] == 1


def test_fifty_parallel_posts_during_slow_processing_create_one_fax(
    sandbox: SandboxHandle,
) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    sandbox.set_faults(latency_ms=1000)
    start = threading.Barrier(50)

    def post(_: int) -> httpx.Response:
        with sandbox.client() as client:
            start.wait()
            return sandbox.send_fax(idempotency_key="slow-intent", client=client)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    codes = {r.status_code for r in responses}
    assert codes <= {201, 409}
    assert 409 in codes  # the in-progress window is real when processing takes time
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    assert sandbox.stats()["faxes_created"] == 1
