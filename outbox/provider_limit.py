"""mintfax's own rate limit, followed by the whole fleet when it is below ours (issue 10, item 3).

mintfax states the limit of the key on every answer (`X-RateLimit-Limit`, requests per sliding
minute). A fleet configured above it (`FAXOUT_RATE_LIMIT_PER_MINUTE` too high, a key of a lower
tier, a limit mintfax lowered) would collect a 429 a minute; instead the client hands every
answer's headers to `ProviderLimit.observe`, and when mintfax's figure is below ours:

- the figure is stored next to the fleet's token bucket in Redis (`FleetThrottle.
  follow_provider_limit`), so every worker, poll and balance read is paced by it from its next
  token on; the moment it is learned counts as one grant at the new pace;
- the episode is recorded in Postgres, as the alert that announces it (kind
  `provider_rate_limit`, one per episode, naming both figures; `detail` keeps mintfax's current
  figure and, once over, when it ended), so a flushed Redis is healed from it (`heal`, run by
  beat with the pause mirror) even before the next answer teaches it again.

When mintfax's figure rises, the fleet follows it up to the configured limit; at or above that,
the stored figure is removed and the episode ends (a later drop is a new episode, a new alert).

Cheap on the hot path: the throttle's script answers the stored figure with every token, so
`observe` compares two integers and touches Redis and Postgres only when mintfax's figure
differs from what the fleet follows. Redis is written before Postgres, so the fleet slows down
as early as it can; beat's heal only ever restores a missing figure, never removes one, so the
two writes cannot race into a fleet running too fast.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Protocol

from sqlalchemy import Engine

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.clock import Clock
from outbox.errors import FleetStateUnavailable

log = logging.getLogger("faxout.provider_limit")

ALERT_KIND = "provider_rate_limit"


class LimitInfo(Protocol):
    """What `observe` reads of an answer's headers (`outbox.fax_client.RateLimitInfo`)."""

    @property
    def limit(self) -> int | None: ...


class ProviderLimitStore(Protocol):
    """What this needs of the fleet throttle (`outbox.throttle.FleetThrottle`)."""

    @property
    def limit_per_minute(self) -> int: ...

    @property
    def provider_limit(self) -> int | None: ...

    def follow_provider_limit(self, limit: int | None) -> int | None: ...

    def restore_provider_limit(self, limit: int) -> int | None: ...


def provider_limit_alert(provider_limit: int, configured: int) -> Alert:
    """The alert of one episode; its dedupe key is completed with the episode's number."""
    return Alert(
        kind=ALERT_KIND,
        dedupe_key=ALERT_KIND,
        message=(
            f"mintfax allows this API key {provider_limit} requests per minute "
            f"(X-RateLimit-Limit) but FAXOUT_RATE_LIMIT_PER_MINUTE is {configured}: the whole "
            f"fleet now sends at most {provider_limit} per minute; set "
            f"FAXOUT_RATE_LIMIT_PER_MINUTE={provider_limit} or ask mintfax for a higher limit"
        ),
        severity="warning",
        detail={"provider_limit": provider_limit, "configured_limit": configured},
    )


class ProviderLimit:
    """Follows mintfax's `X-RateLimit-Limit` across the fleet; one per process."""

    retry_seconds = 10.0

    def __init__(
        self, engine: Engine, throttle: ProviderLimitStore, alerter: Alerter, clock: Clock
    ) -> None:
        self._engine = engine
        self._throttle = throttle
        self._alerter = alerter
        self._clock = clock
        # One change at a time per process (threads share the client); other processes are
        # serialised by the episode's advisory lock in Postgres.
        self._lock = threading.Lock()
        # The figure this process has seen recorded in Postgres (None: no episode). A process
        # killed between its Redis and its Postgres write leaves a figure every worker follows
        # but no episode; the first answer each other process reads records it.
        self._recorded: int | None = None
        # After a failed attempt to record (Postgres down), a figure Redis already holds is not
        # retried on every answer: at most once per `retry_seconds`.
        self._quiet_until = 0.0

    def __repr__(self) -> str:
        return f"ProviderLimit(configured={self._throttle.limit_per_minute})"

    def observe(self, info: LimitInfo) -> None:
        """The client's hook, called with every answer's rate-limit headers. Never raises."""
        limit = info.limit
        if limit is None or limit < 1:
            return
        configured = self._throttle.limit_per_minute
        followed = self._throttle.provider_limit
        if limit < configured:
            if limit == followed and (
                limit == self._recorded or time.monotonic() < self._quiet_until
            ):
                return
        elif followed is None and self._recorded is None:
            return
        try:
            self.follow(limit)
        except Exception as exc:  # never lose the answer that carried the header
            self._quiet_until = time.monotonic() + self.retry_seconds
            log.warning(
                "could not follow mintfax's rate limit of %s/min: %s",
                limit,
                type(exc).__name__,
                extra={"action": "provider_limit.follow_failed"},
            )

    def follow(self, limit: int) -> None:
        """Make the fleet follow mintfax's `limit` now (Redis, then the episode in Postgres)."""
        configured = self._throttle.limit_per_minute
        lower = limit < configured
        alert_id: int | None = None
        with self._lock:
            self._throttle.follow_provider_limit(limit if lower else None)
            with self._engine.begin() as conn:
                episode = repository.open_provider_limit(conn, lock=True)
                now = self._clock.now()
                if not lower:
                    changed = repository.end_provider_limit(conn, now=now)
                elif episode is not None:
                    changed = episode[1] != limit
                    if changed:
                        repository.set_provider_limit(conn, episode[0], limit)
                else:
                    changed = True
                    number = repository.provider_limit_episodes(conn) + 1
                    alert = provider_limit_alert(limit, configured)
                    alert = replace(alert, dedupe_key=f"{alert.dedupe_key}:{number}")
                    alert_id = self._alerter.record(conn, alert, now)
                    if alert_id is not None:
                        repository.set_provider_limit(conn, alert_id, limit)
            self._recorded = limit if lower else None
        if changed:
            log.warning(
                "mintfax's rate limit is %s/min: the fleet follows %s/min "
                "(FAXOUT_RATE_LIMIT_PER_MINUTE=%s)",
                limit,
                min(limit, configured),
                configured,
                extra={"action": "provider_limit.lowered"},
            )
        self._alerter.deliver(self._engine, [alert_id] if alert_id else [])

    def heal(self) -> int | None:
        """Restore the followed figure in Redis from Postgres if Redis lost it (beat).

        An episode whose figure is no longer below the configured limit (the configuration was
        lowered to fit) is ended instead. Returns the figure the fleet follows, or None.
        """
        with self._engine.connect() as conn:
            episode = repository.open_provider_limit(conn)
        if episode is None:
            return None
        if episode[1] >= self._throttle.limit_per_minute:
            with self._engine.begin() as conn:
                repository.end_provider_limit(conn, now=self._clock.now())
            return None
        try:
            return self._throttle.restore_provider_limit(episode[1])
        except FleetStateUnavailable as exc:
            log.warning(
                "could not restore mintfax's rate limit in Redis: %s",
                exc,
                extra={"action": "provider_limit.restore_failed"},
            )
            return None
