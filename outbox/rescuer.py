"""The lease rescuer: rows whose worker died mid-send go back to `pending` (invariant 3).

A worker that crashes, is SIGKILLed or loses its host leaves its row in `sending` with a lease
that stops being renewed. Once the lease expires the rescuer returns the row to `pending`, with
the same idempotency key, so the next submission is a replay at mintfax if the first one got
through. Each rescue counts as an attempt of unknown outcome; a row that runs out of attempts
this way goes to `needs_review` with an alert, never to a blind resend.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from outbox import repository
from outbox.alerts import Alert, Alerter
from outbox.clock import Clock
from outbox.models import FaxStatus

log = logging.getLogger("faxout.rescuer")

RESCUE_INTERVAL_SECONDS = 5.0


class LeaseRescuer:
    """Runs one rescue pass per `run_once`; beat calls it every `interval` seconds."""

    interval = RESCUE_INTERVAL_SECONDS

    def __init__(
        self, engine: Engine, alerter: Alerter, clock: Clock, *, max_attempts: int
    ) -> None:
        self._engine = engine
        self._alerter = alerter
        self._clock = clock
        self._max_attempts = max_attempts

    def run_once(self) -> int:
        """Rescue every row whose lease has expired; returns how many."""
        rescued_total = 0
        while True:
            alert_ids: list[int] = []
            with self._engine.begin() as conn:
                rescued = repository.rescue_expired_leases(
                    conn, now=self._clock.now(), max_attempts=self._max_attempts
                )
                for fax_id, status, attempts in rescued:
                    if status != FaxStatus.NEEDS_REVIEW:
                        continue
                    alert_id = self._alerter.record(
                        conn,
                        Alert(
                            kind="needs_review",
                            dedupe_key=f"needs_review:fax:{fax_id}",
                            message=(
                                f"fax {fax_id}: {attempts} attempts ended without a known "
                                "outcome (worker lost); check mintfax before resending"
                            ),
                            fax_id=fax_id,
                        ),
                    )
                    alert_ids += [alert_id] if alert_id else []
            self._alerter.deliver(self._engine, alert_ids)
            rescued_total += len(rescued)
            if rescued:
                log.warning("rescued %d row(s) with expired leases", len(rescued))
            if len(rescued) < 500:
                return rescued_total
