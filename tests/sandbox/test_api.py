"""Contract tests of the sandbox's generation-A API through a real HTTP server."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from tests.sandbox_fixtures import SMALL_PDF, SandboxHandle

ERROR_FIELDS = {"error", "message", "action", "docs", "context", "request_id"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_submit_returns_the_documented_201_and_the_fax_resource(sandbox: SandboxHandle) -> None:
    response = sandbox.send_fax("+15005550001", idempotency_key="intent-1", retries=2)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "status", "to", "created_at"}
    assert uuid.UUID(body["id"])
    assert body["status"] == "queued"
    assert body["to"] == "+15005550001"
    assert response.headers["x-idempotency-key"] == "intent-1"
    assert "idempotent-replayed" not in response.headers
    assert re.fullmatch(r"req_[0-9a-f]{24}", response.headers["x-request-id"])

    fax = sandbox.get_fax(body["id"])
    for name in ("id", "status", "to", "retries_remaining", "created_at", "updated_at"):
        assert fax[name] is not None
    assert fax["retries_remaining"] == 2
    assert fax["idempotency_key"] == "intent-1"
    assert fax["pages"] is None or fax["status"] == "delivered"


def test_every_response_has_a_distinct_request_id(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        ids = {client.get("/account/balance").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer x", "Bearer fx_test_", "Bearer mfx_test_abc", "Basic fx_test_abc", "fx_test_a"],
)
def test_only_fx_test_bearer_keys_are_accepted(
    sandbox: SandboxHandle, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{sandbox.base_url}/account/balance", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == "unauthenticated"
    assert body["request_id"] == response.headers["x-request-id"]


def test_live_keys_are_refused_with_a_clear_message_that_does_not_echo_the_key(
    sandbox: SandboxHandle,
) -> None:
    key = "fx_live_supersecretvalue"
    response = httpx.get(
        f"{sandbox.base_url}/account/balance", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 401
    assert "live" in response.json()["message"]
    assert "supersecretvalue" not in response.text


def _errors(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_failed"
    assert body["action"] == "fix_request"
    assert body["docs"].startswith("https://mintfax.com/docs/errors/")
    errors: dict[str, list[str]] = body["context"]["errors"]
    return errors


@pytest.mark.parametrize(
    ("to", "needle"),
    [
        ("", "required"),
        ("2125550123", "E.164"),
        ("+12125550123", "magic number"),
        ("+15005550099", "validation"),
    ],
)
def test_bad_recipients_get_422_on_to(sandbox: SandboxHandle, to: str, needle: str) -> None:
    errors = _errors(sandbox.send_fax(to))
    assert list(errors) == ["to"]
    assert needle in errors["to"][0]


def test_file_is_checked_for_presence_size_and_type(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        missing = client.post("/fax", data={"to": "+15005550001"}, files={"x": ("a", b"1")})
        assert "file" in _errors(missing)
    assert "empty" in _errors(sandbox.send_fax(document=b""))["file"][0]
    too_big = b"%PDF-1.4\n" + b"0" * (10 * 1024 * 1024)
    assert "10 MB" in _errors(sandbox.send_fax(document=too_big))["file"][0]
    binary = b"\x00\x01\x02garbage"
    assert "Unsupported" in _errors(sandbox.send_fax(document=binary))["file"][0]
    assert sandbox.send_fax(document=PNG, filename="scan.png").status_code == 201
    assert sandbox.send_fax(document=b"hello fax\n", filename="a.txt").status_code == 201
    assert sandbox.stats()["faxes_created"] == 2


def test_a_json_body_is_not_a_fax(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        response = client.post("/fax", json={"to": "+15005550001"})
    assert "file" in _errors(response)


@pytest.mark.parametrize("retries", ["-1", "11", "three"])
def test_retries_must_be_0_to_10(sandbox: SandboxHandle, retries: str) -> None:
    with sandbox.client() as client:
        response = client.post(
            "/fax",
            data={"to": "+15005550001", "retries": retries},
            files={"file": ("a.pdf", SMALL_PDF)},
        )
    assert "retries" in _errors(response)


def test_webhook_url_and_idempotency_key_are_validated(sandbox: SandboxHandle) -> None:
    assert "webhook_url" in _errors(sandbox.send_fax(webhook_url="ftp://example.com/x"))
    assert "idempotency_key" in _errors(sandbox.send_fax(idempotency_key="k" * 256))
    assert sandbox.send_fax(idempotency_key="k" * 255).status_code == 201


def test_all_validation_problems_are_reported_at_once(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        response = client.post(
            "/fax",
            data={"to": "nope", "retries": "99", "webhook_url": "nope"},
            files={"file": ("a.bin", b"\x00\x00")},
        )
    assert set(_errors(response)) == {"to", "retries", "webhook_url", "file"}
    assert sandbox.stats()["faxes_created"] == 0


def test_unknown_fax_is_404_with_the_envelope(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        response = client.get(f"/fax/{uuid.uuid4()}")
    assert response.status_code == 404
    assert set(response.json()) == ERROR_FIELDS


def test_list_pages_by_twenty_newest_first(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    ids = [sandbox.send_fax().json()["id"] for _ in range(23)]
    with sandbox.client() as client:
        first = client.get("/fax").json()
        second = client.get("/fax", params={"page": 2}).json()
        bad = client.get("/fax", params={"page": 0})
    assert [f["id"] for f in first["data"]] == ids[::-1][:20]
    assert [f["id"] for f in second["data"]] == ids[::-1][20:]
    assert (first["per_page"], first["total"], first["has_more"]) == (20, 23, True)
    assert second["has_more"] is False
    assert "page" in _errors(bad)


def test_webhook_endpoints_can_be_registered_listed_and_deleted(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        created = client.post(
            "/account/webhooks",
            json={
                "url": "https://example.com/hooks",
                "events": ["fax.delivered", "fax.failed"],
                "description": "ops",
            },
        )
        assert created.status_code == 201
        body = created.json()
        endpoint = body["data"]
        assert set(endpoint) == {
            "id", "url", "is_active", "created_at", "updated_at", "events", "description",
        }  # fmt: skip
        assert endpoint["events"] == ["fax.delivered", "fax.failed"]
        assert body["signing_secret"].startswith("whsec_")

        listed = client.get("/account/webhooks").json()["data"]
        assert listed == [endpoint]
        assert body["signing_secret"] not in client.get("/account/webhooks").text

        assert client.delete(f"/account/webhooks/{endpoint['id']}").status_code == 204
        assert client.get("/account/webhooks").json()["data"] == []
        assert client.delete(f"/account/webhooks/{endpoint['id']}").status_code == 404

        bad = client.post("/account/webhooks", json={"url": "x", "events": ["fax.exploded"]})
        assert set(_errors(bad)) == {"url", "events"}


def test_control_plane_needs_no_auth_and_is_not_rate_limited(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=1)
    for _ in range(5):
        response = httpx.get(f"{sandbox.url}/sandbox/stats")
        assert response.status_code == 200
        assert "x-ratelimit-limit" not in response.headers
    assert sandbox.stats()["requests_total"] == 0


def test_stats_count_requests_by_status_and_route(sandbox: SandboxHandle) -> None:
    sandbox.send_fax()
    sandbox.send_fax("+12125550123")
    with sandbox.client() as client:
        client.get("/account/balance")
    httpx.get(f"{sandbox.base_url}/account/balance")
    stats = sandbox.stats()
    assert stats["requests_total"] == 4
    assert stats["requests_by_status"] == {"201": 1, "422": 1, "200": 1, "401": 1}
    assert stats["requests_by_path"] == {"POST /v1/fax": 2, "GET /v1/account/balance": 2}


def test_reset_restores_the_start_up_state(sandbox: SandboxHandle) -> None:
    sandbox.send_fax()
    sandbox.set_balance(5)
    sandbox.set_faults(error_500=1.0)
    sandbox.reset()
    assert sandbox.faxes() == []
    assert sandbox.stats()["faxes_created"] == 0
    assert sandbox.balance() == {"available": 1_000_000, "held": 0}
    assert sandbox.send_fax().status_code == 201


def test_list_items_carry_the_key_and_filter_by_key_and_recipient(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    first = sandbox.send_fax("+15005550001", idempotency_key="key-a").json()["id"]
    second = sandbox.send_fax("+15005550007", idempotency_key="key-b").json()["id"]
    third = sandbox.send_fax("+15005550001", idempotency_key="key-c").json()["id"]
    with sandbox.client() as client:
        everything = client.get("/fax").json()
        by_key = client.get("/fax", params={"idempotency_key": "key-b"}).json()
        by_number = client.get("/fax", params={"to": "+15005550001"}).json()
        both = client.get("/fax", params={"to": "+15005550001", "idempotency_key": "key-b"}).json()
        empty = client.get("/fax", params={"to": ""})
    assert [(f["id"], f["idempotency_key"]) for f in everything["data"]] == [
        (third, "key-c"),
        (second, "key-b"),
        (first, "key-a"),
    ]
    assert [f["id"] for f in by_key["data"]] == [second]
    assert by_key["total"] == 1 and by_key["has_more"] is False
    assert [f["id"] for f in by_number["data"]] == [third, first]
    assert both["data"] == [] and both["total"] == 0
    assert "to" in _errors(empty)
