"""What a failed attempt means, as one pure function: retries are data (invariant 4).

`decide(now, attempts_made, error, policy, rng)` answers, for every error fax-outbox knows, what
becomes of the row, the fleet and the operators:

    RetryAt(at, consumes_attempt, outcome)   the row waits in `pending` until `at`
    CoolDown(seconds, at)                    429: the whole fleet waits; the row is due at `at`
    PauseFleet(reason, at)                   the setup is wrong for every fax (402, the key):
                                             the fleet stops, the row stays `pending`
    GiveUp(status, reason, alert, ...)       the row leaves for `rejected`, `failed` or
                                             `needs_review`, with `status_reason` and an alert

The answers come from one table, `FAILURES` (error class -> rule), read top down; the caller
turns a decision into row values without looking at the error's class (outbox/submit.py).
Nothing here sleeps, reads a clock or does I/O: the caller passes `now` and a `random.Random`,
so a seeded RNG makes every schedule reproducible in tests, and Celery's own countdown is never
the schedule.

What counts as an attempt: only a submission that reached mintfax or tried to. Waiting for a
429 `Retry-After`, for a concurrent request with the same idempotency key (409
`idempotency_key_in_progress`) or for an unreachable Redis costs no attempt, because the fax
was not tried; those waits are bounded by the provider, not by us. A fax whose outcome stays
unknown past mintfax's 24 h idempotency window is parked before it is sent again (invariant 3),
which bounds even those loops.

Backoff is "full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): the delay is
uniform in `[0, min(cap, base * 2 ** (attempt - 1))]`. Spreading retries over the whole interval
keeps a fleet that failed together (a mintfax outage) from retrying together.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from operator import attrgetter
from typing import ClassVar, Final

from outbox.errors import (
    ApiKeyMismatch,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    DatabaseUnavailable,
    FaxOutboxError,
    FleetStateUnavailable,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    IdempotencyWindowClosed,
    InsufficientBalance,
    LeaseExpired,
    RateLimited,
    RequestRejected,
    ServerError,
    TransportError,
    UnexpectedResponse,
    ValidationFailed,
)
from outbox.models import FaxStatus, Outcome, PauseReason
from outbox.settings import DEFAULT_MAX_SUBMIT_ATTEMPTS


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The knobs of the retry schedule; the defaults follow mintfax's go-live checklist."""

    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    # Attempts in all (the first one included) that reached or tried to reach mintfax.
    max_attempts: int = DEFAULT_MAX_SUBMIT_ATTEMPTS
    # 409 idempotency_key_in_progress: the first request is still running; look again soon.
    in_progress_wait_seconds: float = 2.0
    # Redis (throttle, pause mirror) unreachable: nobody may send; look again in this long.
    fleet_state_wait_seconds: float = 5.0
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
        if not self.fleet_state_wait_seconds > 0:
            raise ValueError("fleet_state_wait_seconds must be > 0")
        if not (
            self.min_retry_after_seconds
            <= self.default_retry_after_seconds
            <= self.max_retry_after_seconds
        ):
            raise ValueError("default_retry_after_seconds must lie within [min, max]")


# --- the decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryAt:
    """The row waits in `pending` until `at` (tz-aware); `consumes_attempt`: the failure counted."""

    at: datetime
    consumes_attempt: bool
    outcome: Outcome
    # The failed attempt may have created the fax (the row remembers: `outcome_unknown`).
    outcome_unknown: bool = False


@dataclass(frozen=True, slots=True)
class CoolDown:
    """429: the whole fleet waits `seconds`; the row is due again at `at`. No attempt used."""

    seconds: float
    at: datetime
    consumes_attempt: ClassVar[bool] = False
    outcome: ClassVar[Outcome] = Outcome.RATE_LIMITED


@dataclass(frozen=True, slots=True)
class PauseFleet:
    """Nothing can be sent by anyone: pause the fleet for `reason`; the row stays pending."""

    reason: PauseReason
    at: datetime
    consumes_attempt: ClassVar[bool] = False
    outcome: ClassVar[Outcome] = Outcome.PAUSED


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying this fax: the row takes `status` with `reason` as its `status_reason`."""

    status: FaxStatus
    reason: str
    alert: bool  # whether an operator alert is raised
    consumes_attempt: bool  # False when mintfax was never called
    outcome: Outcome


Decision = RetryAt | CoolDown | PauseFleet | GiveUp


# --- the rules the table is written in -------------------------------------------------------

_GIVE_UP_OUTCOMES: Final = {
    FaxStatus.REJECTED: Outcome.REJECTED,
    FaxStatus.FAILED: Outcome.FAILED,
    FaxStatus.NEEDS_REVIEW: Outcome.NEEDS_REVIEW,
}


@dataclass(frozen=True, slots=True)
class Stop:
    """Give up with `status` and `reason`.

    `own_code`: the error's own code (mintfax's `error`, the refused field) is the reason when
    it has one. `consumes_attempt=False` for refusals made before mintfax was called. `outcome`
    defaults to the one named like the status.
    """

    status: FaxStatus
    reason: str
    alert: bool = False
    consumes_attempt: bool = True
    own_code: bool = False
    outcome: Outcome | None = None

    def __post_init__(self) -> None:
        if self.status not in _GIVE_UP_OUTCOMES:
            raise ValueError(f"cannot give up into {self.status}")

    def give_up(self, error: FaxOutboxError) -> GiveUp:
        return GiveUp(
            status=self.status,
            reason=(error.code if self.own_code else None) or self.reason,
            alert=self.alert,
            consumes_attempt=self.consumes_attempt,
            outcome=self.outcome or _GIVE_UP_OUTCOMES[self.status],
        )


@dataclass(frozen=True, slots=True)
class Resend:
    """Send again with the same key (a replay at worst), using an attempt: after full-jitter
    backoff, or at once; `exhausted` once the policy's attempts are used up.

    `unknown`: the attempt may have created the fax. Once the attempts run out, a row any of
    whose attempts was unknown gives up as `UNKNOWN_EXHAUSTED` says, whatever `exhausted` says:
    `failed` is only for rows where every attempt is known to have created nothing.
    """

    exhausted: Stop
    at_once: bool = False
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Come back after `seconds(policy)`, plus up to `jitter` of it at random; no attempt used.

    The jitter keeps workers that collided (on one key) from colliding again.
    """

    seconds: Callable[[RetryPolicy], float]
    outcome: Outcome
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class HonourRetryAfter:
    """The whole fleet waits the error's `Retry-After`, clamped by the policy."""


@dataclass(frozen=True, slots=True)
class PauseFor:
    """Pause the fleet for `reason`: the fault is the setup's, not the fax's (invariant 9)."""

    reason: PauseReason


Rule = Resend | Wait | HonourRetryAfter | PauseFor | Stop
ErrorTypes = type[FaxOutboxError] | tuple[type[FaxOutboxError], ...]

# The outcome of the attempt is unknown: no answer, a 5xx, or a 2xx we could not read (a
# TransportError). The fax may exist at mintfax, so it is sent again only with the same key.
# (ConnectFailed, a TransportError that sent nothing, has its own row above these.)
UNKNOWN_OUTCOME: Final = (TransportError, ServerError)
# Attempts ran out and one of them may have created the fax: a human looks it up at mintfax
# (invariant 3). Never `failed`: that is sticky, and a re-enqueue would send a second fax.
UNKNOWN_EXHAUSTED: Final = Stop(FaxStatus.NEEDS_REVIEW, "unknown_outcome", alert=True)

_IN_PROGRESS_WAIT = attrgetter("in_progress_wait_seconds")
_FLEET_STATE_WAIT = attrgetter("fleet_state_wait_seconds")

# What each failure means; the first row whose class matches wins (subclasses above parents).
# Every attempt that counts against `max_attempts` has an unknown outcome, so the `Resend` rows
# also say what becomes of a row whose attempts run out with its outcome still unknown.
FAILURES: Final[tuple[tuple[ErrorTypes, Rule], ...]] = (
    # Waits that are nobody's failure: no attempt is used.
    (RateLimited, HonourRetryAfter()),
    (IdempotencyInProgress, Wait(_IN_PROGRESS_WAIT, Outcome.IN_PROGRESS, jitter=0.5)),
    (FleetStateUnavailable, Wait(_FLEET_STATE_WAIT, Outcome.THROTTLED)),
    # Postgres out of reach before the POST: the row waits; it is nobody's failure either.
    (DatabaseUnavailable, Wait(_FLEET_STATE_WAIT, Outcome.THROTTLED)),
    # Nothing was sent: again while attempts last; `failed` only if no attempt was unknown.
    (ConnectFailed, Resend(Stop(FaxStatus.FAILED, "retries_exhausted", alert=True))),
    # Unknown outcomes: again, with the same key, while attempts last; then a human looks.
    (UNKNOWN_OUTCOME, Resend(UNKNOWN_EXHAUSTED, unknown=True)),
    (
        LeaseExpired,  # the rescuer's bulk SQL follows this row (outbox/rescuer.py)
        Resend(
            Stop(FaxStatus.NEEDS_REVIEW, "unknown_outcome_attempts_exhausted", alert=True),
            at_once=True,
            unknown=True,
        ),
    ),
    # Wrong for every fax: stop the fleet, keep the row pending (invariant 9).
    (InsufficientBalance, PauseFor(PauseReason.INSUFFICIENT_BALANCE)),
    (AuthenticationFailed, PauseFor(PauseReason.AUTHENTICATION_FAILED)),
    (ApiKeyMismatch, PauseFor(PauseReason.API_KEY_MISMATCH)),
    (ConfigurationError, PauseFor(PauseReason.AUTHENTICATION_FAILED)),  # e.g. key file unreadable
    (UnexpectedResponse, PauseFor(PauseReason.UNEXPECTED_RESPONSE)),  # wrong base URL, a proxy
    # About this fax only.
    (IdempotencyKeyReuse, Stop(FaxStatus.NEEDS_REVIEW, "idempotency_key_reuse", alert=True)),
    (
        IdempotencyWindowClosed,
        Stop(FaxStatus.NEEDS_REVIEW, "idempotency_window", alert=True, consumes_attempt=False),
    ),
    (RequestRejected, Stop(FaxStatus.REJECTED, "rejected", own_code=True)),
    (
        ValidationFailed,  # our own checks, before mintfax was called
        Stop(
            FaxStatus.REJECTED,
            "invalid",
            own_code=True,
            consumes_attempt=False,
            outcome=Outcome.REJECTED_LOCALLY,
        ),
    ),
    # Anything else: nobody knows what happened, so a human looks (never `failed`).
    (FaxOutboxError, Stop(FaxStatus.NEEDS_REVIEW, "unexpected_error", alert=True)),
)

# Whole or decimal seconds. RFC 9110 allows only digits; a fraction is harmless to accept.
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def decide(
    now: datetime,
    attempts_made: int,
    error: FaxOutboxError,
    policy: RetryPolicy,
    rng: random.Random,
    *,
    outcome_unknown_before: bool = False,
) -> Decision:
    """What a submission that failed with `error` means for the row, the fleet and operators.

    `attempts_made` counts the attempts the row had used before this one (its `attempts`
    column); whether this failure uses one more is the table's answer (`consumes_attempt`).
    `outcome_unknown_before`: an earlier attempt of the row may have created the fax.
    Total: every `FaxOutboxError` has an answer (`FAILURES` ends with the root class).
    """
    _require_aware(now)
    if attempts_made < 0:
        raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
    match rule_for(error):
        case Resend(exhausted, at_once, unknown):
            attempt = attempts_made + 1  # the one that just failed
            if attempt >= policy.max_attempts:
                if outcome_unknown_before and not unknown:
                    return UNKNOWN_EXHAUSTED.give_up(error)
                return exhausted.give_up(error)
            delay = 0.0 if at_once else backoff_seconds(attempt, policy, rng)
            return RetryAt(now + timedelta(seconds=delay), True, Outcome.RETRY_SCHEDULED, unknown)
        case Wait(seconds, outcome, jitter):
            wait = seconds(policy)
            if jitter:
                wait *= 1.0 + rng.uniform(0.0, jitter)
            return RetryAt(now + timedelta(seconds=wait), False, outcome)
        case HonourRetryAfter():
            asked = error.retry_after if isinstance(error, RateLimited) else math.nan
            wait = float(_clamp_retry_after(asked, policy))
            return CoolDown(wait, now + timedelta(seconds=wait))
        case PauseFor(reason):
            return PauseFleet(reason, now)
        case Stop() as stop:
            return stop.give_up(error)


def rule_for(error: FaxOutboxError) -> Rule:
    """The row of `FAILURES` that `error` falls under."""
    return next(rule for types, rule in FAILURES if isinstance(error, types))


def attempts_exhausted(error: FaxOutboxError) -> GiveUp:
    """How the table gives up on `error` once the attempts have run out.

    For code that applies the table in bulk (the lease rescuer's one UPDATE); raises
    `ValueError` for an error that never uses an attempt.
    """
    rule = rule_for(error)
    if not isinstance(rule, Resend):
        raise ValueError(f"{type(error).__name__} never uses an attempt")
    return rule.exhausted.give_up(error)


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
