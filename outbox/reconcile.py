"""Reconciliation: what mintfax says after a 201 moves each row to its true final state.

One state-transition function applies webhook events, status polls and operator lookups alike:
`fax_outbox_apply_observation` in the database (migration 0008), called through
`repository.apply_observation`. Statuses move only forward, terminal states are sticky, and an
older observation never overwrites a newer one (invariant 6).

Webhook events (`Reconciler.handle_event`) are recorded once, by their unique id, in the same
statement that applies them (`fax_events_ingest`): a duplicate changes nothing. An event about
a fax id no row holds yet (the webhook beat the worker that stores the id) is kept as `pending`
and applied by a database trigger the moment a row stores that id; both sides take the same
advisory lock on the fax id first, so whichever commits first, the event is applied once.

`balance.low` raises one alert per episode (an episode ends with a top-up); `balance.topup`
ends a balance pause of the fleet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.balance_watch import (
    close_episode_from_event,
    episode_alert_key,
    open_episode_from_event,
)
from outbox.clock import Clock, sql_now
from outbox.db import AsyncConnections
from outbox.errors import DatabaseUnavailable, FleetStateUnavailable
from outbox.events import FAX_EVENTS, FaxEvent, FaxObservation
from outbox.models import PauseReason
from outbox.outage import DATABASE, OutageLog, as_database_unavailable, connection_lost
from outbox.pause import FleetControl
from outbox.repository import BalanceSnapshot

log = logging.getLogger("faxout.reconcile")


class EventResult(StrEnum):
    """What became of one webhook event."""

    APPLIED = "applied"  # it moved its row (or acted on the balance)
    STALE = "stale"  # a row holds the fax id, but the news was older or the row is final
    PENDING = "pending"  # no row holds the fax id yet: kept, applied when one does
    IGNORED = "ignored"  # an event type or status we do not act on
    DUPLICATE = "duplicate"  # seen before (same event id): nothing changed


def observation_from_resource(
    resource: Mapping[str, Any], observed_at: datetime | None = None
) -> FaxObservation | None:
    """What a fax resource (an event's `data`, or `GET /fax/{id}`) says; None without an id."""
    fax_id, status = resource.get("id"), resource.get("status")
    if not isinstance(fax_id, str) or not fax_id or not isinstance(status, str):
        return None
    attempts = resource.get("attempts")
    attempt = len(attempts) if isinstance(attempts, list) and attempts else None
    when = observed_at or parse_time(resource.get("updated_at")) or datetime.now(UTC)
    return FaxObservation(
        mintfax_fax_id=fax_id,
        status=status,
        observed_at=when,
        pages=_int(resource.get("pages")),
        attempt=attempt,
        error_code=_str(resource.get("error_code")),
        error_message=_str(resource.get("error_message")),
        completed_at=parse_time(resource.get("completed_at")),
    )


class Reconciler:
    """Applies what mintfax tells: webhook events and observations (polls, lookups)."""

    def __init__(
        self, engine: Engine, alerter: Alerter, fleet: FleetControl | None, clock: Clock
    ) -> None:
        self._engine = engine
        self._fast_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._alerter = alerter
        self._fleet = fleet
        self._clock = clock
        # One thread, started on first use, for the alert deliveries that follow an answer.
        self._deliveries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faxout-alerts")
        # A database outage is one warning and one line when it is back, not a line per event.
        self.outages = OutageLog(log)
        self._async_connections: AsyncConnections | None = None  # on first async batch

    def handle_event(self, event: FaxEvent) -> EventResult:
        """Record `event` once and apply it, in one statement (the database's
        `fax_events_ingest`); then its side effects (a resumed fleet; alert delivery, in the
        background), which never undo the record. Raises `DatabaseUnavailable` when the
        database cannot be reached (the receiver answers 503; mintfax sends the event again)."""
        try:
            result = self._handle_event(event)
        except Exception as exc:
            unavailable = as_database_unavailable(exc)
            if unavailable is None:
                raise
            self.outages.lost(DATABASE, unavailable, _WHILE_DOWN)
            raise unavailable from exc
        self.outages.back(DATABASE)
        return result

    def _handle_event(self, event: FaxEvent) -> EventResult:
        if event.event_type != "balance.low":
            # Autocommit: the one statement is the transaction, one round trip.
            with self._fast_engine.connect() as conn:
                result = EventResult(repository.ingest_event(conn, event, _observation(event)))
            if result is EventResult.APPLIED and event.event_type == "balance.topup":
                self._after_topup(event)
            return result
        # balance.low: the event, the episode it opens (unless one is open: the watch's, or an
        # earlier event's) and its one alert, in one transaction.
        with self._engine.begin() as conn:
            result = EventResult(repository.ingest_event(conn, event, None))
            opened = (
                open_episode_from_event(
                    conn, now=sql_now(self._clock), event_id=event.event_id, data=event.data
                )
                if result is EventResult.APPLIED
                else None
            )
            alert_id = (
                None
                if opened is None
                else self._alerter.record(conn, _low_balance_alert(event, opened))
            )
        if alert_id is not None:
            # After the answer, not before: mintfax waits at most 5 s for it, and an alert
            # webhook may be slow (beat's retry delivers it if this process dies first).
            self._deliveries.submit(self._alerter.deliver, self._engine, [alert_id])
        return result

    def handle_events(self, events: Sequence[FaxEvent]) -> list[EventResult | Exception]:
        """`handle_event` for events that arrived together, in one statement and one commit
        (group commit: the receiver's throughput is its commits'). Returns each event's result,
        or the exception that kept it from being applied, in the order given.

        A batch that fails as a whole (a deadlock, one event the database refuses) is applied
        event by event, so one event's fault is only its own. `balance.low` goes on its own,
        with its alert.
        """
        together = _batchable(events)
        outcomes: list[str] | None = None
        try:
            with self._fast_engine.connect() as conn:
                outcomes = repository.ingest_events(
                    conn, [(events[i], _observation(events[i])) for i in together]
                )
        except Exception as exc:  # each is retried below, failing on its own
            unavailable = self._batch_failed(exc, len(together))
            if unavailable is not None:
                return [unavailable for _ in events]
        return self._finish_batch(events, together, outcomes)

    async def handle_events_async(
        self, events: Sequence[FaxEvent]
    ) -> list[EventResult | Exception]:
        """`handle_events` from an event loop: the batch's statement is awaited on the loop's
        own connection, with no worker thread (the receiver's loop and a writer thread took
        turns at the GIL, and each batch waited for its turn: bench/webhook_ingest.py).
        What else a batch needs (a `balance.low` and its alert, a failed batch applied event
        by event, a fleet resumed by a top-up) runs in a thread, as `handle_events` runs it.
        """
        together = _batchable(events)
        outcomes: list[str] | None = None
        try:
            outcomes = await self._ingest_async(
                [(events[i], _observation(events[i])) for i in together]
            )
        except Exception as exc:  # each is retried in the thread, failing on its own
            unavailable = self._batch_failed(exc, len(together))
            if unavailable is not None:
                return [unavailable for _ in events]
        if (
            outcomes is not None
            and len(together) == len(events)
            and not _applied_topups(events, outcomes)
        ):
            self.outages.back(DATABASE)
            return [EventResult(outcome) for outcome in outcomes]
        return await asyncio.to_thread(self._finish_batch, events, together, outcomes)

    async def aclose(self) -> None:
        """Close the connections `handle_events_async` keeps for the running loop."""
        if self._async_connections is not None:
            await self._async_connections.aclose()

    async def _ingest_async(
        self, items: Sequence[tuple[FaxEvent, FaxObservation | None]]
    ) -> list[str]:
        if not items:
            return []
        if self._async_connections is None:
            self._async_connections = AsyncConnections.for_engine(self._engine)
        while True:
            async with self._async_connections.connection() as (conn, kept):
                try:
                    return await repository.ingest_events_async(conn, items)
                except psycopg.Error as exc:
                    # A kept connection the server dropped since (a restart): once more on a
                    # new one, as the engine's ping would have done. A new one failing is an
                    # outage. Retrying is safe: an event already recorded answers `duplicate`.
                    if not (kept and connection_lost(exc)):
                        raise
                    log.info(
                        "a kept database connection was gone (%s); retrying on a new one",
                        type(exc).__name__,
                        extra={"action": "webhook.reconnect"},
                    )

    def _batch_failed(self, exc: Exception, size: int) -> DatabaseUnavailable | None:
        """The outage `exc` means, logged once; or None, logged, when the batch's events are
        to be applied one by one instead."""
        unavailable = as_database_unavailable(exc)
        if unavailable is not None:
            # Not one by one: each would fail the same way, a connection attempt and a log
            # line apiece (a 1 s restart in the chaos run of issue 12: 230 lines).
            self.outages.lost(DATABASE, unavailable, _WHILE_DOWN)
            return unavailable
        # The type only: a database error's text can hold the events' data (numbers).
        log.warning(
            "a batch of %d webhook events failed (%s); applying them one by one",
            size,
            type(exc).__name__,
            extra={"action": "webhook.batch_failed"},
        )
        return None

    def _finish_batch(
        self, events: Sequence[FaxEvent], together: Sequence[int], outcomes: list[str] | None
    ) -> list[EventResult | Exception]:
        """Each event's result: the batch's outcome (`together`'s events, when `outcomes`
        came back) or, for the rest, `handle_event` on its own; the fleet resumed if a top-up
        was applied."""
        results: list[EventResult | Exception | None] = [None] * len(events)
        if outcomes is not None:
            self.outages.back(DATABASE)
            for i, outcome in zip(together, outcomes, strict=True):
                results[i] = EventResult(outcome)
            for topup in _applied_topups([events[i] for i in together], outcomes):
                self._after_topup(topup)
        done: list[EventResult | Exception] = []
        for event, result in zip(events, results, strict=True):
            if result is None:  # balance.low, or the batch failed
                try:
                    result = self.handle_event(event)
                except Exception as exc:  # the receiver answers 503 for this event
                    result = exc
            done.append(result)
        return done

    def close(self) -> None:
        """Wait for alert deliveries still under way (at process or test end)."""
        self._deliveries.shutdown(wait=True)

    def _after_topup(self, event: FaxEvent) -> None:
        """An applied `balance.topup`: the low-balance episode ends, and the fleet's balance
        pause. Neither undoes the event's record: a failure is logged, and the balance watch
        ends both once it reads the balance back up."""
        try:
            with self._engine.begin() as conn:
                close_episode_from_event(conn, now=sql_now(self._clock), data=event.data)
        except Exception as exc:
            log.warning(
                "balance topped up; the low-balance episode stays open until the balance "
                "watch reads the balance back up: %s",
                type(exc).__name__,
                extra={"action": "balance.topup_episode_open"},
            )
        self._end_balance_pause()

    def _end_balance_pause(self) -> None:
        if self._fleet is None:
            return
        try:
            ended = self._fleet.resume(
                by="mintfax:balance.topup", reasons=[PauseReason.INSUFFICIENT_BALANCE.value]
            )
        except FleetStateUnavailable as exc:
            # The pause ended in Postgres (the truth) before the Redis mirror failed; beat's
            # mirror sync heals that. An error here would make mintfax resend the event, which
            # is then a duplicate and does nothing.
            log.warning(
                "balance topped up; the pause mirror is stale until beat heals it: %s",
                exc,
                extra={"action": "balance.topup_mirror_stale"},
            )
            return
        if ended:
            log.info(
                "balance topped up: the fleet's balance pause ended",
                extra={"action": "balance.topup_resumed"},
            )

    def apply_observation(self, conn: Connection, observation: FaxObservation) -> EventResult:
        """Apply one observation (a poll, a lookup) in the caller's transaction."""
        repository.lock_fax_events(conn, observation.mintfax_fax_id)
        return EventResult(repository.apply_observation(conn, observation))


# What the receiver does while the database is away (the outage warning says it once).
_WHILE_DOWN = "answering 503 to mintfax's webhooks, which it sends again"


def _batchable(events: Sequence[FaxEvent]) -> list[int]:
    """Which events go in a batch: all but `balance.low` (it goes alone, with its alert)."""
    return [i for i, event in enumerate(events) if event.event_type != "balance.low"]


def _applied_topups(events: Sequence[FaxEvent], outcomes: Sequence[str]) -> list[FaxEvent]:
    """The `balance.topup` events among `events` that were applied (each ends the low-balance
    episode and the fleet's balance pause)."""
    return [
        event
        for event, outcome in zip(events, outcomes, strict=True)
        if outcome == EventResult.APPLIED and event.event_type == "balance.topup"
    ]


def _observation(event: FaxEvent) -> FaxObservation | None:
    """What a fax event says about its fax (None for other events)."""
    if event.event_type not in FAX_EVENTS:
        return None
    return observation_from_resource(event.data, event.occurred_at)


def _low_balance_alert(event: FaxEvent, opened: BalanceSnapshot) -> Alert:
    # The episode's one alert, under the key the balance watch would give it.
    available = event.data.get("available")
    return Alert(
        kind="balance_low",
        dedupe_key=episode_alert_key(opened),
        message=(
            f"mintfax balance is low ({available} cents available): top up before it runs out "
            "(a 402 would pause the fleet)"
        ),
        severity="warning",
        detail={"available": available, "held": event.data.get("held"), "event": event.event_id},
    )


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 time from mintfax (a trailing Z allowed); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
