"""The throttle's script pacing the fleet by mintfax's own, lower limit (issue 10, item 3), on
fakeredis with a simulated clock (`time_source`), so minutes of traffic take milliseconds."""

from __future__ import annotations

import fakeredis
import pytest

from outbox.throttle import WINDOW_SECONDS, FleetThrottle, emission_interval_us
from tests.unit.test_throttle import START, SimClock, max_in_window, simulate


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.mark.parametrize(("provider", "burst"), [(30, 1), (1, 1), (7, 3), (59, 5), (2, 5)])
def test_the_script_paces_a_lower_limit_by_the_same_rule_as_python(
    client: fakeredis.FakeRedis, provider: int, burst: int
) -> None:
    throttle = FleetThrottle(client, 600, burst=burst, time_source=SimClock())
    throttle.follow_provider_limit(provider)

    snapshot = throttle.snapshot()
    assert snapshot["effective_limit_per_minute"] == provider
    expected = emission_interval_us(provider, min(burst, provider)) / 1_000_000
    assert snapshot["emission_interval"] == expected
    # ...and what the script does agrees: the wait after a burst is one interval at that pace.
    for _ in range(min(burst, provider)):
        assert throttle.acquire() == 0.0
    assert throttle.acquire() == pytest.approx(expected - 0.05, abs=2e-6)


@pytest.mark.parametrize(("configured", "provider", "workers"), [(120, 30, 4), (600, 61, 6)])
def test_a_fleet_configured_too_high_never_exceeds_mintfax_s_window(
    client: fakeredis.FakeRedis, configured: int, provider: int, workers: int
) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, configured, time_source=clock)
    # The first request goes out at the configured pace; its answer teaches mintfax's figure.
    assert throttle.acquire() == 0.0
    first = clock.now
    clock.advance(0.03)
    throttle.follow_provider_limit(provider)
    grants = [first, *simulate(throttle, clock, workers=workers, seconds=300, seed=provider)]

    assert max_in_window(grants, WINDOW_SECONDS + 1.0 - 1e-6) <= provider
    assert max_in_window(grants, 2 * WINDOW_SECONDS) > provider  # and no slower than needed
    sustained = (len(grants) - 2) / (grants[-1] - grants[1]) * 60
    assert sustained >= 0.98 * provider


def test_the_grant_that_taught_a_lower_limit_is_re_spaced_at_its_pace(
    client: fakeredis.FakeRedis,
) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 120, time_source=clock)
    assert throttle.acquire() == 0.0
    clock.advance(0.03)  # its answer arrives
    throttle.follow_provider_limit(30)
    interval = emission_interval_us(30) / 1_000_000
    # Not the configured 0.5 s after the first grant: a whole interval at 30/min after it.
    assert throttle.acquire() == pytest.approx(interval - 0.05 - 0.03, abs=2e-6)


def test_learning_on_an_idle_bucket_delays_nothing(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 120, time_source=clock)
    assert throttle.acquire() == 0.0
    clock.advance(30)
    throttle.follow_provider_limit(30)
    assert throttle.acquire() == 0.0


def test_a_rise_is_followed_up_to_the_configured_limit_and_no_further(
    client: fakeredis.FakeRedis,
) -> None:
    throttle = FleetThrottle(client, 120, time_source=SimClock())
    assert throttle.follow_provider_limit(30) == 30
    assert throttle.follow_provider_limit(60) == 60
    assert throttle.snapshot()["emission_interval"] == emission_interval_us(60) / 1e6
    # At or above ours, nothing is stored: the configured limit applies.
    assert throttle.follow_provider_limit(500) is None
    assert not client.exists(throttle.provider_limit_key)
    assert throttle.snapshot()["emission_interval"] == throttle.emission_interval
    assert throttle.follow_provider_limit(30) == 30
    assert throttle.follow_provider_limit(None) is None
    assert not client.exists(throttle.provider_limit_key)


def test_a_rise_does_not_push_the_schedule_back(client: fakeredis.FakeRedis) -> None:
    clock = SimClock()
    throttle = FleetThrottle(client, 120, time_source=clock)
    throttle.follow_provider_limit(30)
    assert throttle.acquire() == 0.0
    tat = client.get(throttle.keys[0])
    throttle.follow_provider_limit(60)
    assert client.get(throttle.keys[0]) == tat


def test_every_worker_follows_the_figure_one_of_them_learned() -> None:
    server = fakeredis.FakeServer()
    clock = SimClock()
    learner = FleetThrottle(fakeredis.FakeRedis(server=server), 120, time_source=clock)
    other = FleetThrottle(fakeredis.FakeRedis(server=server), 120, time_source=clock)
    assert other.acquire() == 0.0
    assert other.provider_limit is None
    learner.follow_provider_limit(30)
    # The other worker's next token already waits the new pace, and it learns the figure from
    # that same answer (no extra round trip).
    assert other.acquire() > 1.5
    assert other.provider_limit == 30


def test_restore_fills_a_flushed_figure_and_never_overrides_one(
    client: fakeredis.FakeRedis,
) -> None:
    throttle = FleetThrottle(client, 120, time_source=SimClock())
    assert throttle.restore_provider_limit(30) == 30
    assert throttle.restore_provider_limit(45) == 30  # a newer figure stays
    client.flushall()
    assert throttle.acquire() == 0.0
    assert throttle.provider_limit is None
    assert throttle.restore_provider_limit(45) == 45
    # A figure at or above the configured limit is never restored.
    client.flushall()
    assert throttle.restore_provider_limit(120) is None
    assert not client.exists(throttle.provider_limit_key)


def test_a_stored_figure_above_a_lower_configured_limit_is_ignored(
    client: fakeredis.FakeRedis,
) -> None:
    clock = SimClock()
    FleetThrottle(client, 600, time_source=clock).follow_provider_limit(300)
    lower = FleetThrottle(client, 60, time_source=clock)
    assert lower.snapshot()["effective_limit_per_minute"] == 60
    assert lower.snapshot()["emission_interval"] == lower.emission_interval
    assert lower.provider_limit == 300  # seen, so the follower can clear it


def test_the_twin_without_gate_shares_what_was_seen(client: fakeredis.FakeRedis) -> None:
    gated = FleetThrottle(client, 120, time_source=SimClock(START), gate_key="gate")
    reads = gated.without_gate()
    client.set("gate", "paused")
    assert gated.try_acquire().reason == "paused"
    assert reads.try_acquire().granted
    reads.follow_provider_limit(30)
    assert gated.provider_limit == 30
