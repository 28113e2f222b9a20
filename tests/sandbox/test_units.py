"""The sandbox's pure parts: rate-limit window, fault specs and draws, magic numbers, signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from standardwebhooks import Webhook

from mintfax_sandbox import carrier
from mintfax_sandbox.faults import Fault, FaultConfig, FaultPlan, FaultSpecError, parse_fault_spec
from mintfax_sandbox.ratelimit import SlidingWindowLimiter
from mintfax_sandbox.webhooks import new_secret, sign_a, signed_headers


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- rate limit ----------------------------------------------------------------------------------


def test_sliding_window_refuses_the_request_over_the_limit_and_says_when_to_retry() -> None:
    clock = FakeMonotonic()
    limiter = SlidingWindowLimiter(3, clock=clock)
    decisions = []
    for _ in range(3):
        decisions.append(limiter.acquire("k"))
        clock.now += 10
    assert [d.remaining for d in decisions if d] == [2, 1, 0]
    refused = limiter.acquire("k")
    assert refused is not None
    assert not refused.allowed
    # The first request (t=1000) leaves the window at t=1060; now is 1030.
    assert refused.retry_after == 30
    assert (b"retry-after", b"30") in refused.headers()


def test_sliding_window_is_sliding_not_fixed_buckets() -> None:
    clock = FakeMonotonic()
    limiter = SlidingWindowLimiter(2, clock=clock)
    clock.now = 1059.0
    assert limiter.acquire("k").allowed  # type: ignore[union-attr]
    assert limiter.acquire("k").allowed  # type: ignore[union-attr]
    clock.now = 1061.0  # a fixed-minute counter would have reset here
    assert not limiter.acquire("k").allowed  # type: ignore[union-attr]
    clock.now = 1119.5
    assert limiter.acquire("k").allowed  # type: ignore[union-attr]


def test_refused_requests_do_not_extend_the_wait() -> None:
    clock = FakeMonotonic()
    limiter = SlidingWindowLimiter(1, clock=clock)
    limiter.acquire("k")
    for _ in range(50):
        clock.now += 1
        limiter.acquire("k")
    clock.now = 1060.0
    assert limiter.acquire("k").allowed  # type: ignore[union-attr]


def test_keys_are_limited_separately_and_zero_means_unlimited() -> None:
    limiter = SlidingWindowLimiter(1, clock=FakeMonotonic())
    assert limiter.acquire("a").allowed  # type: ignore[union-attr]
    assert limiter.acquire("b").allowed  # type: ignore[union-attr]
    assert not limiter.acquire("a").allowed  # type: ignore[union-attr]
    assert SlidingWindowLimiter(0).acquire("a") is None


# --- faults --------------------------------------------------------------------------------------


def test_fault_spec_accepts_pairs_and_json() -> None:
    pairs = parse_fault_spec("reset=0.1, error_503=0.2,latency_ms=20-80,seed=7,all_endpoints=true")
    assert pairs == FaultConfig(
        reset=0.1, error_503=0.2, latency_ms=(20.0, 80.0), seed=7, all_endpoints=True
    )
    as_json = parse_fault_spec(json.dumps({"commit_then_drop": 0.5, "latency_ms": [5, 10]}))
    assert as_json == FaultConfig(commit_then_drop=0.5, latency_ms=(5.0, 10.0))
    assert parse_fault_spec("latency_ms=15").latency_ms == (15.0, 15.0)
    assert parse_fault_spec("") == FaultConfig()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("bogus=1", "bogus"),
        ("reset=1.5", "reset"),
        ("reset=0.6,error_500=0.6", "<= 1"),
        ("latency_ms=80-20", "latency_ms"),
        ("latency_ms=-5", "latency_ms"),
        ("seed=x", "seed"),
        ("reset", "name=value"),
        ('{"reset": "often"}', "reset"),
        ("[1]", "object"),
    ],
)
def test_bad_fault_specs_are_refused_with_the_field_named(spec: str, field: str) -> None:
    with pytest.raises(FaultSpecError, match=field):
        parse_fault_spec(spec)


def test_fault_draws_follow_their_probabilities_and_replay_with_a_seed() -> None:
    config = FaultConfig(reset=0.1, error_500=0.2, error_503=0.1, commit_then_drop=0.1, seed=42)
    first = FaultPlan(config).draw()
    plan_a, plan_b = FaultPlan(config), FaultPlan(config)
    run_a = [plan_a.draw() for _ in range(4000)]
    run_b = [plan_b.draw() for _ in range(4000)]
    assert run_a == run_b
    assert run_a[0] == first
    share = {fault: run_a.count(fault) / len(run_a) for fault in Fault}
    assert share[Fault.RESET] == pytest.approx(0.1, abs=0.02)
    assert share[Fault.ERROR_500] == pytest.approx(0.2, abs=0.025)
    assert share[Fault.NONE] == pytest.approx(0.5, abs=0.03)
    assert FaultPlan(FaultConfig()).draw() is Fault.NONE


def test_a_429_burst_lasts_its_seconds_from_the_request_that_started_it() -> None:
    plan = FaultPlan(FaultConfig(burst_429=1.0, burst_429_seconds=2.0))
    assert plan.burst_remaining(100.0) == 2.0
    assert plan.burst_remaining(101.5) == pytest.approx(0.5)
    assert plan.burst_remaining(102.0) == 2.0  # over; at rate 1.0 the next one starts at once
    assert FaultPlan(FaultConfig()).burst_remaining(5.0) == 0.0
    assert parse_fault_spec("burst_429=0.01,burst_429_seconds=3").burst_429_seconds == 3.0
    with pytest.raises(FaultSpecError, match="burst_429_seconds"):
        parse_fault_spec("burst_429_seconds=0")
    with pytest.raises(FaultSpecError, match="burst_429"):
        parse_fault_spec("burst_429=2")


def test_latency_is_fixed_or_within_its_range() -> None:
    assert FaultPlan(FaultConfig(latency_ms=(30, 30))).latency() == pytest.approx(0.03)
    ranged = FaultPlan(FaultConfig(latency_ms=(10, 20), seed=1))
    assert all(0.01 <= ranged.latency() <= 0.02 for _ in range(100))
    assert FaultPlan(FaultConfig()).latency() == 0.0


# --- magic numbers -------------------------------------------------------------------------------


def test_magic_numbers_and_their_attempt_outcomes() -> None:
    assert carrier.is_magic("+15005550001")
    assert not carrier.is_magic("+12125550123")
    assert not carrier.is_magic("+150055500011")
    outcomes = {
        number[-4:]: [carrier.scenario_for(number).outcome(n) for n in (1, 2, 5)]
        for number in carrier.SCENARIOS
        if carrier.scenario_for(number).rejection is None
    }
    assert outcomes == {
        "0001": [None, None, None],
        "0002": ["busy", "busy", "busy"],
        "0003": ["no_answer", "no_answer", "no_answer"],
        "0004": ["busy", None, None],
        "0005": ["line_quality", "line_quality", "line_quality"],
        "0007": [None, None, None],
        "0008": ["invalid_number", "invalid_number", "invalid_number"],
    }
    assert carrier.scenario_for("+15005550007").pages == 3
    assert carrier.scenario_for("+15005550006").rejection == 402
    assert carrier.scenario_for("+15005550099").rejection == 422
    assert "invalid_number" in carrier.TERMINAL_CODES


# --- signing -------------------------------------------------------------------------------------


def test_generation_a_signature_is_hex_hmac_keyed_with_the_secret_as_issued() -> None:
    secret = new_secret()
    body = b'{"event":"fax.delivered"}'
    expected = hmac.new(secret.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign_a(secret, 1700000000, body) == expected
    headers = signed_headers("a", secret, "evt_1", body, 1700000000)
    assert headers["x-mintfax-signature"] == expected
    assert headers["x-mintfax-timestamp"] == "1700000000"


def test_generation_b_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    body = b'{"event":"fax.failed"}'
    import time

    headers = signed_headers("b", secret, "evt_abc", body, int(time.time()))
    assert Webhook(secret).verify(body, headers) == {"event": "fax.failed"}
    assert "x-mintfax-signature" not in headers
