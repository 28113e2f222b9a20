"""Status polling: accepted faxes whose final state no webhook brought are read at mintfax.

After a 201 mintfax owns the fax and says how it ended through webhooks; a webhook can be lost,
unsubscribed or never configured. A row still `submitted` `FAXOUT_POLL_AFTER_SECONDS` after its
acceptance is read with `GET /fax/{id}` and what mintfax says is applied through the one
state-transition function (`outbox.reconcile.Reconciler.apply_observation`), so a poll follows
the same rules as an event: statuses only move forward, final states are sticky, an older
observation never overwrites a newer one.

Polls never get in the way of sends, nor past the rate limit:

- a pass does nothing while sends are due (and no pause holds them back);
- every poll takes a token of the fleet throttle, like a send, and one of a throttle of its own
  sized to `FAXOUT_POLL_SHARE` of the limit (GCRA on Redis, the same sliding-window sizing), so
  polls never take more than that share in any 60 s window, however many passes run;
- a pass never waits for a token: the first refusal ends it.

Each row has its own backoff (`next_poll_at`, `poll_attempts`): `poll_delay`, doubling from
`backoff_base` to `backoff_cap`, whatever the answer (a fax still in progress, a 5xx, a timeout,
a 404). A 404 for a fax id we hold raises one alert per row (`poll_not_found:fax:<id>`); the row
keeps being polled at the capped pace, as the fax may yet show up (a replica behind).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.clock import Clock, sql_now
from outbox.errors import (
    AuthenticationFailed,
    InsufficientBalance,
    MintfaxError,
    RateLimited,
    RequestRejected,
    UnexpectedResponse,
)
from outbox.events import FaxObservation
from outbox.reconcile import observation_from_resource, parse_time
from outbox.throttle import DEFAULT_KEY_PREFIX, FleetThrottle

log = logging.getLogger("faxout.poller")

# Errors after which the rest of the pass would fail the same way: stop, give the rows back.
_FLEET_WIDE = (RateLimited, AuthenticationFailed, InsufficientBalance, UnexpectedResponse)


class FaxReader(Protocol):
    """What the poller needs of `outbox.fax_client.MintfaxClient`."""

    def get_fax(self, fax_id: str) -> dict[str, Any]: ...


class ObservationSink(Protocol):
    """What the poller needs of `outbox.reconcile.Reconciler`."""

    def apply_observation(self, conn: Connection, obs: FaxObservation) -> str: ...


def poll_throttle(
    redis_client: redis.Redis,
    limit_per_minute: int,
    share: float,
    *,
    interval: float,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    time_source: Callable[[], float] | None = None,
) -> FleetThrottle | None:
    """The throttle that holds polls to `share` of `limit_per_minute` (None: polling is off).

    Its burst is one pass's worth (`interval` seconds of the share), so a pass polls without
    waiting; its sizing keeps every 60 s window within the share all the same. Its keys are its
    own (`<key_prefix>:polls`); every poll also takes a token of the fleet throttle.
    """
    poll_limit = math.floor(limit_per_minute * share + 1e-9)
    if poll_limit < 1:
        return None
    burst = max(1, min(poll_limit, math.floor(poll_limit * interval / 60)))
    return FleetThrottle(
        redis_client,
        poll_limit,
        burst=burst,
        key_prefix=f"{key_prefix}:polls",
        time_source=time_source,  # tests only, as for FleetThrottle
    )


def poll_delay(poll_attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds until the next poll of a row polled `poll_attempts` times (>= 1) so far:
    `base` doubling up to `cap`, minus up to 10 % jitter so rows polled together spread out."""
    exponent = min(max(poll_attempts - 1, 0), 32)
    delay = min(cap, base * 2.0**exponent)
    return delay * (1 - 0.1 * rng.random())


def observation_from(body: Mapping[str, Any], *, fallback_time: datetime) -> FaxObservation:
    """A `GET /fax/{id}` body as what it says about the fax (raises ValueError if unusable).

    `observed_at` is mintfax's `updated_at` (its own clock, comparable with its events'),
    else `fallback_time`.
    """
    observed_at = parse_time(body.get("updated_at")) or fallback_time
    observation = observation_from_resource(body, observed_at)
    if observation is None:
        raise ValueError("the fax resource has no id or status")
    return observation


@dataclass(frozen=True, slots=True)
class PollReport:
    """What one pass did (for logs, the task's return value and tests)."""

    polled: int = 0
    applied: int = 0
    errors: int = 0
    skipped: str | None = None  # why the pass polled nothing: "sends", "off", "throttle", "busy"


class StatusPoller:
    """Runs one polling pass per `run_once`; beat calls it every `interval` seconds."""

    interval = 30.0  # seconds between passes (beat's schedule)
    backoff_base = 60.0  # seconds after the first poll of a row
    backoff_cap = 3600.0  # the longest gap between two polls of a row
    max_inline_wait = 1.0  # the longest the pass sleeps for a fleet token
    errors_in_a_row = 3  # transport errors / 5xx in a row that end a pass (mintfax is down)

    def __init__(
        self,
        engine: Engine,
        client: FaxReader,
        reconciler: ObservationSink,
        alerter: Alerter,
        clock: Clock,
        *,
        fleet_throttle: FleetThrottle,
        poll_throttle: FleetThrottle | None,
        poll_after: float,
        sends_horizon: float,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._engine = engine
        self._client = client
        self._reconciler = reconciler
        self._alerter = alerter
        self._clock = clock
        self._fleet_throttle = fleet_throttle
        self._poll_throttle = poll_throttle
        self._poll_after = poll_after
        self._sends_horizon = sends_horizon
        self._rng = rng or random.Random()
        self._sleep = sleep

    def run_once(self) -> PollReport:
        """Poll the rows that are due, within this pass's share of the rate limit.

        One pass runs at a time, fleet-wide: the pass holds a transaction-scoped advisory
        lock while it polls (a second beat, or a pass that overran its interval, finds it taken
        and does nothing), so the selection only reads, and a pass that dies lets go of the lock
        with its connection, leaving its rows due for the next pass.
        """
        if self._poll_throttle is None:
            return PollReport(skipped="off")
        now = sql_now(self._clock)
        with self._engine.begin() as pass_:
            if repository.sends_waiting(pass_, now=now, horizon=self._sends_horizon):
                return PollReport(skipped="sends")
            targets = repository.due_polls(
                pass_, now=now, poll_after=self._poll_after, limit=self._poll_throttle.burst
            )
            if targets is None:
                return PollReport(skipped="busy")
            return self._poll_all(targets)

    # -- internals ---------------------------------------------------------------------------

    def _poll_all(self, targets: list[repository.PollTarget]) -> PollReport:
        polled = applied = errors = in_a_row = 0
        skipped: str | None = None
        for target in targets:
            if not self._take_tokens():
                skipped = "throttle" if polled == 0 else None
                break
            polled += 1
            try:
                outcome = self._poll(target)
            except _FLEET_WIDE as exc:
                errors += 1
                if isinstance(exc, RateLimited):
                    self._fleet_throttle.cooldown(exc.retry_after)
                log.warning(
                    "status polling stopped: %s",
                    exc,
                    extra={
                        "action": "poll.stopped",
                        "fax_id": target.id,
                        "mintfax_fax_id": target.mintfax_fax_id,
                    },
                )
                self._schedule(target)
                break
            except MintfaxError as exc:
                errors += 1
                in_a_row = 0 if isinstance(exc, RequestRejected) else in_a_row + 1
                self._schedule(target)
                if in_a_row >= self.errors_in_a_row:
                    log.warning(
                        "status polling stopped after %d errors in a row",
                        in_a_row,
                        extra={"action": "poll.stopped", "errors_in_a_row": in_a_row},
                    )
                    break
                continue
            in_a_row = 0
            applied += outcome == "applied"
        report = PollReport(polled=polled, applied=applied, errors=errors, skipped=skipped)
        if polled:
            log.info(
                "status poll: %d polled, %d applied, %d errors",
                polled,
                applied,
                errors,
                extra={
                    "action": "poll.pass",
                    "polled": polled,
                    "applied": applied,
                    "errors": errors,
                },
            )
        return report

    def _take_tokens(self) -> bool:
        assert self._poll_throttle is not None
        if not self._poll_throttle.try_acquire().granted:
            return False
        deadline = time.monotonic() + self.max_inline_wait
        while True:
            decision = self._fleet_throttle.try_acquire()
            if decision.granted:
                return True
            if (
                decision.reason != "throttled"
                or time.monotonic() + decision.wait_seconds > deadline
            ):
                return False
            self._sleep(decision.wait_seconds)

    def _poll(self, target: repository.PollTarget) -> str:
        """Read one fax and apply it; returns the transition's outcome. Raises MintfaxError."""
        try:
            body = self._client.get_fax(target.mintfax_fax_id)
        except RequestRejected as exc:
            if exc.status_code == 404:
                self._not_found(target, exc)
            raise
        try:
            observation = observation_from(body, fallback_time=self._clock.now())
        except ValueError as exc:
            log.warning(
                "fax %d: unusable status from mintfax: %s",
                target.id,
                exc,
                extra={
                    "action": "poll.unusable",
                    "fax_id": target.id,
                    "mintfax_fax_id": target.mintfax_fax_id,
                },
            )
            self._schedule(target)
            return "ignored"
        if observation.mintfax_fax_id != target.mintfax_fax_id:
            log.warning(
                "fax %d: mintfax answered about another fax id",
                target.id,
                extra={
                    "action": "poll.other_fax",
                    "fax_id": target.id,
                    "mintfax_fax_id": target.mintfax_fax_id,
                },
            )
            self._schedule(target)
            return "ignored"
        with self._engine.begin() as conn:
            outcome = self._reconciler.apply_observation(conn, observation)
            self._schedule_in(conn, target)
        if outcome == "ignored":  # the transition knows no such status
            log.warning(
                "fax %d: unknown mintfax status %r",
                target.id,
                observation.status,
                extra={
                    "action": "poll.unknown_status",
                    "fax_id": target.id,
                    "mintfax_fax_id": target.mintfax_fax_id,
                },
            )
        return outcome

    def _not_found(self, target: repository.PollTarget, exc: MintfaxError) -> None:
        alert = Alert(
            kind="poll_not_found",
            dedupe_key=f"poll_not_found:fax:{target.id}",
            message=(
                f"fax {target.id}: mintfax answers 404 for its fax id {target.mintfax_fax_id}, "
                "which it accepted; check the API key's environment and the fax at mintfax"
            ),
            detail={"mintfax_fax_id": target.mintfax_fax_id, "request_id": exc.request_id},
            fax_id=target.id,
        )
        with self._engine.begin() as conn:
            alert_id = self._alerter.record(conn, alert)
        self._alerter.deliver(self._engine, [alert_id] if alert_id else [])

    def _schedule(self, target: repository.PollTarget) -> None:
        with self._engine.begin() as conn:
            self._schedule_in(conn, target)

    def _schedule_in(self, conn: Connection, target: repository.PollTarget) -> None:
        delay = poll_delay(
            target.poll_attempts + 1, base=self.backoff_base, cap=self.backoff_cap, rng=self._rng
        )
        repository.schedule_next_poll(conn, target.id, now=sql_now(self._clock), delay=delay)
