"""What the application that wrote a fax can learn of it: its state, by id or by reference.

The final state lives in documented columns of `fax_outbox` (`status`, `completed_at`, `pages`,
`error_code`, `error_message`, plus `status_reason` for our own refusals), and every final
state is also announced with `NOTIFY fax_outbox_final` (payload `{"id", "status",
"reference"}`), so a service in any language can `LISTEN` instead of polling the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from outbox import repository
from outbox.db import as_connection
from outbox.models import TERMINAL_STATUSES, FaxStatus


@dataclass(frozen=True, slots=True)
class FaxState:
    """One fax as the application sees it."""

    id: int
    reference: str
    status: FaxStatus
    status_reason: str | None
    mintfax_fax_id: str | None
    pages: int | None
    error_code: str | None
    error_message: str | None
    submitted_at: datetime | None
    completed_at: datetime | None

    @property
    def final(self) -> bool:
        """Whether the status will never change again."""
        return self.status in TERMINAL_STATUSES


def fax_state(conn_or_session: Connection | Session, fax_id: int) -> FaxState | None:
    """The state of fax `fax_id` (the id `enqueue_fax` returned), or None if there is none."""
    rows = repository.fax_states(as_connection(conn_or_session), fax_id=fax_id)
    return FaxState(**rows[0]) if rows else None


def fax_states_by_reference(
    conn_or_session: Connection | Session, reference: str
) -> list[FaxState]:
    """Every fax enqueued with `reference` (one intent per recipient and document), newest
    first."""
    rows = repository.fax_states(as_connection(conn_or_session), reference=reference)
    return [FaxState(**row) for row in rows]
