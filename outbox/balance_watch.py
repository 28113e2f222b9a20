"""The balance watch: read mintfax's balance, warn once when it runs low, lift a 402 pause.

Every `interval` seconds (beat) `GET /account/balance` is read and stored (`balance_snapshots`,
recent readings only). When `available` drops below `FAXOUT_LOW_BALANCE_CENTS` a low-balance
*episode* starts and raises one alert, whose dedupe key names the episode by its start
(`balance_low:<start>`), so two beats or a retried task never raise it twice. The episode ends
when `available` is back at `FAXOUT_RESUME_BALANCE_CENTS` or more (or at the low mark, if that
is higher): a balance wobbling around the low mark is one episode, not one alert per wobble.

mintfax's own `balance.low` and `balance.topup` webhooks move the same episode
(`open_episode_from_event`, `close_episode_from_event`): whichever signal comes first opens it
and raises its one alert (same key), the other finds it open; a top-up closes it. Before, the
two kept episodes of their own, and one low balance could raise two alerts. A `balance.low`
that mintfax repeats within one of its top-up cycles opens nothing, even when the watch has
closed the episode meanwhile (mintfax's mark can sit far above ours).

A fleet pause for `insufficient_balance` (a 402) is lifted automatically once `available` is at
or above `FAXOUT_RESUME_BALANCE_CENTS`: `FleetControl.resume` ends it and makes the waiting
rows due. The resume cannot burst past the rate limit: every send, resumed or not, takes a
token of the fleet throttle first. The balance read takes one too (it is a request like any
other), from a throttle that ignores the pause gate, since a paused fleet is exactly when the
balance must be read; when no token is free the pass is skipped, not waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.clock import Clock, sql_now
from outbox.errors import MintfaxError, RateLimited
from outbox.fax_client import Balance
from outbox.models import PauseReason
from outbox.pause import FleetControl
from outbox.repository import BalanceSnapshot
from outbox.throttle import FleetThrottle

log = logging.getLogger("faxout.balance_watch")

RESUMED_BY = "balance_watch"


class BalanceReader(Protocol):
    """What the watch needs of `outbox.fax_client.MintfaxClient`."""

    def get_balance(self) -> Balance: ...


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """What one pass saw and did."""

    snapshot: BalanceSnapshot | None  # None: no reading (no throttle token, or mintfax failed)
    alerted: bool = False
    resumed: bool = False


class BalanceWatch:
    """Runs one balance check per `run_once`; beat calls it every `interval` seconds."""

    interval = 60.0  # seconds between checks (beat's schedule)
    keep_seconds = 86_400.0  # readings older than this are dropped

    def __init__(
        self,
        engine: Engine,
        client: BalanceReader,
        alerter: Alerter,
        fleet: FleetControl,
        clock: Clock,
        *,
        throttle: FleetThrottle,
        low_cents: int,
        resume_cents: int,
    ) -> None:
        self._engine = engine
        self._client = client
        self._alerter = alerter
        self._fleet = fleet
        self._clock = clock
        self._throttle = throttle
        self._low = low_cents
        self._resume = resume_cents

    def run_once(self) -> BalanceReport:
        """Read the balance, store it, alert on a new low episode, lift a balance pause."""
        if not self._throttle.try_acquire().granted:
            log.info(
                "balance check skipped: no rate-limit token free",
                extra={"action": "balance.check_skipped"},
            )
            return BalanceReport(snapshot=None)
        try:
            balance = self._client.get_balance()
        except MintfaxError as exc:
            log.warning("balance check failed: %s", exc, extra={"action": "balance.check_failed"})
            if isinstance(exc, RateLimited):
                self._throttle.cooldown(exc.retry_after)
            return BalanceReport(snapshot=None)
        snapshot, alert_id = self._record(balance)
        self._alerter.deliver(self._engine, [alert_id] if alert_id else [])
        resumed = False
        if balance.available >= self._resume and any(
            pause.reason == PauseReason.INSUFFICIENT_BALANCE for pause in self._fleet.open_pauses()
        ):
            ended = self._fleet.resume(by=RESUMED_BY, reasons=[PauseReason.INSUFFICIENT_BALANCE])
            resumed = bool(ended)
            if resumed:
                log.warning(
                    "balance is %d cents (>= %d): the insufficient-balance pause is lifted",
                    balance.available,
                    self._resume,
                    extra={"action": "balance.pause_lifted", "available_cents": balance.available},
                )
        return BalanceReport(snapshot=snapshot, alerted=alert_id is not None, resumed=resumed)

    def _record(self, balance: Balance) -> tuple[BalanceSnapshot, int | None]:
        recovered_at = max(self._low, self._resume)
        with self._engine.begin() as conn:
            repository.lock_balance_watch(conn)
            previous = repository.latest_balance_snapshot(conn)
            ongoing = previous.low_since if previous is not None else None
            if balance.available < self._low:
                low_since, start = ongoing, ongoing is None
            elif ongoing is not None and balance.available < recovered_at:
                low_since, start = ongoing, False
            else:
                low_since, start = None, False
            snapshot = repository.record_balance_snapshot(
                conn,
                now=sql_now(self._clock),
                available=balance.available,
                held=balance.held,
                low_since=low_since,
                start_episode=start,
                keep_seconds=self.keep_seconds,
            )
            alert_id = None
            if start and snapshot.low_since is not None:
                alert_id = self._alerter.record(conn, self._low_alert(snapshot))
        return snapshot, alert_id

    def _low_alert(self, snapshot: BalanceSnapshot) -> Alert:
        assert snapshot.low_since is not None
        return Alert(
            kind="balance_low",
            dedupe_key=episode_alert_key(snapshot),
            severity="warning",
            message=(
                f"mintfax balance is low: {snapshot.available} cents available "
                f"(below FAXOUT_LOW_BALANCE_CENTS = {self._low}, {snapshot.held} held); "
                "top up before sends are refused with 402"
            ),
            detail={
                "available": snapshot.available,
                "held": snapshot.held,
                "threshold": self._low,
                "episode_started_at": snapshot.low_since.isoformat(),
            },
        )


def episode_alert_key(opened: BalanceSnapshot) -> str:
    """The dedupe key of a low-balance episode's one alert, whichever signal opened it."""
    assert opened.low_since is not None
    return f"balance_low:{opened.low_since.isoformat()}"


def open_episode_from_event(
    conn: Connection, *, now: datetime | None, event_id: str, data: Mapping[str, Any]
) -> BalanceSnapshot | None:
    """mintfax's `balance.low` `event_id` (its `data`: available, held), recorded in the
    caller's transaction: a low-balance episode starts, unless one is open already (the
    watch's, or an earlier event's) or mintfax said `balance.low` before in the same top-up
    cycle. mintfax repeats it while the balance hovers across its own mark, which can sit far
    above ours: the watch, reading the balance as fine, may have closed the episode between
    two repeats. Returns the reading that opened it, to alert once (`episode_alert_key`);
    None otherwise."""
    repository.lock_balance_watch(conn)
    previous = repository.latest_balance_snapshot(conn)
    if previous is not None and previous.low_since is not None:
        return None
    if repository.low_balance_told_since_topup(conn, event_id):
        return None
    return repository.record_balance_snapshot(
        conn,
        now=now,
        available=_cents(data.get("available"), previous.available if previous else 0),
        held=_cents(data.get("held"), previous.held if previous else 0),
        low_since=None,
        start_episode=True,
        keep_seconds=BalanceWatch.keep_seconds,
    )


def close_episode_from_event(
    conn: Connection, *, now: datetime | None, data: Mapping[str, Any]
) -> bool:
    """mintfax's applied `balance.topup`, in the caller's transaction: the open low-balance
    episode ends (the top-up answers it; should the balance still be low, the watch's next
    reading opens a new one). True if one was open; nothing is written otherwise."""
    repository.lock_balance_watch(conn)
    previous = repository.latest_balance_snapshot(conn)
    if previous is None or previous.low_since is None:
        return False
    repository.record_balance_snapshot(
        conn,
        now=now,
        available=_cents(data.get("available"), previous.available),
        held=_cents(data.get("held"), previous.held),
        low_since=None,
        start_episode=False,
        keep_seconds=BalanceWatch.keep_seconds,
    )
    return True


def _cents(value: object, otherwise: int) -> int:
    # An event without the figure (generation A documents none) keeps the last reading's.
    return value if isinstance(value, int) and not isinstance(value, bool) else otherwise
