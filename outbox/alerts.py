"""One mechanism for every alert: a row in `alerts`, a log line at ERROR, an optional JSON POST.

An alert is recorded inside the transaction that decided it, under a dedupe key naming its
episode (`fleet_paused:<pause id>`, `fax_failed:fax:<id>`, `needs_review:fax:<id>:<n>` for the
n-th time the row was parked), so one episode alerts once however many workers see it.
Logging and the webhook POST happen after the commit (`deliver`); alerts whose POST failed are
retried by `deliver_pending` on a schedule, backed off exponentially per alert. Each POST is
made under a claim on the alert row, so two processes delivering at once (the worker that
raised it and beat's retry, or two beats) POST it once.
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
    # The episode is the fax's current stay in needs_review, which an operator can end (back to
    # pending) and the fleet can begin again: `record` appends the row's review count, read in
    # the transaction that parked it, to `dedupe_key`.
    per_review_episode: bool = False


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
        per_review_episode=decision.status is FaxStatus.NEEDS_REVIEW,
    )


def delivery_backoff(failed_tries: int, *, base: float = 60.0, cap: float = 3600.0) -> float:
    """Seconds before an alert whose webhook POST failed `failed_tries` times is tried again.

    Doubles from `base` up to `cap`: a webhook that is down for hours is asked about once an
    hour per alert, not once a minute, and recovers within the hour once it is back.
    """
    return min(cap, base * 2.0 ** min(max(failed_tries - 1, 0), 32))


class Alerter:
    """Records alerts in the database and delivers them to the log and the alert webhook."""

    # Seconds between two `deliver_pending` runs (beat): the shortest retry delay of a POST.
    retry_interval = 60.0
    # Alerts claimed per statement; the claim lasts long enough for all of them to time out.
    claim_batch = 10

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
        dedupe_key = alert.dedupe_key
        if alert.per_review_episode and alert.fax_id is not None:
            dedupe_key += f":{repository.review_count(conn, alert.fax_id)}"
        return repository.insert_alert(
            conn,
            kind=alert.kind,
            dedupe_key=dedupe_key,
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
        for row in rows:
            log.error(
                "ALERT %s [%s] %s",
                row["kind"],
                row["severity"],
                row["message"],
                extra={
                    "action": "alert.raised",
                    "alert_id": row["id"],
                    "alert_kind": row["kind"],
                    "fax_id": row["fax_id"],
                },
            )
        if self._webhook_url:
            self._send_claimed(engine, ids=alert_ids)

    def deliver_pending(self, engine: Engine) -> int:
        """Retry webhook delivery of alerts whose backoff has passed; returns how many arrived."""
        if not self._webhook_url:
            return 0
        return self._send_claimed(engine, ids=None)

    def _send_claimed(self, engine: Engine, *, ids: Sequence[int] | None) -> int:
        # Each row is POSTed only under this process's claim on it; what another process holds
        # (or has delivered, or has backed off) is skipped.
        delivered = 0
        # A POST can take a timeout per phase (connect, write, read, pool).
        claim_seconds = self.claim_batch * 4 * self._timeout + 30
        while True:
            with engine.begin() as conn:
                rows = repository.claim_alerts_for_delivery(
                    conn, ids=ids, limit=self.claim_batch, claim_seconds=claim_seconds
                )
            for row in rows:
                error = self._post(row)
                retry_after = None if error is None else self._backoff(row)
                with engine.begin() as conn:
                    repository.finish_alert_delivery(
                        conn, row["id"], now=self._clock.now(), error=error, retry_after=retry_after
                    )
                delivered += error is None
            if len(rows) < self.claim_batch:
                return delivered

    def _backoff(self, row: Mapping[str, Any]) -> float:
        return delivery_backoff(row["delivery_attempts"] + 1, base=self.retry_interval)

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
            log.warning(
                "alert webhook unreachable: %s",
                type(exc).__name__,
                extra={"action": "alert.delivery_failed"},
            )
            return f"alert webhook unreachable: {type(exc).__name__}"
