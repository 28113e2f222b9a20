"""The fleet throttle's real Lua script, run on fakeredis with a simulated clock.

`time_source` replaces Redis `TIME`, so minutes of saturated traffic from many workers are
simulated in well under a second of wall time, and every grant time is exact.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

import fakeredis
import pytest

from outbox.errors import FleetStateUnavailable
from outbox.pause import PauseMirror
from outbox.repository import Pause
from outbox.throttle import (
    MAX_COOLDOWN_SECONDS,
    WINDOW_SECONDS,
    FleetThrottle,
    emission_interval_us,
)

START = 1_800_000_000.0  # an arbitrary Unix time


class SimClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def simulate(
    throttle: FleetThrottle, clock: SimClock, *, workers: int, seconds: float, seed: int
) -> list[float]:
    """Saturating workers that sleep exactly what acquire() says; returns the grant times."""
    rng = random.Random(seed)
    wakeups = [(clock.now + rng.uniform(0, 0.01), w) for w in range(workers)]
    heapq.heapify(wakeups)
    grants: list[float] = []
    end = clock.now + seconds
    while wakeups:
        at, worker = heapq.heappop(wakeups)
        if at > end:
            break
        clock.now = at
        wait = throttle.acquire()
        if wait == 0.0:
            grants.append(at)
            wait = rng.uniform(0, 0.005)  # the request itself, then straight back for more
        else:
            assert wait > 0
            wait += rng.uniform(0, 0.002)  # workers do not wake at the exact microsecond
        heapq.heappush(wakeups, (at + wait, worker))
    return grants


def max_in_window(grants: list[float], window: float) -> int:
    """The most grants in any closed interval [t, t + window] (a sliding window)."""
    return max(bisect.bisect_right(grants, t + window) - i for i, t in enumerate(grants))


@pytest.mark.parametrize(
    ("limit", "burst", "workers", "seconds"),
    [
        (60, 1, 5, 400.0),
        (60, 10, 5, 400.0),
        (1, 1, 3, 300.0),
        (600, 1, 6, 130.0),
        (1200, 20, 3, 130.0),
    ],
)
def test_no_sliding_60s_window_ever_exceeds_the_limit(
    client: fakeredis.FakeRedis, limit: int, burst: int, workers: int, seconds: float
) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, limit, burst=burst, time_source=clock)
    grants = simulate(throttle, clock, workers=workers, seconds=seconds, seed=limit + burst)

    assert max_in_window(grants, WINDOW_SECONDS) <= limit
    # The 1 s margin: even a window stretched by latency skew stays within the limit.
    assert max_in_window(grants, WINDOW_SECONDS + 1.0 - 1e-6) <= limit
    # ...and the sizing is tight: a window much longer than 60 s would hold more.
    assert max_in_window(grants, 2 * WINDOW_SECONDS) > limit


@pytest.mark.parametrize("limit", [60, 600, 1200])
def test_saturated_fleet_achieves_98_percent_of_the_limit(
    client: fakeredis.FakeRedis, limit: int
) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, limit, time_source=clock)
    grants = simulate(throttle, clock, workers=3, seconds=120.0, seed=limit)

    first_90s = bisect.bisect_left(grants, grants[0] + 90.0)
    assert first_90s >= 0.98 * limit * 90 / 60
    sustained_per_minute = (len(grants) - 1) / (grants[-1] - grants[0]) * 60
    assert sustained_per_minute >= 0.98 * limit


@pytest.mark.parametrize(
    ("limit", "burst"),
    [
        (limit, burst)
        for limit in (1, 2, 7, 59, 60, 61, 100, 1000, 1200, 9999, 100_000)
        for burst in (1, 2, 10)
        if burst <= limit
    ],
)
@pytest.mark.parametrize(("margin", "slack"), [(0.0, 0.0), (0.5, 0.05), (1.0, 0.0), (1.0, 0.05)])
def test_emission_interval_sizing(limit: int, burst: int, margin: float, slack: float) -> None:
    interval_us = emission_interval_us(limit, burst, margin, slack)
    window_us = round((WINDOW_SECONDS + margin) * 1e6) + round(slack * 1e6)
    # A full burst (plus slack) at t, then one grant per interval: the most a window can hold.
    assert burst + window_us // interval_us <= limit
    # One microsecond shorter would break that bound: the interval is the smallest that fits.
    assert burst + window_us // (interval_us - 1) > limit or interval_us == 1


@pytest.mark.parametrize("limit", [60, 1200, 100_000])
def test_default_sizing_keeps_98_percent_of_the_limit(limit: int) -> None:
    interval = emission_interval_us(limit) / 1e6
    assert 60 / interval >= 0.98 * limit


@pytest.mark.parametrize(
    ("limit", "burst", "margin"),
    [(0, 1, 1.0), (10, 0, 1.0), (10, 11, 1.0), (10, 1, -0.1), (10, 1, float("nan"))],
)
def test_nonsense_sizing_is_refused(limit: int, burst: int, margin: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        emission_interval_us(limit, burst, margin)
    with pytest.raises(ValueError, match="slack_seconds must be"):
        emission_interval_us(60, 1, 1.0, -0.01)


def test_burst_then_exact_wait_for_the_next_token(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, burst=3, slack_seconds=0.0, time_source=clock)
    interval = throttle.emission_interval

    assert [throttle.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    decision = throttle.try_acquire()
    assert decision.reason == "throttled"
    assert not decision.granted
    assert decision.wait_seconds == pytest.approx(interval, abs=1e-6)
    assert decision.redis_time == pytest.approx(START)

    clock.advance(interval / 2)
    assert throttle.acquire() == pytest.approx(interval / 2, abs=1e-6)
    clock.advance(interval / 2)
    assert throttle.acquire() == 0.0
    assert throttle.acquire() > 0  # the refused calls above took nothing


@pytest.mark.parametrize("slack", [0.0, 0.05])
def test_slack_lets_a_late_worker_keep_its_token(client: fakeredis.FakeRedis, slack: float) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, slack_seconds=slack, time_source=clock)
    interval = throttle.emission_interval
    assert throttle.slack_seconds == pytest.approx(slack)
    assert throttle.acquire() == 0.0
    wait = throttle.acquire()  # refused: the time until the next token
    clock.advance(wait + 0.03)  # the worker oversleeps by 30 ms
    assert throttle.acquire() == 0.0
    # With slack the fleet's schedule is kept and the next token is 30 ms closer; without
    # it the 30 ms are lost for good and the next token is a full interval away.
    expected = interval - 0.03 if slack else interval
    assert throttle.acquire() == pytest.approx(expected, abs=1e-6)


def test_idle_time_refills_no_more_than_the_burst(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, burst=2, time_source=clock)
    clock.advance(3600)
    granted = 0
    while throttle.acquire() == 0.0:
        granted += 1
    assert granted == 2


def test_cooldown_is_seen_by_every_client_and_takes_no_token(
    server: fakeredis.FakeServer,
) -> None:
    clock = SimClock()
    worker_a = FleetThrottle(fakeredis.FakeRedis(server=server), 60, burst=2, time_source=clock)
    worker_b = FleetThrottle(fakeredis.FakeRedis(server=server), 60, burst=2, time_source=clock)

    worker_a.cooldown(34)
    decision = worker_b.try_acquire()
    assert decision.reason == "cooldown"
    assert decision.wait_seconds == pytest.approx(34)
    assert worker_b.cooldown_remaining() == pytest.approx(34)

    clock.advance(30)
    assert worker_b.acquire() == pytest.approx(4)
    clock.advance(4)
    assert worker_b.cooldown_remaining() == 0.0
    # Nothing was taken while paused: the whole burst is there.
    assert [worker_b.acquire(), worker_a.acquire()] == [0.0, 0.0]


def test_a_longer_cooldown_is_never_shortened(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, time_source=clock)
    throttle.cooldown(60)
    clock.advance(10)
    throttle.cooldown(5)
    assert throttle.cooldown_remaining() == pytest.approx(50)
    throttle.cooldown(80)
    assert throttle.cooldown_remaining() == pytest.approx(80)


@pytest.mark.parametrize("seconds", [0.0, -5.0])
def test_empty_cooldown_does_nothing(client: fakeredis.FakeRedis, seconds: float) -> None:
    throttle = FleetThrottle(client, 60, time_source=SimClock())
    throttle.cooldown(seconds)
    assert throttle.cooldown_remaining() == 0.0
    assert throttle.acquire() == 0.0


def test_cooldown_is_capped_at_a_day(client: fakeredis.FakeRedis) -> None:
    throttle = FleetThrottle(client, 60, time_source=SimClock())
    throttle.cooldown(float("inf"))
    assert throttle.cooldown_remaining() == MAX_COOLDOWN_SECONDS


def test_nan_cooldown_is_refused(client: fakeredis.FakeRedis) -> None:
    throttle = FleetThrottle(client, 60, time_source=SimClock())
    with pytest.raises(ValueError, match="NaN"):
        throttle.cooldown(float("nan"))


def test_snapshot_reads_without_taking(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 120, burst=3, slack_seconds=0.0, time_source=clock)
    interval = throttle.emission_interval
    assert throttle.snapshot() == {
        "limit_per_minute": 120.0,
        "provider_limit": 0.0,
        "effective_limit_per_minute": 120.0,
        "burst": 3.0,
        "emission_interval": interval,
        "tokens": 3.0,
        "next_free_in": 0.0,
        "cooldown_remaining": 0.0,
    }
    assert throttle.snapshot()["tokens"] == 3.0  # reading took nothing

    for _ in range(3):
        throttle.acquire()
    throttle.cooldown(12)
    snap = throttle.snapshot()
    assert snap["tokens"] == 0.0
    assert snap["next_free_in"] == pytest.approx(interval, abs=1e-6)
    assert snap["cooldown_remaining"] == pytest.approx(12)

    clock.advance(interval * 1.5)
    assert throttle.snapshot()["tokens"] == 1.0


def test_key_prefixes_are_separate_limits(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    live = FleetThrottle(client, 60, key_prefix="live", time_source=clock)
    sandbox = FleetThrottle(client, 60, key_prefix="sandbox", time_source=clock)
    assert live.acquire() == 0.0
    assert sandbox.acquire() == 0.0
    live.cooldown(10)
    assert sandbox.cooldown_remaining() == 0.0
    assert all(key.startswith("{live:throttle}") for key in live.keys)
    assert all(key.startswith("{sandbox:throttle}") for key in sandbox.keys)
    stored = {k.decode() for k in client.keys("*")}
    assert stored == {*live.keys, sandbox.keys[0]}  # no cooldown key until there is a cooldown


def test_keys_expire_once_they_stop_mattering(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, time_source=clock)
    throttle.acquire()
    throttle.cooldown(5)
    tat_key, cooldown_key = throttle.keys
    # TTL = time until the state is idle again, plus a second of slack.
    assert 0 < client.pttl(tat_key) <= math.ceil(throttle.emission_interval * 1000) + 1000
    assert 5000 < client.pttl(cooldown_key) <= 6000


def test_flushing_redis_only_resets_throttle_state(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 60, time_source=clock)
    throttle.acquire()
    throttle.cooldown(30)
    client.flushall()
    client.script_flush()
    assert throttle.cooldown_remaining() == 0.0
    assert throttle.acquire() == 0.0  # the script was reloaded transparently
    assert throttle.acquire() > 0


def test_uses_the_redis_clock_without_a_time_source(client: fakeredis.FakeRedis) -> None:
    throttle = FleetThrottle(client, 60)
    first = throttle.try_acquire()
    second = throttle.try_acquire()
    assert first.granted
    assert second.reason == "throttled"
    assert 0 < second.wait_seconds <= throttle.emission_interval
    assert second.redis_time >= first.redis_time > 1_600_000_000


def test_repr_names_the_configuration() -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(), 60, burst=2, key_prefix="faxout")
    assert repr(throttle) == "FleetThrottle(limit_per_minute=60, burst=2, key_prefix='faxout')"


def test_gate_key_closes_acquire_without_taking_a_token() -> None:
    """The pause mirror as the throttle's gate: "paused" and "your turn" in one atomic call."""
    client = fakeredis.FakeRedis()
    gate = f"{FleetThrottle.hash_tag()}:paused"
    throttle = FleetThrottle(client, 600, gate_key=gate)
    client.set(gate, "[]")
    decision = throttle.try_acquire()
    assert (decision.granted, decision.reason) == (False, "paused")
    assert throttle.acquire() == math.inf
    assert client.get(throttle.keys[0]) is None  # no token was taken while paused
    client.delete(gate)
    assert throttle.try_acquire().granted
    # Without a gate the same key means nothing to the throttle.
    client.set(gate, "[]")
    assert FleetThrottle(client, 600, key_prefix="other").try_acquire().granted


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.acquire(),
        lambda t: t.try_acquire(),
        lambda t: t.cooldown(5),
        lambda t: t.cooldown_remaining(),
        lambda t: t.snapshot(),
    ],
)
def test_an_unreachable_redis_is_our_retryable_error(
    server: fakeredis.FakeServer, call: Callable[[FleetThrottle], object]
) -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(server=server), 60)
    server.connected = False
    with pytest.raises(FleetStateUnavailable, match="throttle: ConnectionError") as caught:
        call(throttle)
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "call",
    [lambda m: m.is_paused(), lambda m: m.publish([]), lambda m: m.publish([_pause()])],
)
def test_an_unreachable_redis_behind_the_pause_mirror_is_our_retryable_error(
    server: fakeredis.FakeServer, call: Callable[[PauseMirror], object]
) -> None:
    mirror = PauseMirror(fakeredis.FakeRedis(server=server))
    server.connected = False
    with pytest.raises(FleetStateUnavailable, match="pause mirror: ConnectionError") as caught:
        call(mirror)
    assert caught.value.retryable is True


def _pause() -> Pause:
    return Pause(1, "operator", {}, datetime(2026, 3, 1, tzinfo=UTC), None)
