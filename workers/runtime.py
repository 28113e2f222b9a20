"""Builds the long-lived objects of one worker process from `Settings`, once, after fork.

Celery's prefork pool forks child processes; database engines, HTTP clients and Redis
connections must be created in the child, not inherited. `Runtime.get()` builds them lazily on
first use in each process and `Runtime.close()` releases them at process shutdown. The settings
are the ones the process was configured with (`Runtime.configure`, called by the Celery app's
`configure`); this module never imports the Celery app.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import ClassVar

import redis
from sqlalchemy import Engine

from outbox import redis_conn, repository
from outbox.alerts import Alerter
from outbox.balance_watch import BalanceWatch
from outbox.clock import DatabaseClock
from outbox.db import make_engine
from outbox.dispatch import Dispatcher, ids_per_message_for
from outbox.fax_client import MintfaxClient
from outbox.pause import FleetControl, PauseMirror
from outbox.poller import StatusPoller, poll_throttle
from outbox.provider_limit import ProviderLimit
from outbox.reconcile import Reconciler
from outbox.redis_conn import RedisTarget
from outbox.rescuer import LeaseRescuer
from outbox.resolver import UnknownOutcomeResolver
from outbox.retention import RetentionPolicy, RetentionService
from outbox.retry import RetryPolicy
from outbox.settings import Settings
from outbox.submit import SubmitContext
from outbox.throttle import FleetThrottle


def worker_identity() -> str:
    """host:pid, unique per process across the fleet; used as lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Runtime:
    """The objects one process needs, built from settings on first use."""

    settings: Settings

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _settings: ClassVar[Settings | None] = None
    _instance: ClassVar[Runtime | None] = None
    _pid: ClassVar[int | None] = None

    @classmethod
    def configure(cls, settings: Settings) -> None:
        """Use `settings` for this process's runtime (survives a fork, like the rest)."""
        with cls._lock:
            cls._settings = settings
            cls._instance = None

    @classmethod
    def configured_settings(cls) -> Settings | None:
        """The settings this process was configured with, if any."""
        return cls._settings

    @classmethod
    def get(cls) -> Runtime:
        """This process's runtime (rebuilt after a fork)."""
        with cls._lock:
            if cls._settings is None:
                raise RuntimeError("Runtime.configure(settings) was not called in this process")
            if cls._instance is None or cls._pid != os.getpid():
                cls._instance = cls(cls._settings)
                cls._pid = os.getpid()
            return cls._instance

    @classmethod
    def close(cls) -> None:
        """Release this process's connections (at worker process shutdown)."""
        with cls._lock:
            instance, cls._instance = cls._instance, None
        if instance is not None and cls._pid == os.getpid():
            instance.dispose()

    def dispose(self) -> None:
        if "reconciler" in self.__dict__:
            self.reconciler.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "client" in self.__dict__:
            self.client.close()
        if "redis" in self.__dict__:
            self.redis.close()

    @cached_property
    def clock(self) -> DatabaseClock:
        # The database's clock, never this host's: leases, rescue, dispatch, retry times and
        # the 24 h guard must not depend on which host's wall clock is wrong (invariant 3).
        engine = self.engine

        def read() -> datetime:
            with engine.connect() as conn:
                return repository.database_now(conn)

        return DatabaseClock(read)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.require_database_url(), pool_size=2, max_overflow=2)

    @cached_property
    def redis(self) -> redis.Redis:
        # Through redis_conn: a Sentinel-managed REDIS_URL gives a client of the current
        # master, which the throttle, pause mirror and counters then follow across a failover.
        return redis_conn.client(
            RedisTarget.from_settings(self.settings), socket_timeout=5, health_check_interval=30
        )

    @cached_property
    def client(self) -> MintfaxClient:
        return MintfaxClient(
            self.settings.mintfax_base_url,
            self.settings.api_key,
            timeout=self.settings.http_timeout_seconds,
            # Every answer's X-RateLimit-Limit: the fleet follows mintfax's figure when lower.
            on_rate_limit=self.provider_limit.observe,
        )

    @cached_property
    def provider_limit(self) -> ProviderLimit:
        return ProviderLimit(self.engine, self.throttle, self.alerter, self.clock)

    @cached_property
    def throttle(self) -> FleetThrottle:
        return FleetThrottle(
            self.redis, self.settings.rate_limit_per_minute, gate_key=self.mirror.key
        )

    @cached_property
    def mirror(self) -> PauseMirror:
        return PauseMirror(self.redis)

    @cached_property
    def alerter(self) -> Alerter:
        return Alerter(self.clock, self.settings.alert_webhook_url)

    @cached_property
    def fleet(self) -> FleetControl:
        return FleetControl(self.engine, self.mirror, self.alerter, self.clock)

    @cached_property
    def rescuer(self) -> LeaseRescuer:
        return LeaseRescuer(
            self.engine, self.alerter, self.clock, max_attempts=self.settings.max_submit_attempts
        )

    @cached_property
    def reconciler(self) -> Reconciler:
        return Reconciler(self.engine, self.alerter, self.fleet, self.clock)

    @cached_property
    def submit_context(self) -> SubmitContext:
        return SubmitContext(
            engine=self.engine,
            autocommit_engine=self.engine.execution_options(isolation_level="AUTOCOMMIT"),
            sender=self.client,
            throttle=self.throttle,
            mirror=self.mirror,
            alerter=self.alerter,
            clock=self.clock,
            rng=random.Random(),
            api_key=self.settings.api_key,
            environment=self.settings.environment,
            worker_id=worker_identity(),
            lease_seconds=self.settings.lease_seconds,
            http_timeout=self.settings.http_timeout_seconds,
            rejection_breaker=self.settings.rejection_breaker,
            policy=RetryPolicy(max_attempts=self.settings.max_submit_attempts),
        )

    def dispatcher(self, publish: Callable[[Sequence[int]], None], queue: str) -> Dispatcher:
        """A dispatcher handing row ids to `publish`, watching the depth of broker `queue`."""
        broker = self.redis

        def depth() -> int:
            return int(broker.llen(queue))

        return Dispatcher(
            # One statement per dispatch: autocommit saves the BEGIN and COMMIT round trips.
            engine=self.engine.execution_options(isolation_level="AUTOCOMMIT"),
            publish=publish,
            queue_depth=depth,
            clock=self.clock,
            redispatch_after=self.settings.redispatch_seconds,
            ids_per_message=ids_per_message_for(self.settings.rate_limit_per_minute),
        )

    # --- status polling and balance watch ---------------------------------------------------

    @cached_property
    def read_throttle(self) -> FleetThrottle:
        # The fleet throttle (same keys, same limit) without the pause gate: polls and balance
        # reads share the rate limit with sends, and still run while sends are paused. A twin
        # of `throttle`, so both know the same mintfax limit (outbox/provider_limit.py).
        return self.throttle.without_gate()

    @cached_property
    def poller(self) -> StatusPoller:
        return StatusPoller(
            self.engine,
            self.client,
            self.reconciler,
            self.alerter,
            self.clock,
            fleet_throttle=self.read_throttle,
            poll_throttle=poll_throttle(
                self.redis,
                self.settings.rate_limit_per_minute,
                self.settings.poll_share,
                interval=StatusPoller.interval,
            ),
            poll_after=self.settings.poll_after_seconds,
            sends_horizon=self.settings.redispatch_seconds,
        )

    @cached_property
    def resolver(self) -> UnknownOutcomeResolver:
        return UnknownOutcomeResolver(
            self.engine,
            self.client,
            self.reconciler,
            self.clock,
            throttle=self.read_throttle,
            sends_horizon=self.settings.redispatch_seconds,
        )

    @cached_property
    def retention(self) -> RetentionService:
        policy = RetentionPolicy.from_settings(self.settings)
        return RetentionService(
            self.engine,
            self.clock,
            policy,
            client=self.client if policy.delete_at_mintfax else None,
            throttle=self.read_throttle,
            sends_horizon=self.settings.redispatch_seconds,
        )

    @cached_property
    def balance_watch(self) -> BalanceWatch:
        return BalanceWatch(
            self.engine,
            self.client,
            self.alerter,
            self.fleet,
            self.clock,
            throttle=self.read_throttle,
            low_cents=self.settings.low_balance_cents,
            resume_cents=self.settings.resume_balance_cents,
        )
