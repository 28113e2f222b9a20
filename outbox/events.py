"""What mintfax tells us about a fax after it accepted it, whichever way we heard it.

A `FaxEvent` is one verified webhook event (generation A `{event_id, event, timestamp, data}`
or generation B `{id, type, created, data: {object}}`, both read into the same shape). A
`FaxObservation` is what one event or one status poll says about one fax: the one input of the
state-transition function (`outbox.reconcile`), so webhooks, polls and operator actions follow
the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# mintfax's statuses and their order (queued < submitted < sending = in_progress < delivered |
# failed) have one definition: the database's `mintfax_status_rank` (migration 0008), which the
# state-transition function uses; an unknown status is 'ignored' there.
FAX_EVENTS = frozenset(
    {"fax.queued", "fax.submitted", "fax.sending", "fax.retry_scheduled", "fax.delivered",
     "fax.failed"}
)  # fmt: skip


# mintfax's go-live checklist: without these the outbox never learns final states or balance
# (`faxout webhooks register` insists on them, `faxout preflight` checks them).
REQUIRED_WEBHOOK_EVENTS = ("fax.delivered", "fax.failed", "balance.low")


@dataclass(frozen=True, slots=True)
class FaxEvent:
    """One webhook event, verified and parsed; `payload` is the whole envelope as received."""

    event_id: str
    event_type: str
    occurred_at: datetime
    data: Mapping[str, Any]
    payload: Mapping[str, Any] = field(repr=False)

    @property
    def mintfax_fax_id(self) -> str | None:
        """The fax the event is about (None for balance events)."""
        value = self.data.get("id")
        return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class FaxObservation:
    """What mintfax said about one fax at `observed_at` (its own clock when it gave one)."""

    mintfax_fax_id: str
    status: str
    observed_at: datetime
    pages: int | None = None
    attempt: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None
