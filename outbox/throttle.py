"""One rate limit for the whole fleet, decided atomically in Redis (invariant 5).

Every worker on every host asks the same Redis script before it calls mintfax. The script reads
Redis's own clock (`TIME`), never the worker's, so hosts with skewed clocks still share one
schedule, and the whole decision (cooldown check, token check, token take) is one atomic step.

Algorithm: GCRA, the Generic Cell Rate Algorithm (a token bucket written as one timestamp).
Redis keeps only the "theoretical arrival time" `tat` of the next request. With emission interval
`T` and burst `B`, a request at time `now` is allowed iff `now >= tat - (B - 1) * T`, and an
allowed request moves `tat` to `max(tat, now) + T`. It needs no refill loop and one key, and the
time until the next token is simply `tat - (B - 1) * T - now`.

Sizing for a sliding window: mintfax counts requests in a sliding 60 s window (a token bucket
sized naively at `limit / 60` per second can put `burst + limit` requests into one window). GCRA
with tolerance `tau` grants at most `1 + floor((W + tau) / T)` requests in any window of length
`W`. We use `tau = (B - 1) * T + slack` and pick the smallest `T` (in whole microseconds) with

    B + floor((60 + margin + slack) / T) <= limit,
    i.e.  T > (60 + margin + slack) / (limit - B + 1),

so even a window stretched by `margin` seconds (latency differences between the grant in Redis
and the request's arrival at mintfax) never holds more than `limit` requests. `slack` lets a
worker arrive a little late for its token (it slept, its Redis round trip took a while) without
the fleet losing that token for good, which with `B = 1` and no slack would happen on nearly
every grant. The price of both is throughput: the sustained rate is
`(limit - B + 1) / (60 + margin + slack)` per second, 98.3 % of the limit with the defaults
(`B = 1`, `margin = 1 s`, `slack = 50 ms`). Each extra unit of burst costs one request per
minute of sustained rate, which is why the default burst is 1.

Cooldown: a 429 (and its `Retry-After`) pauses the whole fleet, not the worker that saw it.
`cooldown(seconds)` stores the end of the pause; every `acquire()` answers with the time left
until then and takes no token. A longer pause already in place is never shortened.

Gate: with `gate_key` set (the fleet pause mirror, outbox/pause.py), `acquire()` also answers
"paused" while that key exists, in the same atomic step, so a worker learns "paused" and "your
turn" in one round trip. The gate key shares the throttle's hash tag (one Redis Cluster slot).

Provider's limit: mintfax says its own limit on every answer (`X-RateLimit-Limit`). When that
is below the configured limit, `follow_provider_limit` stores it next to the bucket and the
script paces every grant of the fleet by it (the interval is computed in the script, by the same
rule as `emission_interval_us`), so a fleet configured above its key's limit does not collect
429s. When a lower figure is learned, the latest grant (the request whose answer taught it) is
re-spaced at the new pace, as if it had been granted under it. The script answers the stored
figure with every decision, so a worker notices a change of mintfax's figure with no extra round
trip (outbox/provider_limit.py).

Redis state is disposable (invariant 1): both keys expire shortly after they stop mattering, and
a flushed Redis simply starts from an idle bucket (at most one extra burst) with no cooldown.
The script is loaded with `register_script`, so after `SCRIPT FLUSH` or a Redis restart the next
call reloads it transparently. A Redis that cannot be reached raises `FleetStateUnavailable`
(retryable): this module is the boundary where redis-py's exceptions are translated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from outbox.errors import FleetStateUnavailable

WINDOW_SECONDS = 60.0
# The namespace of the fleet's Redis keys (throttle and pause mirror); one per fleet.
DEFAULT_KEY_PREFIX = "faxout"
DEFAULT_MARGIN_SECONDS = 1.0
DEFAULT_SLACK_SECONDS = 0.05
# A cooldown longer than a day is a mistake (Retry-After is already clamped to an hour).
MAX_COOLDOWN_SECONDS = 86_400.0
_US = 1_000_000

# KEYS[1] tat (µs), KEYS[2] cooldown end (µs), KEYS[3] mintfax's own limit (requests/min, when
# below ours), KEYS[4] (optional) the pause gate.
# ARGV[1] op: "acquire" | "cooldown" | "peek" | "limit" | "restore"; ARGV[2] T (µs);
# ARGV[3] burst tolerance (µs); ARGV[4] cooldown length (µs); ARGV[5] now (µs) from a test
# clock, "" for Redis TIME; ARGV[6] the stretched window (µs); ARGV[7] burst; ARGV[8] slack (µs);
# ARGV[9] the configured limit; ARGV[10] mintfax's limit for "limit"/"restore" (0 = none).
# Returns {outcome, cooldown_left, wait, now, tat, provider_limit}, all integers (µs; the last
# one requests/min, 0 when none is stored); outcome 0 = granted, 1 = cooldown, 2 = throttled,
# 3 = nothing taken (peek / cooldown / limit / restore), 4 = paused (the gate key exists).
_SCRIPT = """
pcall(redis.replicate_commands)
local now
if ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local configured = tonumber(ARGV[9])

-- The pace for a limit below ours: the rule of emission_interval_us, in whole microseconds.
local function pace(limit)
  local burst = math.min(tonumber(ARGV[7]), limit)
  local t = math.floor(tonumber(ARGV[6]) / (limit - burst + 1)) + 1
  return t, (burst - 1) * t + tonumber(ARGV[8])
end

local provider = tonumber(redis.call('GET', KEYS[3]) or '0')
if provider > 0 and provider < configured then
  interval, tolerance = pace(provider)
end
if ARGV[1] == 'limit' or ARGV[1] == 'restore' then
  local wanted = tonumber(ARGV[10])
  if wanted <= 0 or wanted >= configured then
    if ARGV[1] == 'limit' then
      redis.call('DEL', KEYS[3])
      provider = 0
      interval = tonumber(ARGV[2])
      tolerance = tonumber(ARGV[3])
    end
  elseif ARGV[1] == 'limit' or provider == 0 then
    redis.call('SET', KEYS[3], wanted)
    provider = wanted
    local slower, slower_tolerance = pace(wanted)
    local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
    if ARGV[1] == 'limit' and slower > interval and stored + slower - interval > now then
      -- The latest grant (the one whose answer taught the figure) is re-spaced at the new
      -- pace, so no window holds it plus a full window's worth of new grants.
      stored = stored + slower - interval
      redis.call('SET', KEYS[1], string.format('%.0f', stored),
                 'PX', math.ceil((stored - now) / 1000) + 1000)
    end
    interval, tolerance = slower, slower_tolerance
  end
end

local cooldown_end = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == 'cooldown' then
  local wanted = now + tonumber(ARGV[4])
  if wanted > cooldown_end then
    cooldown_end = wanted
    redis.call('SET', KEYS[2], string.format('%.0f', wanted),
               'PX', math.ceil((wanted - now) / 1000) + 1000)
  end
end
local cooldown_left = math.max(cooldown_end - now, 0)

local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = math.max(tat - tolerance - now, 0)

if ARGV[1] ~= 'acquire' then
  return {3, cooldown_left, wait, now, tat, provider}
end
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  return {4, cooldown_left, wait, now, tat, provider}
end
if cooldown_left > 0 then
  return {1, cooldown_left, wait, now, tat, provider}
end
if wait > 0 then
  return {2, cooldown_left, wait, now, tat, provider}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {0, 0, 0, now, tat, provider}
"""

_OUTCOMES: dict[int, Literal["granted", "cooldown", "throttled", "paused"]] = {
    0: "granted",
    1: "cooldown",
    2: "throttled",
    4: "paused",
}


def emission_interval_us(
    limit_per_minute: int,
    burst: int = 1,
    margin_seconds: float = DEFAULT_MARGIN_SECONDS,
    slack_seconds: float = DEFAULT_SLACK_SECONDS,
) -> int:
    """The GCRA emission interval, in whole microseconds, for mintfax's sliding 60 s window.

    The smallest `T` with `burst + floor((60 + margin + slack) / T) <= limit_per_minute`, so
    no window of up to `60 + margin` seconds ever holds more than the limit, even with the
    `slack` tolerance added to the burst (see the module docstring).
    """
    if limit_per_minute < 1:
        raise ValueError(f"limit_per_minute must be >= 1, got {limit_per_minute}")
    if not 1 <= burst <= limit_per_minute:
        raise ValueError(f"burst must be within 1..limit_per_minute, got {burst}")
    for name, value in (("margin_seconds", margin_seconds), ("slack_seconds", slack_seconds)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value}")
    # Strictly greater than window / (limit - burst + 1): floor() must stay below that count.
    # (The script paces a provider's lower limit by this same rule, in Lua.)
    return _stretched_window_us(margin_seconds, slack_seconds) // (limit_per_minute - burst + 1) + 1


def _stretched_window_us(margin_seconds: float, slack_seconds: float) -> int:
    return round((WINDOW_SECONDS + margin_seconds) * _US) + round(slack_seconds * _US)


@dataclass(frozen=True, slots=True)
class ThrottleDecision:
    """The answer to one `try_acquire()`: a token, or how long to wait and why."""

    granted: bool
    wait_seconds: float  # 0.0 when granted, > 0 otherwise
    reason: Literal["granted", "cooldown", "throttled", "paused"]
    redis_time: float  # the Redis clock at the decision, Unix seconds


class FleetThrottle:
    """The fleet-wide mintfax rate limit plus the fleet-wide 429 cooldown, kept in Redis.

    Safe to share between threads (it holds only configuration and a redis-py client); every
    process and host that uses the same Redis and `key_prefix` shares one limit.

    `time_source` is for tests and simulations only: it replaces Redis `TIME` with the given
    clock (Unix seconds), so a long run can be simulated without waiting for it.
    """

    def __init__(
        self,
        redis: redis.Redis,
        limit_per_minute: int,
        *,
        burst: int = 1,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        slack_seconds: float = DEFAULT_SLACK_SECONDS,
        time_source: Callable[[], float] | None = None,
        gate_key: str | None = None,
    ) -> None:
        self._interval_us = emission_interval_us(
            limit_per_minute, burst, margin_seconds, slack_seconds
        )
        self._tolerance_us = (burst - 1) * self._interval_us + round(slack_seconds * _US)
        # What the script needs to pace mintfax's own lower limit the same way.
        self._pace_args = [
            _stretched_window_us(margin_seconds, slack_seconds),
            burst,
            round(slack_seconds * _US),
            limit_per_minute,
        ]
        self._limit = limit_per_minute
        # mintfax's limit as the script last answered it (0: none stored); see `provider_limit`.
        # A holder, so that `without_gate()` copies share what either of them last saw.
        self._seen = [0]
        self._burst = burst
        self._key_prefix = key_prefix
        # One hash tag, so both keys live in the same slot on a Redis Cluster.
        tag = self.hash_tag(key_prefix)
        self._keys = [f"{tag}:tat", f"{tag}:cooldown", f"{tag}:provider_limit"]
        # The pause gate rides along as KEYS[4] only in acquire (see the module docstring).
        self._acquire_keys = [*self._keys, gate_key] if gate_key else self._keys
        self._time_source = time_source
        self._script = redis.register_script(_SCRIPT)

    def __repr__(self) -> str:
        return (
            f"FleetThrottle(limit_per_minute={self._limit}, burst={self._burst}, "
            f"key_prefix={self._key_prefix!r})"
        )

    @property
    def limit_per_minute(self) -> int:
        return self._limit

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def slack_seconds(self) -> float:
        """How late a worker may come for its token without the fleet losing it."""
        return (self._tolerance_us - (self._burst - 1) * self._interval_us) / _US

    @property
    def emission_interval(self) -> float:
        """Seconds between two grants at the sustained rate."""
        return self._interval_us / _US

    def without_gate(self) -> FleetThrottle:
        """The same throttle (same keys, limit and what it last saw) that ignores the pause
        gate: for reads that share the rate limit and still run while sends are paused."""
        twin = copy.copy(self)
        twin._acquire_keys = self._keys
        return twin

    @staticmethod
    def hash_tag(key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
        """The Redis Cluster hash tag of a throttle's keys; a gate key must carry it too."""
        return f"{{{key_prefix}:throttle}}"

    @property
    def keys(self) -> tuple[str, str]:
        """The Redis keys of the bucket (token state, cooldown end)."""
        return self._keys[0], self._keys[1]

    @property
    def provider_limit_key(self) -> str:
        """The Redis key of mintfax's own limit, present only while it is below ours."""
        return self._keys[2]

    @property
    def provider_limit(self) -> int | None:
        """mintfax's limit stored for the fleet as of this throttle's latest call, or None.

        Read from the script's answers (no round trip of its own), so it may lag another
        worker's change by one call; `outbox.provider_limit` only compares it to what mintfax
        said to decide whether the stored figure must change.
        """
        return self._seen[0] or None

    def effective_limit(self, provider_limit: int | None) -> int:
        """The requests per minute the fleet is paced at with `provider_limit` stored."""
        if provider_limit is None or provider_limit < 1:
            return self._limit
        return min(self._limit, provider_limit)

    def follow_provider_limit(self, limit: int | None) -> int | None:
        """Pace the whole fleet by mintfax's `limit` when below ours; None (or a figure at or
        above ours) goes back to the configured limit. Returns the figure now stored."""
        self._run("limit", provider_limit=limit or 0)
        return self.provider_limit

    def restore_provider_limit(self, limit: int) -> int | None:
        """Store mintfax's `limit` only if no figure is stored (a Redis flushed while the
        truth in Postgres says mintfax's limit is lower); returns the figure now stored."""
        self._run("restore", provider_limit=limit)
        return self.provider_limit

    def acquire(self) -> float:
        """Take a token for one mintfax request: 0.0 if taken, else seconds to wait (> 0).

        While a fleet cooldown is active the answer is the time left in it and no token is
        taken; otherwise, when no token is free, the time until the next one. Waiting is the
        caller's business (and consumes no attempt). While the pause gate is closed the
        answer is `math.inf`: no token, and no time at which one is sure to come.
        """
        decision = self.try_acquire()
        return math.inf if decision.reason == "paused" else decision.wait_seconds

    def try_acquire(self) -> ThrottleDecision:
        """Like `acquire()`, but also says why a wait is needed (for logs and metrics)."""
        outcome, cooldown_left, wait, now, _tat = self._run("acquire")
        reason = _OUTCOMES[outcome]
        if reason == "granted":
            waited_us = 0
        elif reason == "cooldown":
            waited_us = cooldown_left
        elif reason == "paused":
            waited_us = 0
        else:
            waited_us = wait
        return ThrottleDecision(
            granted=reason == "granted",
            wait_seconds=waited_us / _US,
            reason=reason,
            redis_time=now / _US,
        )

    def cooldown(self, seconds: float) -> None:
        """Pause all sending, fleet-wide, for `seconds` (e.g. a 429's `Retry-After`).

        A longer cooldown already in place is kept; zero or negative does nothing. Values
        above a day are cut to a day.
        """
        if math.isnan(seconds):
            raise ValueError("cooldown seconds must be a number, got NaN")
        if seconds <= 0:
            return
        length_us = math.ceil(min(seconds, MAX_COOLDOWN_SECONDS) * _US)
        self._run("cooldown", length_us)

    def cooldown_remaining(self) -> float:
        """Seconds left in the fleet cooldown, 0.0 when there is none."""
        _, cooldown_left, _, _, _ = self._run("peek")
        return cooldown_left / _US

    def snapshot(self) -> dict[str, float]:
        """The throttle's state for status displays, read without taking anything.

        Keys: `limit_per_minute`, `burst`, `emission_interval` (s), `tokens` (requests that
        could go right now, cooldown aside), `next_free_in` (s until the next token, 0.0 if one
        is free) and `cooldown_remaining` (s).
        """
        _, cooldown_left, wait, now, tat = self._run("peek")
        limit = self.effective_limit(self.provider_limit)
        burst = min(self._burst, limit)
        interval_us, tolerance_us = self._pace_us(limit)
        # tat - tolerance is when the first token frees; each interval earlier is one more.
        free = (now + tolerance_us - tat) // interval_us + 1
        tokens = max(0, min(burst, free))
        return {
            "limit_per_minute": float(self._limit),
            "provider_limit": float(self.provider_limit or 0),
            "effective_limit_per_minute": float(limit),
            "burst": float(self._burst),
            "emission_interval": interval_us / _US,
            "tokens": float(tokens),
            "next_free_in": wait / _US,
            "cooldown_remaining": cooldown_left / _US,
        }

    def _pace_us(self, limit: int) -> tuple[int, int]:
        """(interval, tolerance) in µs at `limit` per minute: the script's `pace`."""
        if limit >= self._limit:
            return self._interval_us, self._tolerance_us
        window_us, burst, slack_us, _ = self._pace_args
        burst = min(burst, limit)
        interval_us = window_us // (limit - burst + 1) + 1
        return interval_us, (burst - 1) * interval_us + slack_us

    def _run(
        self, op: str, cooldown_us: int = 0, provider_limit: int = 0
    ) -> tuple[int, int, int, int, int]:
        now = "" if self._time_source is None else str(round(self._time_source() * _US))
        try:
            reply = self._script(
                keys=self._acquire_keys if op == "acquire" else self._keys,
                args=[
                    op,
                    self._interval_us,
                    self._tolerance_us,
                    cooldown_us,
                    now,
                    *self._pace_args,
                    provider_limit,
                ],
            )
        except redis.RedisError as exc:
            raise fleet_state_unavailable("throttle", exc) from exc
        outcome, cooldown_left, wait, at, tat, provider = (int(v) for v in reply)
        self._seen[0] = provider
        return outcome, cooldown_left, wait, at, tat


def fleet_state_unavailable(what: str, exc: redis.RedisError) -> FleetStateUnavailable:
    """A redis-py error as the `FleetStateUnavailable` it means for the fleet's `what`."""
    # redis-py's messages name the host and port, never the password of the URL.
    return FleetStateUnavailable(
        f"Redis unavailable for the fleet {what}: {type(exc).__name__}: {exc}"
    )
