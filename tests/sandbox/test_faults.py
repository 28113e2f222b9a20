"""Injected faults as a real httpx client experiences them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.sandbox_fixtures import SandboxHandle


def test_reset_is_a_network_error_and_creates_nothing(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(reset=1.0)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)):
        sandbox.send_fax(idempotency_key="r-1")
    sandbox.set_faults()
    assert sandbox.faxes() == []
    response = sandbox.send_fax(idempotency_key="r-1")
    assert response.status_code == 201
    assert "idempotent-replayed" not in response.headers
    assert sandbox.faxes()[0]["submissions"] == 2
    assert sandbox.stats()["requests_by_status"] == {"reset": 1, "201": 1}


def test_commit_then_drop_creates_the_fax_but_the_client_never_sees_the_201(
    sandbox: SandboxHandle,
) -> None:
    sandbox.set_faults(commit_then_drop=1.0)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        sandbox.send_fax(idempotency_key="d-1")
    [fax] = sandbox.faxes()
    assert fax["idempotency_key"] == "d-1"
    sandbox.set_faults()
    # The retry with the same key is what saves exactly-once: a replay of the dropped 201.
    retry = sandbox.send_fax(idempotency_key="d-1")
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == fax["id"]
    stats = sandbox.stats()
    assert (stats["faxes_created"], stats["duplicate_creations"]) == (1, 0)
    assert stats["requests_by_status"] == {"dropped": 1, "201": 1}
    assert [r["status"] for r in sandbox.requests()] == ["dropped", "201"]


def test_the_connection_pool_recovers_after_a_reset(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        assert client.get("/account/balance").status_code == 200
        sandbox.set_faults(reset=1.0)
        with pytest.raises(httpx.TransportError):
            sandbox.send_fax(client=client)
        sandbox.set_faults()
        assert sandbox.send_fax(client=client).status_code == 201


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("error_500", 500, "internal_error"), ("error_503", 503, "service_unavailable")],
)
def test_server_errors_use_the_envelope_and_create_nothing(
    sandbox: SandboxHandle, fault: str, status: int, code: str
) -> None:
    sandbox.set_faults(**{fault: 1.0})
    response = sandbox.send_fax(idempotency_key="e-1")
    assert response.status_code == status
    body = response.json()
    assert (body["error"], body["action"]) == (code, "retry_later")
    assert sandbox.faxes() == []
    # Only fax creation is faulted unless all_endpoints is set.
    with sandbox.client() as client:
        assert client.get("/account/balance").status_code == 200


def test_all_endpoints_faults_hit_reads_too(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(error_503=1.0, all_endpoints=True)
    with sandbox.client() as client:
        assert client.get("/account/balance").status_code == 503
    assert httpx.get(f"{sandbox.url}/sandbox/stats").status_code == 200  # never faulted


def test_added_latency_is_observed_by_the_client(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(latency_ms=300)
    started = time.monotonic()
    assert sandbox.send_fax().status_code == 201
    assert time.monotonic() - started >= 0.3


def test_mixed_faults_follow_their_rates_and_replay_with_a_seed(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)

    def run() -> list[str]:
        sandbox.set_faults(error_500=0.2, error_503=0.2, reset=0.1, commit_then_drop=0.1, seed=5)
        outcomes = []
        for i in range(60):
            try:
                outcomes.append(str(sandbox.send_fax(idempotency_key=f"m-{i}").status_code))
            except httpx.TransportError:
                outcomes.append("net")
        sandbox.reset()
        sandbox.configure(rate_limit_per_minute=0)
        return outcomes

    first, second = run(), run()
    assert first == second
    assert {"201", "500", "503", "net"} <= set(first)


def test_faults_are_validated(sandbox: SandboxHandle) -> None:
    response = httpx.post(f"{sandbox.url}/sandbox/faults", json={"reset": 2})
    assert response.status_code == 422
    assert "reset" in response.json()["context"]["errors"]["faults"][0]


def test_a_429_burst_refuses_every_fax_until_it_ends_then_the_window_admits_again(
    sandbox: SandboxHandle,
) -> None:
    sandbox.configure(rate_limit_per_minute=1000)
    sandbox.set_faults(burst_429=1.0, burst_429_seconds=1.5)
    refused = [sandbox.send_fax(idempotency_key=f"b-{i}") for i in range(3)]
    assert [r.status_code for r in refused] == [429, 429, 429]
    first = refused[0]
    assert first.json()["error"] == "rate_limit_exceeded"
    assert first.headers["retry-after"] == "2"  # 1.5 s left, in whole seconds
    # The burst says the key's real limit, so a client following X-RateLimit-Limit keeps it.
    assert first.headers["x-ratelimit-limit"] == "1000"
    with sandbox.client() as client:  # only fax creation is faulted
        assert client.get("/account/balance").status_code == 200
    sandbox.set_faults(burst_429=0.0)
    accepted = sandbox.send_fax(idempotency_key="b-0")
    assert accepted.status_code == 201
    # Refused requests took no slot of the sliding window, and created nothing.
    assert accepted.headers["x-ratelimit-remaining"] == "998"
    stats = sandbox.stats()
    assert (stats["faxes_created"], stats["rate_limit_bursts"]) == (1, 1)
    assert stats["rate_limit_bursts_refused"] == 3


def test_a_429_burst_ends_after_its_seconds(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(burst_429=1.0, burst_429_seconds=0.3, seed=1)
    assert sandbox.send_fax(idempotency_key="e-1").status_code == 429
    time.sleep(0.35)
    # A new burst starts at once (rate 1.0): two bursts, each refusing what arrives in it.
    assert sandbox.send_fax(idempotency_key="e-1").status_code == 429
    assert sandbox.stats()["rate_limit_bursts"] == 2
    sandbox.set_faults(burst_429=0.5, burst_429_seconds=0.01, seed=3)
    outcomes = []
    for i in range(40):
        time.sleep(0.015)  # every burst is over before the next request
        outcomes.append(sandbox.send_fax(idempotency_key=f"m-{i}").status_code)
    assert {201, 429} == set(outcomes)
