"""The fleet follows mintfax's `X-RateLimit-Limit` (issue 10, item 3): the real client against the
simulator over HTTP, the real throttle script on Redis, the episode and its one alert in Postgres.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, select

from outbox.alerts import Alerter
from outbox.clock import FrozenClock
from outbox.fax_client import MintfaxClient
from outbox.models import alerts
from outbox.provider_limit import ALERT_KIND, ProviderLimit
from outbox.throttle import FleetThrottle
from tests.sandbox_fixtures import SandboxHandle

CONFIGURED = 120


@dataclass
class Worker:
    """What one worker process holds: its throttle, its follower, its client."""

    throttle: FleetThrottle
    follower: ProviderLimit
    client: MintfaxClient


@dataclass
class Harness:
    engine: Engine
    redis: redis.Redis
    sandbox: SandboxHandle
    clock: FrozenClock
    opened: list[MintfaxClient]

    def worker(self, configured: int = CONFIGURED, engine: Engine | None = None) -> Worker:
        throttle = FleetThrottle(self.redis, configured)
        follower = ProviderLimit(engine or self.engine, throttle, Alerter(self.clock), self.clock)
        client = MintfaxClient(
            self.sandbox.base_url,
            SecretStr(self.sandbox.api_key),
            timeout=5,
            on_rate_limit=follower.observe,
        )
        self.opened.append(client)
        return Worker(throttle, follower, client)

    def stored(self) -> int | None:
        value = self.redis.get(FleetThrottle(self.redis, CONFIGURED).provider_limit_key)
        return None if value is None else int(value)

    def episodes(self) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(alerts.c.dedupe_key, alerts.c.message, alerts.c.detail)
                .where(alerts.c.kind == ALERT_KIND)
                .order_by(alerts.c.id)
            ).all()
        return [{"key": k, "message": m, **d} for k, m, d in rows]


@pytest.fixture
def harness(engine: Engine, redis_url: str, sandbox: SandboxHandle) -> Iterator[Harness]:
    sandbox.configure(rate_limit_per_minute=30)
    h = Harness(
        engine, redis.Redis.from_url(redis_url), sandbox, FrozenClock(datetime.now(UTC)), []
    )
    yield h
    for client in h.opened:
        client.close()


def test_a_lower_limit_is_followed_fleet_wide_with_one_alert_naming_both_figures(
    harness: Harness,
) -> None:
    first, second = harness.worker(), harness.worker()
    first.client.get_balance()

    assert harness.stored() == 30
    [episode] = harness.episodes()
    assert episode["key"] == f"{ALERT_KIND}:1"
    assert episode["provider_limit"] == 30 and episode["configured_limit"] == CONFIGURED
    assert "30" in str(episode["message"]) and "120" in str(episode["message"])
    # The other worker is paced by it from its next token on and raises nothing more.
    second.throttle.try_acquire()
    assert second.throttle.snapshot()["effective_limit_per_minute"] == 30
    second.client.get_balance()
    first.client.get_balance()
    assert len(harness.episodes()) == 1


def test_a_flushed_redis_is_healed_from_postgres_or_relearned_without_a_new_alert(
    harness: Harness,
) -> None:
    worker = harness.worker()
    worker.client.get_balance()
    harness.redis.flushdb()

    assert worker.follower.heal() == 30  # beat, before any answer
    assert harness.stored() == 30
    harness.redis.flushdb()
    worker.throttle.try_acquire()  # the script says: nothing stored
    worker.client.get_balance()  # and the next answer teaches it again
    assert harness.stored() == 30
    assert len(harness.episodes()) == 1


def test_a_rise_is_followed_up_to_the_configured_limit_and_a_new_drop_alerts_again(
    harness: Harness,
) -> None:
    worker = harness.worker()
    worker.client.get_balance()
    harness.sandbox.configure(rate_limit_per_minute=60)
    worker.client.get_balance()
    assert harness.stored() == 60
    [episode] = harness.episodes()
    assert episode["current_limit"] == 60 and "ended_at" not in episode

    harness.sandbox.configure(rate_limit_per_minute=500)
    worker.client.get_balance()
    assert harness.stored() is None
    assert "ended_at" in harness.episodes()[0]
    assert worker.follower.heal() is None  # nothing to restore once it ended

    harness.sandbox.configure(rate_limit_per_minute=45)
    worker.client.get_balance()
    assert harness.stored() == 45
    assert [e["key"] for e in harness.episodes()] == [f"{ALERT_KIND}:1", f"{ALERT_KIND}:2"]


def test_many_workers_learning_at_once_raise_one_alert(harness: Harness) -> None:
    workers = [harness.worker() for _ in range(8)]
    start = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def learn(worker: Worker) -> None:
        start.wait()
        try:
            worker.follower.follow(30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=learn, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(harness.episodes()) == 1
    assert harness.stored() == 30


def test_a_database_outage_never_loses_the_answer_and_the_fleet_still_slows_down(
    harness: Harness,
) -> None:
    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", pool_pre_ping=False)
    worker = harness.worker(engine=dead)
    balance = worker.client.get_balance()  # the hook fails on Postgres; the answer arrives

    assert balance.available >= 0
    assert harness.stored() == 30  # Redis was written first
    dead.dispose()


def test_an_episode_ends_when_the_configuration_is_lowered_to_fit(harness: Harness) -> None:
    harness.worker().client.get_balance()
    refit = harness.worker(configured=30)
    harness.redis.flushdb()

    assert refit.follower.heal() is None
    assert "ended_at" in harness.episodes()[0]
    refit.client.get_balance()  # 30 is not below 30: nothing stored, no alert
    assert harness.stored() is None
    assert len(harness.episodes()) == 1


def test_a_worker_killed_between_redis_and_postgres_leaves_no_episode_unalerted(
    harness: Harness,
) -> None:
    # The killed worker stored the figure (every worker follows it) but recorded nothing.
    FleetThrottle(harness.redis, CONFIGURED).follow_provider_limit(30)
    survivor = harness.worker()
    survivor.throttle.try_acquire()
    assert survivor.throttle.provider_limit == 30
    survivor.client.get_balance()  # its first answer records the episode

    [episode] = harness.episodes()
    assert episode["provider_limit"] == 30
    survivor.client.get_balance()
    assert len(harness.episodes()) == 1
