"""One mechanism for every alert: a row in `alerts`, a log line at ERROR, an optional JSON POST.

An alert is recorded inside the transaction that decided it, under a dedupe key naming its
episode (`fleet_paused:<pause id>`, `fax_failed:fax:<id>`), so one episode alerts once
however many workers see it. Logging and the webhook POST happen after the commit
(`deliver`); alerts whose POST failed are retried by `deliver_pending` on a schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.clock import Clock
from outbox.models import FaxStatus
from outbox.retry import GiveUp

log = logging.getLogger("faxout.alerts")


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must act on."""

    kind: str
    dedupe_key: str
    message: str
    severity: str = "error"
    detail: Mapping[str, Any] = field(default_factory=dict)
    fax_id: int | None = None


# The alert of a fax given up on, by the status it took: (kind, what the message says).
_GIVE_UP_ALERTS: Mapping[FaxStatus, tuple[str, str]] = {
    FaxStatus.FAILED: ("fax_failed", "failed"),
    FaxStatus.NEEDS_REVIEW: ("needs_review", "needs review"),
    FaxStatus.REJECTED: ("fax_rejected", "was rejected"),
}


def give_up_alert(fax_id: int, decision: GiveUp, why: str, error: Mapping[str, Any]) -> Alert:
    """The alert raised when `outbox.retry` gives up on a fax with `alert=True`."""
    kind, what = _GIVE_UP_ALERTS[decision.status]
    return Alert(
        kind=kind,
        dedupe_key=f"{kind}:fax:{fax_id}",
        message=f"fax {fax_id} {what} ({decision.reason}): {why}",
        detail={"reason": decision.reason, "error": dict(error)},
        fax_id=fax_id,
    )


class Alerter:
    """Records alerts in the database and delivers them to the log and the alert webhook."""

    # Seconds between two `deliver_pending` runs (beat): the retry delay of a failed POST.
    retry_interval = 60.0

    def __init__(
        self,
        clock: Clock,
        webhook_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._clock = clock
        self._webhook_url = webhook_url
        self._transport = transport
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Alerter(webhook={'set' if self._webhook_url else 'unset'})"

    def record(self, conn: Connection, alert: Alert, now: datetime | None = None) -> int | None:
        """Store `alert` in the caller's transaction; its id, or None if already raised."""
        return repository.insert_alert(
            conn,
            kind=alert.kind,
            dedupe_key=alert.dedupe_key,
            severity=alert.severity,
            message=alert.message,
            detail=alert.detail,
            fax_id=alert.fax_id,
            now=now or self._clock.now(),
        )

    def deliver(self, engine: Engine, alert_ids: Sequence[int]) -> None:
        """Log and POST freshly committed alerts. Never raises: alerting must not break work."""
        if not alert_ids:
            return
        with engine.connect() as conn:
            rows = repository.alerts_to_notify(conn, ids=alert_ids)
        self._send(engine, rows, log_them=True)

    def deliver_pending(self, engine: Engine) -> int:
        """Retry webhook delivery of alerts that have not reached it yet; returns how many."""
        if not self._webhook_url:
            return 0
        with engine.connect() as conn:
            rows = repository.alerts_to_notify(conn)
        return self._send(engine, rows, log_them=False)

    def _send(self, engine: Engine, rows: Sequence[Mapping[str, Any]], *, log_them: bool) -> int:
        delivered = 0
        for row in rows:
            if log_them:
                log.error(
                    "ALERT %s [%s] %s",
                    row["kind"],
                    row["severity"],
                    row["message"],
                    extra={"alert_id": row["id"], "fax_id": row["fax_id"]},
                )
            if not self._webhook_url:
                continue
            error = self._post(row)
            now = None if error else self._clock.now()
            with engine.begin() as conn:
                repository.mark_alert_notified(conn, row["id"], now=now, error=error)
            delivered += error is None
        return delivered

    def _post(self, row: Mapping[str, Any]) -> str | None:
        assert self._webhook_url is not None
        payload = {
            "id": row["id"],
            "kind": row["kind"],
            "severity": row["severity"],
            "message": row["message"],
            "detail": row["detail"],
            "fax_id": row["fax_id"],
            "created_at": row["created_at"].isoformat(),
        }
        try:
            with httpx.Client(transport=self._transport, timeout=self._timeout) as client:
                response = client.post(self._webhook_url, json=payload)
            if response.is_success:
                return None
            return f"alert webhook answered {response.status_code}"
        except httpx.HTTPError as exc:
            log.warning("alert webhook unreachable: %s", type(exc).__name__)
            return f"alert webhook unreachable: {type(exc).__name__}"
