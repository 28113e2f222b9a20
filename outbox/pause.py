"""Fleet-wide pauses: when one worker learns that nobody can send, every worker stops.

A 402 (no balance), a 401/403 (bad key), an API key of the wrong environment, or an operator
opens a pause *episode* in Postgres (the truth: the claim statement refuses to hand out rows
while one is open). Redis holds a mirror that the hot path reads before each request, so the
window between a pause and the last request that can still leave is one Redis round trip.
A flushed Redis is healed by `FleetControl.sync_mirror`, which beat runs every few seconds.
A Redis that cannot be reached raises `FleetStateUnavailable` (the mirror is the boundary).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from sqlalchemy import Connection, Engine, text

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.clock import Clock, sql_now
from outbox.models import NOTIFY_CHANNEL, PauseReason
from outbox.repository import Pause
from outbox.throttle import DEFAULT_KEY_PREFIX, FleetThrottle, fleet_state_unavailable

_MESSAGES = {
    PauseReason.INSUFFICIENT_BALANCE: (
        # Not "then run `faxout resume`": the pause ends by itself after a top-up (mintfax's
        # balance.topup event, or the balance watch), as the chaos run's alert showed.
        "mintfax balance is insufficient (402): the fleet is paused; top up the balance and it "
        "resumes by itself (mintfax's balance.topup event, or the balance watch once "
        "FAXOUT_RESUME_BALANCE_CENTS are available); `faxout resume` ends the pause at once"
    ),
    PauseReason.AUTHENTICATION_FAILED: (
        "mintfax refused the API key (401/403): the fleet is paused; fix MINTFAX_API_KEY, then "
        "run `faxout resume`"
    ),
    PauseReason.API_KEY_MISMATCH: (
        "the mintfax API key does not match FAXOUT_ENVIRONMENT: the fleet is paused; fix the "
        "key or the environment, then run `faxout resume`"
    ),
    PauseReason.OPERATOR: "an operator paused the fleet",
    PauseReason.UNEXPECTED_RESPONSE: (
        "mintfax's address answered with something that is not mintfax: the fleet is paused "
        "and the faxes stay pending; fix MINTFAX_BASE_URL or the proxy, then run `faxout resume`"
    ),
    PauseReason.REJECTIONS_IN_A_ROW: (
        "mintfax refused many faxes in a row for the same reason, which points at the setup "
        "rather than the faxes: the fleet is paused; look at the rejected rows, fix the cause, "
        "then run `faxout resume`"
    ),
}


class PauseMirror:
    """The Redis copy of the open pauses, read on every submission."""

    def __init__(self, client: redis.Redis, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._redis = client
        # In the throttle's hash slot: the throttle script reads it as its gate.
        self.key = f"{FleetThrottle.hash_tag(key_prefix)}:paused"

    def is_paused(self) -> bool:
        """True when the mirror says a pause is open."""
        try:
            return bool(self._redis.exists(self.key))
        except redis.RedisError as exc:
            raise fleet_state_unavailable("pause mirror", exc) from exc

    def publish(self, pauses: Sequence[Pause]) -> None:
        """Make the mirror equal to `pauses` (the open episodes read from Postgres)."""
        try:
            if pauses:
                value = json.dumps([{"id": p.id, "reason": p.reason} for p in pauses])
                self._redis.set(self.key, value)
            else:
                self._redis.delete(self.key)
        except redis.RedisError as exc:
            raise fleet_state_unavailable("pause mirror", exc) from exc


def pause_in_transaction(
    conn: Connection,
    alerter: Alerter,
    *,
    reason: PauseReason,
    detail: Mapping[str, Any],
    started_by: str | None,
    clock: Clock,
) -> tuple[Pause, int | None]:
    """Open (or join) the pause episode for `reason`, alerting once per episode.

    Returns the pause and the id of a new alert (None when the episode was already open).
    """
    now = clock.now()
    pause, opened = repository.open_pause(
        conn, reason=reason.value, detail=detail, now=now, started_by=started_by
    )
    if not opened:
        return pause, None
    alert_id = alerter.record(
        conn,
        Alert(
            kind="fleet_paused",
            dedupe_key=f"fleet_paused:{pause.id}",
            message=_message(reason, detail),
            severity="warning" if reason is PauseReason.OPERATOR else "critical",
            detail={"reason": reason.value, **detail},
        ),
        now,
    )
    return pause, alert_id


def _message(reason: PauseReason, detail: Mapping[str, Any]) -> str:
    """The alert text of a pause, with what the operator needs to find the cause."""
    text = _MESSAGES[reason]
    if reason is PauseReason.UNEXPECTED_RESPONSE:
        text += f" ({detail.get('error', {}).get('message', 'no detail')})"
    elif reason is PauseReason.REJECTIONS_IN_A_ROW:
        text += f" ({detail.get('in_a_row')} faxes in a row refused with {detail.get('error')})"
    return text


class FleetControl:
    """Pause and resume the fleet: Postgres first, then the Redis mirror, then the alert."""

    # Seconds between two `sync_mirror` runs (beat): how long a flushed mirror stays empty.
    sync_interval = 5.0

    def __init__(self, engine: Engine, mirror: PauseMirror, alerter: Alerter, clock: Clock) -> None:
        self._engine = engine
        self._mirror = mirror
        self._alerter = alerter
        self._clock = clock

    def pause(
        self, reason: PauseReason, *, detail: Mapping[str, Any] | None = None, by: str | None
    ) -> Pause:
        """Pause every worker for `reason` (idempotent per open episode)."""
        with self._engine.begin() as conn:
            pause, alert_id = pause_in_transaction(
                conn,
                self._alerter,
                reason=reason,
                detail=detail or {},
                started_by=by,
                clock=self._clock,
            )
        self.sync_mirror()
        self._alerter.deliver(self._engine, [alert_id] if alert_id else [])
        return pause

    def resume(self, *, by: str | None, reasons: Sequence[str] | None = None) -> list[Pause]:
        """End open pauses (all, or those of `reasons`) and wake the relays at once.

        Rows whose messages were consumed during the pause become due now.
        """
        with self._engine.begin() as conn:
            ended = repository.end_pauses(conn, now=self._clock.now(), ended_by=by, reasons=reasons)
            still_open = repository.open_pauses(conn)
            if ended and not still_open:
                repository.redispatch_waiting(conn, now=sql_now(self._clock))
                conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
        self._mirror.publish(still_open)
        return ended

    def sync_mirror(self) -> list[Pause]:
        """Copy the open pauses from Postgres to Redis; returns them."""
        with self._engine.connect() as conn:
            pauses = repository.open_pauses(conn)
        self._mirror.publish(pauses)
        return pauses

    def open_pauses(self) -> list[Pause]:
        """The open pause episodes, from Postgres."""
        with self._engine.connect() as conn:
            return repository.open_pauses(conn)
