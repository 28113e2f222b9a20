from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from outbox.errors import (
    FaxOutboxError,
    IdempotencyInProgress,
    RateLimited,
    ServerError,
    TransportError,
)
from outbox.models import FaxStatus, Outcome
from outbox.retry import (
    CoolDown,
    Decision,
    GiveUp,
    RetryAt,
    RetryPolicy,
    backoff_seconds,
    decide,
    parse_retry_after,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def test_policy_defaults_follow_the_go_live_checklist() -> None:
    assert (POLICY.base_seconds, POLICY.cap_seconds, POLICY.max_attempts) == (1.0, 30.0, 5)


# random.Random(42).random() yields 0.6394, 0.0250, 0.2750, 0.2232, 0.7365, 0.6767, 0.8922,
# 0.0869; full jitter scales each by the ceiling min(30, 1 * 2 ** (n - 1)).
SEEDED_TABLE = [
    (1, 1.0, 0.639427),
    (2, 2.0, 0.050022),
    (3, 4.0, 1.100117),
    (4, 8.0, 1.785686),
    (5, 16.0, 11.783539),
    (6, 30.0, 20.300985),  # 32 capped to 30
    (7, 30.0, 26.765387),  # 64 capped to 30
    (8, 30.0, 2.608165),  # 128 capped to 30
]


def test_backoff_table_from_a_seeded_rng() -> None:
    rng = random.Random(42)
    delays = [backoff_seconds(attempt, POLICY, rng) for attempt, _, _ in SEEDED_TABLE]
    assert delays == pytest.approx([expected for _, _, expected in SEEDED_TABLE], abs=1e-6)


@pytest.mark.parametrize(("attempt", "ceiling", "_expected"), SEEDED_TABLE)
def test_backoff_stays_within_full_jitter_bounds(
    attempt: int, ceiling: float, _expected: float
) -> None:
    rng = random.Random(attempt)
    delays = [backoff_seconds(attempt, POLICY, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole interval, not just near the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_backoff_survives_absurd_attempt_numbers() -> None:
    delay = backoff_seconds(10_000, POLICY, random.Random(1))
    assert 0.0 <= delay <= POLICY.cap_seconds


def test_backoff_rejects_zero_based_attempts() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_seconds(0, POLICY, random.Random(1))


def test_same_seed_same_schedule() -> None:
    def schedule(seed: int) -> list[Decision]:
        rng = random.Random(seed)
        return [decide(NOW, n, ServerError("boom"), POLICY, rng) for n in range(5)]

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


@pytest.mark.parametrize("error", [TransportError("reset"), ServerError("503")])
def test_unknown_outcomes_back_off_and_consume_an_attempt(error: FaxOutboxError) -> None:
    rng = random.Random(3)
    for attempts_made in range(POLICY.max_attempts - 1):
        decision = decide(NOW, attempts_made, error, POLICY, rng)
        assert isinstance(decision, RetryAt)
        assert decision.consumes_attempt is True
        assert decision.outcome is Outcome.RETRY_SCHEDULED
        # The attempt that failed is number attempts_made + 1.
        ceiling = min(POLICY.cap_seconds, POLICY.base_seconds * 2**attempts_made)
        assert NOW <= decision.at <= NOW + timedelta(seconds=ceiling)


def test_fifth_unknown_outcome_parks_the_row_for_review_never_failed() -> None:
    # A 500 may have created the fax: out of attempts, a human looks it up (issue 8, item 1).
    rng = random.Random(0)
    decisions = [decide(NOW, n, ServerError("500"), POLICY, rng) for n in range(6)]
    assert [type(d) for d in decisions[:4]] == [RetryAt] * 4
    exhausted = GiveUp(FaxStatus.NEEDS_REVIEW, "unknown_outcome", True, True, Outcome.NEEDS_REVIEW)
    assert decisions[4] == decisions[5] == exhausted


def test_attempt_limit_follows_the_policy() -> None:
    policy = RetryPolicy(max_attempts=2)
    rng = random.Random(0)
    assert isinstance(decide(NOW, 0, TransportError("x"), policy, rng), RetryAt)
    assert isinstance(decide(NOW, 1, TransportError("x"), policy, rng), GiveUp)


def test_rate_limited_cools_the_fleet_down_for_retry_after() -> None:
    decision = decide(NOW, 1, RateLimited("slow down", retry_after=34), POLICY, random.Random(0))
    assert decision == CoolDown(34.0, NOW + timedelta(seconds=34))
    assert decision.consumes_attempt is False


def test_rate_limited_never_gives_up_on_attempts() -> None:
    # Even with every attempt used, a 429 is a wait, not a failure of the fax.
    decision = decide(NOW, 99, RateLimited("x", retry_after=5), POLICY, random.Random(0))
    assert isinstance(decision, CoolDown)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(-3.0, 1.0), (0.0, 1.0), (1e9, 3600.0), (float("inf"), 3600.0), (float("nan"), 30.0)],
)
def test_rate_limited_wait_is_clamped(retry_after: float, expected: float) -> None:
    error = RateLimited("x", retry_after=retry_after)
    decision = decide(NOW, 1, error, POLICY, random.Random(0))
    assert decision == CoolDown(expected, NOW + timedelta(seconds=expected))


def test_in_progress_waits_briefly_with_jitter_without_consuming_an_attempt() -> None:
    rng = random.Random(5)
    waits = set()
    for _ in range(50):
        decision = decide(NOW, 3, IdempotencyInProgress("busy"), POLICY, rng)
        assert isinstance(decision, RetryAt)
        assert decision.consumes_attempt is False
        assert decision.outcome is Outcome.IN_PROGRESS
        wait = (decision.at - NOW).total_seconds()
        assert 2.0 <= wait <= 3.0
        waits.add(wait)
    assert len(waits) > 1  # jittered, so colliding workers do not collide again


def test_decide_refuses_a_negative_attempt_count() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        decide(NOW, -1, ServerError("x"), POLICY, random.Random(0))


def test_decide_requires_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(datetime(2026, 1, 1), 1, ServerError("x"), POLICY, random.Random(0))


def test_decide_keeps_the_callers_timezone_instant() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    decision = decide(paris, 1, RateLimited("x", retry_after=10), POLICY, random.Random(0))
    assert isinstance(decision, CoolDown)
    assert decision.at == NOW + timedelta(seconds=10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("34", 34.0),
        (" 34 ", 34.0),
        ("34.5", 34.5),
        ("0", 1.0),  # a zero wait would walk straight back into the limit
        ("86400", 3600.0),  # huge: clamped
        ("99999999999999999999999999", 3600.0),
        (None, 30.0),  # missing
        ("", 30.0),  # empty
        ("   ", 30.0),
        ("soon", 30.0),  # garbage
        ("1e3", 30.0),
        ("-5", 30.0),  # negative
        ("-0.5", 30.0),
        ("inf", 30.0),
        ("nan", 30.0),
        ("Wed, 32 Oct 2015 07:28:00 GMT", 30.0),  # not a real date
    ],
)
def test_parse_retry_after_seconds_and_garbage(value: str | None, expected: float) -> None:
    assert parse_retry_after(value, NOW, POLICY) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:45 GMT", NOW, POLICY) == 45.0


def test_parse_retry_after_http_date_without_zone_is_gmt() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:00 -0000", NOW, POLICY) == 60.0


def test_parse_retry_after_obsolete_http_date_forms() -> None:
    # RFC 9110 requires recipients to accept the RFC 850 and asctime forms too.
    assert parse_retry_after("Sunday, 01-Mar-26 12:00:10 GMT", NOW, POLICY) == 10.0
    assert parse_retry_after("Sun Mar  1 12:00:20 2026", NOW, POLICY) == 20.0


def test_parse_retry_after_past_date_waits_the_minimum() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW, POLICY) == 1.0


def test_parse_retry_after_far_future_date_is_clamped() -> None:
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", NOW, POLICY) == 3600.0


def test_parse_retry_after_follows_the_policy_knobs() -> None:
    policy = RetryPolicy(
        default_retry_after_seconds=10.0, max_retry_after_seconds=60.0, min_retry_after_seconds=2
    )
    assert parse_retry_after(None, NOW, policy) == 10.0
    assert parse_retry_after("600", NOW, policy) == 60.0
    assert parse_retry_after("1", NOW, policy) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_seconds": 0},
        {"cap_seconds": 0.5},
        {"max_attempts": 0},
        {"in_progress_wait_seconds": 0},
        {"fleet_state_wait_seconds": 0},
        {"min_retry_after_seconds": 0},
        {"default_retry_after_seconds": 7200},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
