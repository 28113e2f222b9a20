"""The lease rescuer: rows whose worker died mid-send go back to `pending` (invariant 3).

A worker that crashes, is SIGKILLed or loses its host leaves its row in `sending` with a lease
that stops being renewed. Once the lease expires the rescuer returns the row to `pending`, with
the same idempotency key, so the next submission is a replay at mintfax if the first one got
through. Each rescue counts as an attempt of unknown outcome; a row that runs out of attempts
this way is given up on as `outbox.retry` decides for a `LeaseExpired` (today: `needs_review`
with an alert), never resent blindly.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from outbox import repository
from outbox.alerts import Alerter, give_up_alert
from outbox.clock import Clock, sql_now
from outbox.errors import LeaseExpired
from outbox.models import FaxStatus
from outbox.retry import attempts_exhausted

log = logging.getLogger("faxout.rescuer")

_LOST = LeaseExpired("the worker lost its lease; the outcome of the attempt is unknown")


class LeaseRescuer:
    """Runs one rescue pass per `run_once`; beat calls it every `interval` seconds."""

    interval = 5.0  # seconds
    batch_size = 500  # rows per transaction

    def __init__(
        self, engine: Engine, alerter: Alerter, clock: Clock, *, max_attempts: int
    ) -> None:
        self._engine = engine
        self._alerter = alerter
        self._clock = clock
        self._max_attempts = max_attempts

    def run_once(self) -> int:
        """Rescue every row whose lease has expired; returns how many."""
        out_of_attempts = attempts_exhausted(_LOST)
        rescued_total = 0
        while True:
            alert_ids: list[int] = []
            with self._engine.begin() as conn:
                rescued = repository.rescue_expired_leases(
                    conn,
                    now=sql_now(self._clock),
                    max_attempts=self._max_attempts,
                    exhausted_status=out_of_attempts.status,
                    exhausted_reason=out_of_attempts.reason,
                    limit=self.batch_size,
                )
                for fax_id, status, attempts in rescued:
                    if status is FaxStatus.PENDING or not out_of_attempts.alert:
                        continue
                    alert = give_up_alert(
                        fax_id,
                        out_of_attempts,
                        f"{attempts} attempts ended without a known outcome (worker lost); "
                        "check mintfax before resending",
                        _LOST.envelope(),
                    )
                    alert_id = self._alerter.record(conn, alert)
                    alert_ids += [alert_id] if alert_id else []
            self._alerter.deliver(self._engine, alert_ids)
            rescued_total += len(rescued)
            if rescued:
                log.warning(
                    "rescued %d row(s) with expired leases",
                    len(rescued),
                    extra={"action": "rescue.rescued", "rescued": len(rescued)},
                )
            if len(rescued) < self.batch_size:
                return rescued_total
