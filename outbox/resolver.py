"""Unknown outcomes resolved: a row parked for review because an attempt may have created its
fax is looked up at mintfax before a human has to.

A row in `needs_review` with `outcome_unknown` and no fax id (its attempts ran out on timeouts,
resets or 5xx, or its worker was lost) is looked up in mintfax's list (`GET /fax`, filtered on
the row's idempotency key and recipient; the listing must be read completely):

- **found** (same key, same recipient, created no earlier than the row's first POST allows): the
  row takes the fax id, becomes `submitted`, and what mintfax says of the fax is applied through
  the state-transition function, so it may close as `delivered` or `failed` at once; events that
  waited for that fax id are applied by the database as the id is stored;
- **certainly absent** and mintfax's 24 h idempotency window still open: no attempt created a
  fax, so the row is sent again with the same key (a replay at worst): `pending`, its attempts
  counted afresh, its first POST kept (the window still counts from it);
- otherwise (the window has closed, the listing failed): it stays for a human, and is looked up
  again later, up to `max_lookups` times.

Lookups are reads: they take a token of the fleet throttle (without the pause gate, like polls)
and never run while sends are due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine

from outbox import repository
from outbox.clock import Clock, sql_now
from outbox.errors import MintfaxError
from outbox.reconcile import Reconciler, observation_from_resource, parse_time
from outbox.submit import IDEMPOTENCY_SAFETY_MARGIN, IDEMPOTENCY_WINDOW
from outbox.throttle import FleetThrottle

log = logging.getLogger("faxout.resolver")

# mintfax's clock may run a little behind ours: a fax created up to this long before our
# first POST is still taken for it.
CREATED_AT_SKEW = timedelta(minutes=10)


class FaxFinder(Protocol):
    """What the resolver needs of `outbox.fax_client.MintfaxClient`."""

    def find_faxes(
        self, *, idempotency_key: str | None = None, to: str | None = None, max_pages: int = 50
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class ResolveReport:
    """What one pass did."""

    looked_up: int = 0
    found: int = 0
    resent: int = 0
    left: int = 0


class UnknownOutcomeResolver:
    """Runs one pass per `run_once`; beat calls it every `interval` seconds."""

    interval = 60.0
    batch = 20  # rows per pass
    lookup_backoff = 300.0  # seconds between two lookups of a row that stays
    max_lookups = 12

    def __init__(
        self,
        engine: Engine,
        client: FaxFinder,
        reconciler: Reconciler,
        clock: Clock,
        *,
        throttle: FleetThrottle,
        sends_horizon: float,
    ) -> None:
        self._engine = engine
        self._client = client
        self._reconciler = reconciler
        self._clock = clock
        self._throttle = throttle
        self._sends_horizon = sends_horizon

    def run_once(self) -> ResolveReport:
        """Look up the parked rows that are due."""
        now = sql_now(self._clock)
        with self._engine.begin() as conn:
            if repository.sends_waiting(conn, now=now, horizon=self._sends_horizon):
                return ResolveReport()
            rows = repository.claim_unknown_outcomes(
                conn,
                now=now,
                hold=self.lookup_backoff,
                limit=self.batch,
                max_lookups=self.max_lookups,
            )
        report = ResolveReport()
        for row in rows:
            if not self._throttle.try_acquire().granted:
                break  # the rest waits for its next turn (its claim lapses)
            report = self._resolve(row, report)
        return report

    def _resolve(self, row: repository.UnknownOutcome, report: ResolveReport) -> ResolveReport:
        looked = report.looked_up + 1
        try:
            faxes = self._client.find_faxes(idempotency_key=row.idempotency_key, to=row.to_number)
        except MintfaxError as exc:
            log.warning(
                "fax %s: lookup at mintfax failed (%s); later again",
                row.id,
                exc,
                extra={"action": "resolve.lookup_failed", "fax_id": row.id},
            )
            return replace(report, looked_up=looked, left=report.left + 1)
        match = _match(faxes, row)
        with self._engine.begin() as conn:
            if match is not None:
                repository.lock_fax_events(conn, str(match["id"]))
                observation = observation_from_resource(match)
                attached = repository.attach_found_fax(
                    conn,
                    row.id,
                    mintfax_fax_id=str(match["id"]),
                    submitted_at=_created_at(match),
                )
                if attached and observation is not None:
                    self._reconciler.apply_observation(conn, observation)
                if attached:
                    log.info(
                        "fax %s: found at mintfax as %s",
                        row.id,
                        match["id"],
                        extra={
                            "action": "resolve.found",
                            "fax_id": row.id,
                            "mintfax_fax_id": str(match["id"]),
                        },
                    )
                    return replace(report, looked_up=looked, found=report.found + 1)
                return replace(report, looked_up=looked)
            if (
                not faxes
                and self._window_open(row)
                and repository.resend_unknown(conn, row.id, now=sql_now(self._clock))
            ):
                log.info(
                    "fax %s: mintfax has no such fax; sending again (same key)",
                    row.id,
                    extra={"action": "resolve.resend", "fax_id": row.id},
                )
                return replace(report, looked_up=looked, resent=report.resent + 1)
        return replace(report, looked_up=looked, left=report.left + 1)

    def _window_open(self, row: repository.UnknownOutcome) -> bool:
        if row.first_attempt_at is None:
            return True  # never POSTed: nothing can exist at mintfax
        limit = row.first_attempt_at + IDEMPOTENCY_WINDOW - IDEMPOTENCY_SAFETY_MARGIN
        return row.now < limit


def _match(faxes: list[dict[str, Any]], row: repository.UnknownOutcome) -> dict[str, Any] | None:
    """The one fax that is this row's: same key and recipient, not created before the row's
    first POST could have made it. None when there is none, or more than one (a human looks)."""
    earliest = (row.first_attempt_at or row.now) - CREATED_AT_SKEW
    candidates = [
        fax
        for fax in faxes
        if fax.get("idempotency_key") == row.idempotency_key
        and fax.get("to") == row.to_number
        and isinstance(fax.get("id"), str)
        and (_created_at(fax) or earliest) >= earliest
    ]
    return candidates[0] if len(candidates) == 1 else None


def _created_at(fax: dict[str, Any]) -> datetime | None:
    return parse_time(fax.get("created_at"))
