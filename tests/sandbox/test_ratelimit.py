"""The per-key sliding-window rate limit as clients see it."""

from __future__ import annotations

import time

import httpx

from tests.sandbox_fixtures import SandboxHandle


def test_every_api_response_carries_the_rate_limit_headers(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=5)
    with sandbox.client() as client:
        responses = [
            client.get("/account/balance"),
            client.get("/fax/not-a-fax"),
            sandbox.send_fax("+12125550123", client=client),
        ]
    assert [r.status_code for r in responses] == [200, 404, 422]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["4", "3", "2"]
    for response in responses:
        assert response.headers["x-ratelimit-limit"] == "5"
        assert 0 < int(response.headers["x-ratelimit-reset"]) <= 60


def test_over_the_limit_is_429_with_retry_after_and_refusals_do_not_count(
    sandbox: SandboxHandle,
) -> None:
    sandbox.configure(rate_limit_per_minute=3)
    with sandbox.client() as client:
        ok = [client.get("/account/balance").status_code for _ in range(3)]
        refused = [client.get("/account/balance") for _ in range(3)]
    assert ok == [200, 200, 200]
    for response in refused:
        assert response.status_code == 429
        body = response.json()
        assert (body["error"], body["action"]) == ("rate_limit_exceeded", "wait_and_retry")
        retry_after = response.headers["retry-after"]
        assert retry_after.isdigit()
        assert 1 <= int(retry_after) <= 60
        assert response.headers["x-ratelimit-remaining"] == "0"
    stats = sandbox.stats()
    assert stats["requests_by_status"] == {"200": 3, "429": 3}


def test_the_window_slides_in_real_time(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    from mintfax_sandbox import SandboxConfig

    # A 2-per-minute limit would take a minute; check the slide with the limiter's own clock
    # through a short real wait: the slot of the first request frees 60 s after it, so
    # Retry-After must shrink as real time passes.
    sandbox = sandbox_factory(SandboxConfig(rate_limit_per_minute=1))
    with sandbox.client() as client:
        assert client.get("/account/balance").status_code == 200
        first = int(client.get("/account/balance").headers["retry-after"])
        time.sleep(1.1)
        second = int(client.get("/account/balance").headers["retry-after"])
    assert second < first


def test_keys_are_limited_separately(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=1)
    statuses = [
        httpx.get(
            f"{sandbox.base_url}/account/balance", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        for key in ("fx_test_a", "fx_test_b", "fx_test_a")
    ]
    assert statuses == [200, 200, 429]


def test_zero_means_unlimited_and_no_headers(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    with sandbox.client() as client:
        responses = [client.get("/account/balance") for _ in range(100)]
    assert {r.status_code for r in responses} == {200}
    assert "x-ratelimit-limit" not in responses[0].headers


def test_default_limit_is_the_documented_60_per_minute(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        statuses = [client.get("/account/balance").status_code for _ in range(61)]
    assert statuses.count(200) == 60
    assert statuses[-1] == 429
