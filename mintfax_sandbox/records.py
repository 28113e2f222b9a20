"""What the simulator keeps: fax requests and records, webhook endpoints, and its counters.

Plain data with the JSON shapes the API and the control plane show; the behaviour lives in
`state.Sandbox`, `ledger` and `idempotency`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mintfax_sandbox.clock import iso

# The generation-A event types, in the order of `POST /v1/account/webhooks`'s enum.
EVENTS = (
    "fax.queued",
    "fax.sending",
    "fax.retry_scheduled",
    "fax.delivered",
    "fax.failed",
    "balance.low",
    "balance.topup",
)


@dataclass(frozen=True, slots=True)
class FaxRequest:
    """A valid `POST /v1/fax`: what is to be sent, and the idempotency key it came with."""

    to: str
    retries: int
    webhook_url: str | None
    key: str | None
    document: bytes = field(repr=False)
    file_type: str

    def fingerprint(self) -> bytes:
        """What "the same request body" means for the key: recipient, retries, URL, file."""
        digest = hashlib.sha256()
        for part in (self.to, str(self.retries), self.webhook_url or ""):
            digest.update(part.encode())
            digest.update(b"\x00")
        digest.update(self.document)
        return digest.digest()


@dataclass(slots=True)
class Fax:
    """One fax record, as `GET /v1/fax/{id}` shows it (plus what the simulator needs)."""

    id: str
    to: str
    idempotency_key: str | None
    retries: int
    webhook_url: str | None
    file_type: str
    file_size: int
    created_at: datetime
    hold: int
    submissions: int = 1
    status: str = "queued"
    retries_remaining: int = 0
    pages: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    charged: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # Set by `DELETE /v1/fax/{id}`: the document, image, recipient and details are gone.
    deleted_at: datetime | None = None

    def receipt(self) -> dict[str, Any]:
        """The 201 body of the submission that created it (replays answer the same)."""
        return {
            "id": self.id,
            "status": "queued",
            "to": self.to,
            "created_at": iso(self.created_at),
        }

    def as_api(self) -> dict[str, Any]:
        """The generation-A fax resource (after a deletion: only id, status and timestamps)."""
        if self.deleted_at is not None:
            return {
                "id": self.id,
                "status": self.status,
                "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at or self.created_at),
                "completed_at": iso(self.completed_at),
                "deleted_at": iso(self.deleted_at),
            }
        return {
            "id": self.id,
            "status": self.status,
            "to": self.to,
            "retries_remaining": self.retries_remaining,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at or self.created_at),
            "pages": self.pages,
            "carrier": "sandbox",
            "carrier_id": f"sbx_{self.id[:8]}" if self.submitted_at else None,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "webhook_url": self.webhook_url,
            "idempotency_key": self.idempotency_key,
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.completed_at),
            "attempts": list(self.attempts),
        }

    def event_data(self) -> dict[str, Any]:
        """`data` of a `fax.*` webhook event."""
        return {
            "id": self.id,
            "status": self.status,
            "to": self.to,
            "pages": self.pages,
            "retries_remaining": self.retries_remaining,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.completed_at),
        }

    def as_inspection(self) -> dict[str, Any]:
        """What `GET /sandbox/faxes` shows: enough to assert exactly-once from outside."""
        return {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "to": self.to,
            "status": self.status,
            "pages": self.pages,
            "submissions": self.submissions,
            "retries": self.retries,
            "attempts": len(self.attempts),
            "error_code": self.error_code,
            "charged": self.charged,
            "created_at": iso(self.created_at),
            "completed_at": iso(self.completed_at),
            "deleted": self.deleted_at is not None,
        }


@dataclass(slots=True)
class WebhookEndpoint:
    """A registered endpoint (`POST /v1/account/webhooks`)."""

    id: str
    url: str
    events: list[str] | None
    description: str | None
    secret: str = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    is_active: bool = True

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.created_at),
            "events": self.events,
            "description": self.description,
        }

    def wants(self, event: str) -> bool:
        return self.is_active and (self.events is None or event in self.events)


@dataclass(slots=True)
class Stats:
    """Counters for `GET /sandbox/stats`."""

    requests_by_status: Counter[str] = field(default_factory=Counter)
    requests_by_path: Counter[str] = field(default_factory=Counter)
    faxes_created: int = 0
    duplicate_creations: int = 0
    same_content_creations: int = 0
    idempotent_replays: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0
    faxes_deleted: int = 0
    # 429 bursts (`burst_429` fault) begun, and the requests they refused.
    rate_limit_bursts: int = 0
    rate_limit_bursts_refused: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests_total": sum(self.requests_by_status.values()),
            "requests_by_status": dict(self.requests_by_status),
            "requests_by_path": dict(self.requests_by_path),
            "faxes_created": self.faxes_created,
            "duplicate_creations": self.duplicate_creations,
            "same_content_creations": self.same_content_creations,
            "idempotent_replays": self.idempotent_replays,
            "webhooks_delivered": self.webhooks_delivered,
            "webhooks_failed": self.webhooks_failed,
            "faxes_deleted": self.faxes_deleted,
            "rate_limit_bursts": self.rate_limit_bursts,
            "rate_limit_bursts_refused": self.rate_limit_bursts_refused,
        }
