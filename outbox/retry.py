"""When to try a fax again, as a pure function: retries are data (invariant 4).

`decide(now, attempts_made, error, policy, rng)` turns the error of a failed submission into
either `RetryAt` (the `next_attempt_at` to store on the row) or `GiveUp`. Nothing here sleeps,
reads a clock or does I/O: the caller passes `now` and a `random.Random`, so a seeded RNG makes
every schedule reproducible in tests, and Celery's own countdown is never the schedule.

What counts as an attempt: only a submission that reached mintfax or tried to (network errors
and 5xx). Waiting for a 429 `Retry-After` or for a concurrent request with the same idempotency
key (409 `idempotency_key_in_progress`) costs no attempt, because the fax was not tried; those
waits are bounded by the provider, not by us. A fax whose outcome stays unknown past mintfax's
24 h idempotency window is parked by the relay (invariant 3), which bounds even those loops.

Backoff is "full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): the delay is
uniform in `[0, min(cap, base * 2 ** (attempt - 1))]`. Spreading retries over the whole interval
keeps a fleet that failed together (a mintfax outage) from retrying together.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from outbox.errors import (
    AuthenticationFailed,
    FaxOutboxError,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    InsufficientBalance,
    RateLimited,
    RequestRejected,
    ServerError,
    TransportError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The knobs of the retry schedule; the defaults follow mintfax's go-live checklist."""

    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    # Attempts in all (the first one included) that reached or tried to reach mintfax.
    max_attempts: int = 5
    # 409 idempotency_key_in_progress: the first request is still running; look again soon.
    in_progress_wait_seconds: float = 2.0
    # 429 without a usable Retry-After: mintfax's window is 60 s, so half of it is a fair guess.
    default_retry_after_seconds: float = 30.0
    # A Retry-After longer than this is treated as a server mistake, not an instruction.
    max_retry_after_seconds: float = 3600.0
    # A 429 always pauses at least this long: a Retry-After of 0 or a date already past (the
    # server's clock may lag ours) would otherwise send the fleet straight back into the limit.
    min_retry_after_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.base_seconds > 0:
            raise ValueError("base_seconds must be > 0")
        if not self.cap_seconds >= self.base_seconds:
            raise ValueError("cap_seconds must be >= base_seconds")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 0 < self.min_retry_after_seconds <= self.max_retry_after_seconds:
            raise ValueError("min_retry_after_seconds must be > 0 and <= max_retry_after_seconds")
        if not self.in_progress_wait_seconds > 0:
            raise ValueError("in_progress_wait_seconds must be > 0")
        if not (
            self.min_retry_after_seconds
            <= self.default_retry_after_seconds
            <= self.max_retry_after_seconds
        ):
            raise ValueError("default_retry_after_seconds must lie within [min, max]")


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at `at` (tz-aware UTC); `consumes_attempt` says whether the failure counted."""

    at: datetime
    consumes_attempt: bool
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying this fax; `reason` is `"retries_exhausted"` or the kind of error."""

    reason: str


Decision = RetryAt | GiveUp

RETRIES_EXHAUSTED = "retries_exhausted"

# The GiveUp reason of each error that is never retried. The names match the row status
# (`rejected`) and the fleet pause reasons (`insufficient_balance`, `authentication_failed`).
_GIVE_UP_REASONS: tuple[tuple[type[FaxOutboxError], str], ...] = (
    (RequestRejected, "rejected"),
    (InsufficientBalance, "insufficient_balance"),
    (AuthenticationFailed, "authentication_failed"),
    (IdempotencyKeyReuse, "idempotency_key_reuse"),
)

# The in-progress wait gets up to this fraction added at random, so workers that collided on
# one key do not collide again.
_IN_PROGRESS_JITTER = 0.5

# Whole or decimal seconds. RFC 9110 allows only digits; a fraction is harmless to accept.
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def backoff_seconds(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """The full-jitter delay after failed attempt number `attempt` (1-based).

    Uniform in `[0, min(cap, base * 2 ** (attempt - 1))]`: the ceiling doubles per attempt up
    to the cap, and the randomness is drawn from `rng` so tests can fix it.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # Past ~1000 doublings the float would overflow; the cap was reached long before.
    ceiling = min(policy.cap_seconds, policy.base_seconds * 2.0 ** min(attempt - 1, 1000))
    return rng.uniform(0.0, ceiling)


def decide(
    now: datetime,
    attempts_made: int,
    error: FaxOutboxError,
    policy: RetryPolicy,
    rng: random.Random,
) -> RetryAt | GiveUp:
    """What to do after a submission failed with `error`.

    `attempts_made` counts the attempts consumed so far, the one that just failed included.
    Network errors and 5xx retry with full-jitter backoff until `policy.max_attempts` attempts
    were made. A 429 waits its `retry_after` and an in-progress 409 waits briefly; neither
    consumes an attempt. Every other error gives up at once, with the error's kind as reason.
    """
    _require_aware(now)
    if attempts_made < 0:
        raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")

    if isinstance(error, RateLimited):
        wait = _clamp_retry_after(error.retry_after, policy)
        return RetryAt(now + timedelta(seconds=wait), consumes_attempt=False, reason="rate_limited")

    if isinstance(error, IdempotencyInProgress):
        wait = policy.in_progress_wait_seconds * (1.0 + rng.uniform(0.0, _IN_PROGRESS_JITTER))
        return RetryAt(now + timedelta(seconds=wait), consumes_attempt=False, reason="in_progress")

    if isinstance(error, TransportError | ServerError):
        if attempts_made >= policy.max_attempts:
            return GiveUp(RETRIES_EXHAUSTED)
        # attempts_made is 0 only if the caller did not count the failure; back off as after one.
        delay = backoff_seconds(max(attempts_made, 1), policy, rng)
        reason = "transport_error" if isinstance(error, TransportError) else "server_error"
        return RetryAt(now + timedelta(seconds=delay), consumes_attempt=True, reason=reason)

    return GiveUp(error_kind(error))


def error_kind(error: FaxOutboxError) -> str:
    """The snake_case name a `GiveUp` uses for `error` (`RequestRejected` -> `"rejected"`)."""
    for cls, kind in _GIVE_UP_REASONS:
        if isinstance(error, cls):
            return kind
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def parse_retry_after(value: str | None, now: datetime, policy: RetryPolicy) -> float:
    """Seconds to wait according to a `Retry-After` header value.

    RFC 9110 allows delay-seconds (`"34"`) or an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`),
    which is measured from `now` (pass the response's `Date` when there is one, so the two
    clocks are the server's). A missing, empty, negative or unreadable value gives
    `policy.default_retry_after_seconds`; the result is clamped to
    `[min_retry_after_seconds, max_retry_after_seconds]`, so a date in the past waits the
    minimum and an absurd value waits the maximum.
    """
    _require_aware(now)
    text = (value or "").strip()
    if not text:
        return policy.default_retry_after_seconds
    if _SECONDS.match(text):
        return _clamp_retry_after(float(text), policy)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return policy.default_retry_after_seconds
    if when.tzinfo is None:  # "-0000" or no zone: HTTP-dates are always GMT (RFC 9110).
        when = when.replace(tzinfo=UTC)
    return _clamp_retry_after((when - now).total_seconds(), policy)


def _clamp_retry_after(seconds: float, policy: RetryPolicy) -> float:
    if math.isnan(seconds):
        return policy.default_retry_after_seconds
    return min(max(seconds, policy.min_retry_after_seconds), policy.max_retry_after_seconds)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
