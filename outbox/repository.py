"""Every SQL statement fax-outbox runs against `fax_outbox` and its companions lives here.

Functions take a `Connection` already inside the caller's transaction and never commit. Time is
passed in as `now` (the injected clock), not taken from the database, so tests control it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert

from outbox.models import FaxStatus, fax_outbox


@dataclass(frozen=True, slots=True)
class StoredIntent:
    """The identity of a stored fax: what an idempotency key must keep meaning."""

    id: int
    idempotency_key: str
    to_number: str
    document_sha256: str
    reference: str


def insert_intents(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Insert rows, skipping keys that exist; returns {idempotency_key: id} of new rows.

    `ON CONFLICT DO NOTHING` waits for a concurrent inserter of the same key to finish, so two
    racing transactions end with one row, and the loser can then read the winner's row.
    """
    if not rows:
        return {}
    statement = (
        insert(fax_outbox)
        .on_conflict_do_nothing(index_elements=[fax_outbox.c.idempotency_key])
        .returning(fax_outbox.c.idempotency_key, fax_outbox.c.id)
    )
    if len(rows) == 1:
        result = conn.execute(statement.values(**rows[0]))
    else:
        result = conn.execute(statement, list(rows))
    return {key: row_id for key, row_id in result.tuples()}


def intents_by_key(conn: Connection, keys: Iterable[str]) -> dict[str, StoredIntent]:
    """Stored intents for these idempotency keys."""
    wanted = list(keys)
    if not wanted:
        return {}
    c = fax_outbox.c
    result = conn.execute(
        select(c.id, c.idempotency_key, c.to_number, c.document_sha256, c.reference).where(
            c.idempotency_key.in_(wanted)
        )
    )
    return {row.idempotency_key: StoredIntent(*row) for row in result}


def count_by_status(conn: Connection) -> dict[FaxStatus, int]:
    """How many rows are in each status (every status present, zeros included)."""
    counts = dict.fromkeys(FaxStatus, 0)
    result = conn.execute(
        select(fax_outbox.c.status, func.count()).group_by(fax_outbox.c.status)
    )
    for status, count in result.tuples():
        counts[FaxStatus(status)] = count
    return counts
