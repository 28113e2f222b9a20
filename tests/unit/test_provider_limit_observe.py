"""When `ProviderLimit.observe` acts: only when mintfax's figure differs from what the fleet
follows (or this process has not seen it recorded). Everything else is a comparison of two
integers on the hot path, without Redis or Postgres (the throttle's script answered the figure)."""

from __future__ import annotations

from dataclasses import dataclass

import fakeredis

from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.provider_limit import ProviderLimit
from outbox.throttle import FleetThrottle


@dataclass
class Info:
    limit: int | None


class Counting(ProviderLimit):
    """Records each decision to act; acts on Redis only (the Postgres half is integration's)."""

    def __init__(self, throttle: FleetThrottle) -> None:
        super().__init__(None, throttle, Alerter(FrozenClock()), FrozenClock())  # type: ignore[arg-type]
        self.acted: list[int] = []

    def follow(self, limit: int) -> None:
        self.acted.append(limit)
        lower = limit < self._throttle.limit_per_minute
        self._throttle.follow_provider_limit(limit if lower else None)
        self._recorded = limit if lower else None


def test_a_steady_figure_is_acted_on_once_and_then_only_compared() -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(), 120)
    follower = Counting(throttle)
    for _ in range(1000):
        throttle.try_acquire()
        follower.observe(Info(30))
    assert follower.acted == [30]


def test_no_header_zero_or_a_figure_at_or_above_ours_does_nothing() -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(), 120)
    follower = Counting(throttle)
    for limit in (None, 0, 120, 600):
        follower.observe(Info(limit))
    assert follower.acted == []


def test_changes_rises_and_the_way_back_are_each_acted_on() -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(), 120)
    follower = Counting(throttle)
    for limit in (30, 30, 45, 45, 120, 120, 20):
        throttle.try_acquire()
        follower.observe(Info(limit))
    assert follower.acted == [30, 45, 120, 20]


def test_a_figure_another_process_stored_is_recorded_once_here() -> None:
    client = fakeredis.FakeRedis()
    FleetThrottle(client, 120).follow_provider_limit(30)  # a worker killed before Postgres
    throttle = FleetThrottle(client, 120)
    follower = Counting(throttle)
    for _ in range(5):
        throttle.try_acquire()
        follower.observe(Info(30))
    assert follower.acted == [30]


def test_after_a_failed_record_the_figure_is_retried_only_after_a_quiet_spell() -> None:
    throttle = FleetThrottle(fakeredis.FakeRedis(), 120)
    tries: list[int] = []

    class Failing(Counting):
        def follow(self, limit: int) -> None:
            tries.append(limit)
            self._throttle.follow_provider_limit(limit)
            raise RuntimeError("Postgres is down")

    follower = Failing(throttle)
    for _ in range(50):
        throttle.try_acquire()
        follower.observe(Info(30))  # never raises
    assert tries == [30]
    follower._quiet_until = 0.0  # the quiet spell is over
    follower.observe(Info(30))
    assert tries == [30, 30]
