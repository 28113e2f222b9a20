"""Every SQL statement fax-outbox runs against `fax_outbox` and its companions lives here.

Functions take a `Connection` already inside the caller's transaction and never commit. Time
is the database's: every `now` parameter is `coalesce(:now, now())`, so production passes None
(`outbox.clock.sql_now` of a `DatabaseClock`) and no host's clock decides a lease, a rescue, a
dispatch or the 24 h guard; tests pass their own moment and control it (invariant 3).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

import psycopg
import sqlalchemy.exc
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from sqlalchemy import (
    Connection,
    Update,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.sql.dml import ReturningInsert

from outbox.events import FaxEvent, FaxObservation
from outbox.models import FaxStatus, alerts, fax_attempts, fax_outbox, fleet_pauses

_PSYCOPG_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class StoredIntent:
    """The identity of a stored fax: what an idempotency key must keep meaning."""

    id: int
    idempotency_key: str
    to_number: str
    document_sha256: str
    reference: str


# Built once: constructing an INSERT per call costs more than the round trip it makes.
_INSERT_INTENT = (
    insert(fax_outbox)
    .on_conflict_do_nothing(index_elements=[fax_outbox.c.idempotency_key])
    .returning(fax_outbox.c.idempotency_key, fax_outbox.c.id)
)
# The same statement for psycopg's own cursor (see `_insert_intents_psycopg`).
_INSERT_INTENT_SQL = """
    INSERT INTO fax_outbox (idempotency_key, to_number, document, document_sha256, filename,
                            reference, retries, metadata)
    VALUES (%(idempotency_key)s, %(to_number)s, %(document)s, %(document_sha256)s, %(filename)s,
            %(reference)s, %(retries)s, %(metadata)s)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key, id
"""


def insert_intents(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Insert rows, skipping keys that exist; returns {idempotency_key: id} of new rows.

    `ON CONFLICT DO NOTHING` waits for a concurrent inserter of the same key to finish, so two
    racing transactions end with one row, and the loser can then read the winner's row.
    """
    if not rows:
        return {}
    driver_connection = _psycopg_of(conn)
    if driver_connection is not None:
        return _insert_intents_psycopg(conn, driver_connection, rows)
    result = conn.execute(_INSERT_INTENT, rows[0] if len(rows) == 1 else list(rows))
    return {key: row_id for key, row_id in result}


def _insert_intents_psycopg(
    conn: Connection,
    driver_connection: psycopg.Connection[Any],
    rows: Sequence[Mapping[str, Any]],
) -> dict[str, int]:
    # The hot path of enqueue, measured in bench/enqueue.py: SQLAlchemy's per-statement work
    # costs about as much as the INSERT itself, and its multi-row VALUES form is far slower
    # than psycopg's executemany, which pipelines the rows (no round trip each) and keeps each
    # row's RETURNING. The statement runs on the DBAPI connection of `conn`, inside the
    # transaction `conn` holds (begun here if the caller's connection has not begun one yet).
    if not conn.in_transaction():
        conn.begin()
    params = [{**row, "metadata": Jsonb(row["metadata"])} for row in rows]
    created: dict[str, int] = {}
    # Tuples whatever row factory the application configured on its connections.
    cursor = driver_connection.cursor(row_factory=tuple_row)
    try:
        if len(params) == 1:
            cursor.execute(_INSERT_INTENT_SQL, params[0])
            created.update((key, row_id) for key, row_id in cursor.fetchall())
        else:
            cursor.executemany(_INSERT_INTENT_SQL, params, returning=True)
            while True:
                created.update((key, row_id) for key, row_id in cursor.fetchall())
                if not cursor.nextset():
                    break
    except psycopg.Error as exc:
        raise _translated(conn, driver_connection, _INSERT_INTENT_SQL, exc) from exc
    finally:
        cursor.close()
    return created


def _translated(
    conn: Connection, driver_connection: psycopg.Connection[Any], sql: str, exc: psycopg.Error
) -> sqlalchemy.exc.StatementError:
    """A psycopg error as SQLAlchemy would have raised it from conn.execute()."""
    # Callers catch SQLAlchemy's exceptions whichever path ran.
    lost = driver_connection.broken or driver_connection.closed
    if lost:  # as SQLAlchemy would: never hand this connection out again
        conn.invalidate(exc)
    return sqlalchemy.exc.DBAPIError.instance(
        sql, None, exc, psycopg.Error, connection_invalidated=lost, dialect=conn.dialect
    )


def _psycopg_of(conn: Connection) -> psycopg.Connection[Any] | None:
    """The psycopg connection under `conn`, when that is what it is."""
    if conn.dialect.driver == "psycopg":
        driver_connection = conn.connection.driver_connection
        if isinstance(driver_connection, psycopg.Connection):
            return driver_connection
    return None


@functools.cache
def _raw_statement(statement: Any) -> tuple[str, frozenset[str]]:
    """A statement's SQL for psycopg, and which of its parameters are JSONB."""
    compiled = statement.compile(dialect=_PSYCOPG_DIALECT)
    jsonb = frozenset(name for name, bind in compiled.binds.items() if isinstance(bind.type, JSONB))
    return str(compiled), jsonb


def _execute_hot(conn: Connection, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run one of the submit path's statements and return its rows.

    On psycopg it runs on the DBAPI connection, inside whatever transaction `conn` holds:
    SQLAlchemy's per-statement work cost more CPU than the statement itself (0.23 vs 0.09 ms
    for the claim, bench/drain.py's CPU per fax). Elsewhere it goes through SQLAlchemy.
    """
    driver_connection = _psycopg_of(conn)
    if driver_connection is None:
        return [tuple(row) for row in conn.execute(statement, params)]
    sql, jsonb = _raw_statement(statement)
    values = {
        name: Jsonb(value)
        if name in jsonb and value is not None
        else value.value
        if isinstance(value, Enum)
        else value
        for name, value in params.items()
    }
    cursor = driver_connection.cursor(row_factory=tuple_row)
    try:
        cursor.execute(sql, values)
        return cursor.fetchall() if cursor.description else []
    except psycopg.Error as exc:
        raise _translated(conn, driver_connection, sql, exc) from exc
    finally:
        cursor.close()


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


def count_by_status(
    conn: Connection, *, reference_prefix: str | None = None
) -> dict[FaxStatus, int]:
    """How many rows are in each status (every status present, zeros included).

    `reference_prefix` restricts the count to rows whose reference starts with it.
    """
    counts = dict.fromkeys(FaxStatus, 0)
    statement = select(fax_outbox.c.status, func.count()).group_by(fax_outbox.c.status)
    if reference_prefix is not None:
        statement = statement.where(fax_outbox.c.reference.startswith(reference_prefix))
    result = conn.execute(statement)
    for status, count in result:
        counts[FaxStatus(status)] = count
    return counts


# --- delivery -------------------------------------------------------------------------------

_DISPATCH_DUE = text(
    """
    WITH due AS (
        SELECT id FROM fax_outbox
        WHERE status = 'pending' AND next_attempt_at <= coalesce(CAST(:now AS timestamptz), now())
          AND NOT EXISTS (SELECT 1 FROM fleet_pauses WHERE ended_at IS NULL)
        ORDER BY next_attempt_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE fax_outbox AS f
    SET dispatched_at = coalesce(CAST(:now AS timestamptz), now()),
        next_attempt_at = coalesce(CAST(:now AS timestamptz), now())
                          + make_interval(secs => :redispatch_after)
    FROM due
    WHERE f.id = due.id
    RETURNING f.id
    """
)

_CLAIM_FOR_SUBMIT = text(
    """
    UPDATE fax_outbox
    SET status = 'sending',
        lease_owner = :owner,
        lease_token = gen_random_uuid(),
        lease_expires_at = coalesce(CAST(:now AS timestamptz), now())
                           + make_interval(secs => :lease_seconds),
        dispatched_at = NULL
    WHERE id = :id
      AND status = 'pending'
      AND dispatched_at IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM fleet_pauses WHERE ended_at IS NULL)
    RETURNING id, idempotency_key, to_number, document, filename, retries, attempts,
              first_attempt_at, lease_token, coalesce(CAST(:now AS timestamptz), now()),
              outcome_unknown
    """
)

# Just before the POST: is the lease still this claim's, with more than :need seconds left on
# the database's clock? If so the POST is about to happen, and the 24 h idempotency guard
# starts counting now (the first POST, not the first claim).
_BEGIN_POST = text(
    """
    UPDATE fax_outbox
    SET first_attempt_at = CASE
            WHEN lease_expires_at > coalesce(CAST(:now AS timestamptz), now())
                                    + make_interval(secs => :need)
            THEN coalesce(first_attempt_at, coalesce(CAST(:now AS timestamptz), now()))
            ELSE first_attempt_at END
    WHERE id = :id AND status = 'sending' AND lease_token = :token
    RETURNING lease_expires_at > coalesce(CAST(:now AS timestamptz), now())
                                 + make_interval(secs => :need)
    """
)

# A 201 that came back on a lost lease, applied to its row if nobody holds it and it is
# still waiting in `pending` (the rescuer gave it back): it is submitted. The row passes
# through `sending` under a lease of its own, as every submission does (the status diagram),
# in one statement. The attempt that the rescue counted was this one: `attempts` catches up.
_ADOPT_ACCEPTANCE = text(
    """
    WITH taken AS (
        UPDATE fax_outbox
        SET status = 'sending',
            lease_owner = :owner,
            lease_token = gen_random_uuid(),
            lease_expires_at = coalesce(CAST(:now AS timestamptz), now()) + interval '1 minute',
            dispatched_at = NULL
        WHERE id = :id AND status = 'pending' AND lease_token IS NULL
        RETURNING id, lease_token
    )
    SELECT id, lease_token FROM taken
    """
)
_ADOPTED = text(
    """
    UPDATE fax_outbox
    SET status = 'submitted',
        mintfax_fax_id = :fax_id,
        mintfax_status = :mintfax_status,
        submitted_at = coalesce(CAST(:now AS timestamptz), now()),
        attempts = greatest(attempts, :attempts),
        last_error = NULL,
        status_reason = NULL,
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE id = :id AND status = 'sending' AND lease_token = :token
    RETURNING id
    """
)

_RESCUE_EXPIRED = text(
    """
    WITH expired AS (
        SELECT id FROM fax_outbox
        WHERE status = 'sending' AND lease_expires_at < coalesce(CAST(:now AS timestamptz), now())
        ORDER BY lease_expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE fax_outbox AS f
    SET status = CASE WHEN f.attempts + 1 >= :max_attempts
                      THEN CAST(:exhausted_status AS fax_status) ELSE 'pending'::fax_status END,
        status_reason = CASE WHEN f.attempts + 1 >= :max_attempts
                             THEN :exhausted_reason ELSE f.status_reason END,
        attempts = f.attempts + 1,
        outcome_unknown = true,
        next_attempt_at = coalesce(CAST(:now AS timestamptz), now()),
        last_error = jsonb_build_object(
            'kind', 'LeaseExpired', 'lease_owner', f.lease_owner,
            'message', 'worker lost its lease; outcome of the attempt unknown'),
        lease_owner = NULL,
        lease_expires_at = NULL,
        lease_token = NULL
    FROM expired
    WHERE f.id = expired.id
    RETURNING f.id, f.status, f.attempts
    """
)


_NO_TOKEN = uuid.UUID(int=0)  # what no claim ever holds (a ClaimedFax built by hand)


@dataclass(frozen=True, slots=True)
class ClaimedFax:
    """A row this worker holds the lease on, with what it needs to submit it."""

    id: int
    idempotency_key: str
    to_number: str
    document: bytes
    filename: str
    retries: int
    attempts: int
    # None until the row's first POST (set by `begin_post`).
    first_attempt_at: datetime | None
    # The fencing token of this claim: every later write of it is guarded by the token.
    lease_token: uuid.UUID = _NO_TOKEN
    # The database's clock at the claim (the lease runs `lease_seconds` from here).
    claimed_at: datetime | None = None
    # An earlier attempt may have created the fax (it must not end in `failed`).
    outcome_unknown: bool = False


def dispatch_due(
    conn: Connection, *, now: datetime | None, limit: int, redispatch_after: float
) -> list[int]:
    """Mark up to `limit` due rows as dispatched and return their ids, oldest due first.

    A dispatched row is pushed `redispatch_after` seconds into the future: if its message is
    lost, it becomes due again then and is published once more. `now` None: the database's.
    """
    rows = _execute_hot(
        conn, _DISPATCH_DUE, {"now": now, "limit": limit, "redispatch_after": redispatch_after}
    )
    return [row_id for (row_id,) in rows]


def claim_for_submit(
    conn: Connection, fax_id: int, *, owner: str, now: datetime | None, lease_seconds: float
) -> ClaimedFax | None:
    """Take the lease on a dispatched pending row, unless the fleet is paused.

    The lease carries a new fencing token; `owner` is only shown. None when the row is not
    claimable (already claimed through a duplicate message, finished, rescheduled, or the
    fleet is paused): the caller then does nothing.
    """
    rows = _execute_hot(
        conn,
        _CLAIM_FOR_SUBMIT,
        {"id": fax_id, "owner": owner, "now": now, "lease_seconds": lease_seconds},
    )
    if not rows:
        return None
    (
        row_id,
        key,
        to_number,
        document,
        filename,
        retries,
        attempts,
        first_attempt_at,
        token,
        claimed_at,
        outcome_unknown,
    ) = rows[0]
    return ClaimedFax(
        id=row_id,
        idempotency_key=key,
        to_number=to_number,
        document=bytes(document),
        filename=filename,
        retries=retries,
        attempts=attempts,
        first_attempt_at=first_attempt_at,
        lease_token=token,
        claimed_at=claimed_at,
        outcome_unknown=outcome_unknown,
    )


def begin_post(
    conn: Connection, fax_id: int, *, token: uuid.UUID, now: datetime | None, need: float
) -> bool | None:
    """The check just before a POST: None if the lease of `token` is lost; False if it is held
    with no more than `need` seconds left (too little for the request); True if the POST may
    go ahead, which starts the row's 24 h idempotency window if this is its first POST."""
    rows = _execute_hot(conn, _BEGIN_POST, {"id": fax_id, "token": token, "now": now, "need": need})
    return bool(rows[0][0]) if rows else None


def adopt_acceptance(
    conn: Connection,
    fax_id: int,
    *,
    mintfax_fax_id: str,
    mintfax_status: str | None,
    attempts: int,
    owner: str,
    now: datetime | None,
) -> bool:
    """Record a 201 that came back on a lost lease, if its row waits unleased in `pending`
    (claimed, then submitted, in the caller's transaction)."""
    taken = conn.execute(_ADOPT_ACCEPTANCE, {"id": fax_id, "owner": owner, "now": now}).all()
    if not taken:
        return False
    [(_, token)] = taken
    adopted = conn.execute(
        _ADOPTED,
        {
            "id": fax_id,
            "token": token,
            "fax_id": mintfax_fax_id,
            "mintfax_status": mintfax_status,
            "attempts": attempts,
            "now": now,
        },
    ).all()
    return bool(adopted)


def log_attempt(conn: Connection, fax_id: int, attempt: Mapping[str, Any]) -> None:
    """Log an attempt whatever the row's lease (the POST of a lost lease: `lease_lost`)."""
    conn.execute(
        insert(fax_attempts).values(
            fax_id=fax_id, **{name: attempt.get(name) for name in _ATTEMPT_COLUMNS}, lease_lost=True
        )
    )


def update_claimed(
    conn: Connection, fax_id: int, *, token: uuid.UUID, values: Mapping[str, Any]
) -> bool:
    """Apply `values` to a row only while the claim of `token` holds its lease; False if lost.

    Leaving `sending` clears the lease columns, as the lease_iff_sending constraint requires.
    """
    columns, params = _lease_guarded(fax_id, token, values)
    result = conn.execute(_update_claimed_statement(columns), params)
    return result.rowcount == 1


def _lease_guarded(
    fax_id: int, token: uuid.UUID, values: Mapping[str, Any]
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Columns and parameters of a lease-guarded update of `values`.

    Leaving `sending` clears the lease columns, as the lease_iff_sending constraint requires.
    """
    changes = dict(values)
    if changes.get("status", FaxStatus.SENDING) != FaxStatus.SENDING:
        changes.setdefault("lease_owner", None)
        changes.setdefault("lease_expires_at", None)
        changes.setdefault("lease_token", None)
    params = {f"new_{name}": value for name, value in changes.items()}
    params.update(lease_fax_id=fax_id, lease_holder=token)
    return tuple(sorted(changes)), params


@functools.cache
def _update_claimed_statement(columns: tuple[str, ...]) -> Update:
    # One statement object per set of columns, built once: building `update().values(...)`
    # and its cache key on every call cost as much CPU as running it (bench/drain.py).
    c = fax_outbox.c
    return (
        update(fax_outbox)
        .where(
            c.id == bindparam("lease_fax_id"),
            # A literal, not a bound value: every parameter of these statements is named.
            c.status == literal_column("'sending'"),
            c.lease_token == bindparam("lease_holder", type_=c.lease_token.type),
        )
        .values({name: bindparam(f"new_{name}", type_=c[name].type) for name in columns})
    )


_ATTEMPT_COLUMNS = (
    "attempt",
    "worker",
    "started_at",
    "finished_at",
    "duration_ms",
    "outcome",
    "http_status",
    "error",
    "request_id",
    "mintfax_fax_id",
)


def finish_claimed(
    conn: Connection,
    fax_id: int,
    *,
    token: uuid.UUID,
    values: Mapping[str, Any],
    attempt: Mapping[str, Any],
) -> bool:
    """Apply `values` while the claim of `token` holds the lease and log the attempt, in one
    statement (one round trip, atomic even in autocommit): the attempt is logged only if the
    lease was still held. False if it was lost (then see `log_attempt`).
    """
    columns, params = _lease_guarded(fax_id, token, values)
    params.update({f"attempt_{name}": attempt.get(name) for name in _ATTEMPT_COLUMNS})
    return bool(_execute_hot(conn, _finish_statement(columns), params))


@functools.cache
def _finish_statement(columns: tuple[str, ...]) -> ReturningInsert[Any]:
    updated = _update_claimed_statement(columns).returning(fax_outbox.c.id).cte("updated")
    a = fax_attempts.c
    # Casts, because Postgres does not infer parameter types from INSERT ... SELECT targets.
    attempt_values = [
        cast(bindparam(f"attempt_{name}", type_=a[name].type), a[name].type)
        for name in _ATTEMPT_COLUMNS
    ]
    return (
        insert(fax_attempts)
        .from_select(["fax_id", *_ATTEMPT_COLUMNS], select(updated.c.id, *attempt_values))
        .returning(fax_attempts.c.fax_id)
    )


def rescue_expired_leases(
    conn: Connection,
    *,
    now: datetime | None,
    max_attempts: int,
    exhausted_status: FaxStatus,
    exhausted_reason: str,
    limit: int,
) -> list[tuple[int, FaxStatus, int]]:
    """Return up to `limit` rows whose worker vanished to `pending` (same key: a resend is a
    replay), oldest lease first.

    Each rescue counts as an attempt of unknown outcome; when that exhausts the attempts the
    row takes `exhausted_status` and `exhausted_reason` instead (what `outbox.retry` decides for
    a lost lease). Returns (id, new status, attempts) per rescued row.
    """
    result = conn.execute(
        _RESCUE_EXPIRED,
        {
            "now": now,
            "max_attempts": max_attempts,
            "exhausted_status": exhausted_status.value,
            "exhausted_reason": exhausted_reason,
            "limit": limit,
        },
    )
    return [(row_id, FaxStatus(status), attempts) for row_id, status, attempts in result]


def redispatch_waiting(conn: Connection, *, now: datetime | None) -> int:
    """Make dispatched-but-unclaimed rows due now (after a pause ends, their messages were
    consumed without effect). Returns how many rows."""
    c = fax_outbox.c
    result = conn.execute(
        update(fax_outbox)
        .where(c.status == FaxStatus.PENDING, c.dispatched_at.is_not(None))
        .values(next_attempt_at=func.now() if now is None else now, dispatched_at=None)
    )
    return result.rowcount


def redispatch_now(conn: Connection, fax_ids: Sequence[int], *, now: datetime | None) -> int:
    """Make dispatched-but-unclaimed rows among `fax_ids` due now: a worker that lost the
    database before it could claim them gives them back (their messages were consumed), so
    they need not wait out the redispatch delay. Returns how many rows."""
    if not fax_ids:
        return 0
    c = fax_outbox.c
    result = conn.execute(
        update(fax_outbox)
        .where(
            c.id.in_(list(fax_ids)),
            c.status == FaxStatus.PENDING,
            c.dispatched_at.is_not(None),
        )
        .values(next_attempt_at=func.now() if now is None else now, dispatched_at=None)
    )
    return result.rowcount


def attempt_logged(conn: Connection, fax_id: int, *, worker: str, started_at: datetime) -> bool:
    """Whether the attempt `worker` started at `started_at` on row `fax_id` is in its log (a
    kept outcome whose write reached the database before the answer was lost)."""
    a = fax_attempts.c
    found = conn.execute(
        select(a.fax_id)
        .where(a.fax_id == fax_id, a.worker == worker, a.started_at == started_at)
        .limit(1)
    ).first()
    return found is not None


def next_due_at(conn: Connection) -> datetime | None:
    """When the earliest pending row becomes due (None when nothing is pending)."""
    c = fax_outbox.c
    earliest: datetime | None = conn.execute(
        select(func.min(c.next_attempt_at)).where(c.status == FaxStatus.PENDING)
    ).scalar_one()
    return earliest


def database_now(conn: Connection) -> datetime:
    """The database's clock (what `DatabaseClock` reads)."""
    moment: datetime = conn.execute(select(func.now())).scalar_one()
    return moment


def fax_row(conn: Connection, fax_id: int) -> Mapping[str, Any] | None:
    """Every column of one fax but the document (for display and tests)."""
    cols = [col for col in fax_outbox.c if col.name != "document"]
    row = conn.execute(select(*cols).where(fax_outbox.c.id == fax_id)).one_or_none()
    return None if row is None else dict(row._mapping)


# --- operator actions (outbox/operations.py) ---------------------------------------------------

# What `faxout list` shows of rows: no document, the error as its codes. Each filter is off
# when its parameter is NULL (a one-off plan per call sees the values, so the index of the
# filter in use is walked: reference, created_at, status).
_LIST_FAXES = text(
    """
    SELECT id, status, status_reason, reference, to_number, attempts, outcome_unknown,
           mintfax_fax_id, created_at, updated_at, next_attempt_at, submitted_at, completed_at,
           error_code, last_error->>'error' AS last_error_code,
           last_error->>'kind' AS last_error_kind,
           (last_error->>'status_code')::int AS last_http_status
    FROM fax_outbox
    WHERE (CAST(:statuses AS fax_status[]) IS NULL
           OR status = ANY(CAST(:statuses AS fax_status[])))
      AND (CAST(:reference AS text) IS NULL OR reference = CAST(:reference AS text))
      AND (CAST(:since AS timestamptz) IS NULL OR created_at >= CAST(:since AS timestamptz))
      AND (CAST(:before_id AS bigint) IS NULL OR id < CAST(:before_id AS bigint))
    ORDER BY id DESC
    LIMIT :limit
    """
)


def list_faxes(
    conn: Connection,
    *,
    statuses: Sequence[str] = (),
    reference: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Rows newest first (by id), filtered by status, exact reference, creation time; no
    document. `before_id` pages on (ids below it)."""
    result = conn.execute(
        _LIST_FAXES,
        {
            "statuses": list(statuses) or None,
            "reference": reference,
            "since": since,
            "before_id": before_id,
            "limit": limit,
        },
    )
    return [dict(row._mapping) for row in result]


def fax_ids_by_reference(conn: Connection, reference: str) -> list[int]:
    """Ids of the faxes enqueued with `reference`, newest first."""
    result = conn.execute(
        text("SELECT id FROM fax_outbox WHERE reference = :reference ORDER BY id DESC"),
        {"reference": reference},
    )
    return [row_id for (row_id,) in result]


def fax_history(conn: Connection, fax_id: int) -> dict[str, list[dict[str, Any]]]:
    """Everything recorded about one fax, oldest first: `attempts` (fax_attempts), `events`
    (fax_events applied to it or waiting for its fax id), `actions` (fax_actions) and
    `alerts` naming it."""
    queries = {
        "attempts": """
            SELECT id, attempt, worker, started_at, finished_at, duration_ms, outcome,
                   http_status, error, request_id, mintfax_fax_id, lease_lost
            FROM fax_attempts WHERE fax_id = :id ORDER BY id""",
        "events": """
            SELECT e.id, e.event_id, e.event_type, e.mintfax_fax_id, e.occurred_at,
                   e.received_at, e.outcome, e.applied_at, e.observation, e.payload
            FROM fax_events AS e
            WHERE e.outbox_id = :id
               OR e.mintfax_fax_id = (SELECT mintfax_fax_id FROM fax_outbox WHERE id = :id)
            ORDER BY e.occurred_at, e.id""",
        "actions": """
            SELECT id, action, actor, at, from_status, to_status, detail
            FROM fax_actions WHERE fax_id = :id ORDER BY id""",
        "alerts": """
            SELECT id, kind, severity, message, created_at, notified_at
            FROM alerts WHERE fax_id = :id ORDER BY id""",
    }
    return {
        name: [dict(row._mapping) for row in conn.execute(text(sql), {"id": fax_id})]
        for name, sql in queries.items()
    }


@dataclass(frozen=True, slots=True)
class LockedFax:
    """A row locked (FOR UPDATE) for an operator's action, with what the action must judge."""

    id: int
    status: FaxStatus
    status_reason: str | None
    outcome_unknown: bool
    mintfax_fax_id: str | None
    first_attempt_at: datetime | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    idempotency_key: str
    has_document: bool
    now: datetime  # the database's clock (or the test's `now`)


def lock_fax_for_action(conn: Connection, fax_id: int, *, now: datetime | None) -> LockedFax | None:
    """Lock row `fax_id` until the transaction ends. A worker's claim of it waits meanwhile
    (and then finds it changed); a claim already made is seen as `sending`."""
    row = conn.execute(
        text(
            """
            SELECT id, status, status_reason, outcome_unknown, mintfax_fax_id, first_attempt_at,
                   attempts, lease_owner, lease_expires_at, idempotency_key,
                   document IS NOT NULL, coalesce(CAST(:now AS timestamptz), now())
            FROM fax_outbox WHERE id = :id FOR UPDATE
            """
        ),
        {"id": fax_id, "now": now},
    ).one_or_none()
    if row is None:
        return None
    values = list(row)
    values[1] = FaxStatus(values[1])
    return LockedFax(*values)


def requeue_fax(conn: Connection, fax_id: int, *, now: datetime | None) -> bool:
    """A locked `needs_review` or `pending` row becomes `pending` and due now, with its key and
    its first POST (the 24 h window counts from it) and `outcome_unknown` kept; a parked row's
    attempts and lookups are counted afresh (a pending row keeps its count). False if it is in
    neither status."""
    result = conn.execute(
        text(
            """
            UPDATE fax_outbox
            SET status = 'pending',
                status_reason = NULL,
                attempts = CASE WHEN status = 'needs_review' THEN 0 ELSE attempts END,
                next_attempt_at = coalesce(CAST(:now AS timestamptz), now()),
                dispatched_at = NULL,
                next_poll_at = NULL,
                poll_attempts = 0
            WHERE id = :id AND status IN ('needs_review', 'pending')
            """
        ),
        {"id": fax_id, "now": now},
    )
    return result.rowcount == 1


def cancel_fax(conn: Connection, fax_id: int, *, now: datetime | None, reason: str) -> bool:
    """A `pending` or `needs_review` row without a fax id becomes `cancelled` (final). False
    otherwise (a worker claimed it, mintfax accepted it, it is final)."""
    result = conn.execute(
        text(
            """
            UPDATE fax_outbox
            SET status = 'cancelled',
                status_reason = :reason,
                completed_at = coalesce(CAST(:now AS timestamptz), now()),
                dispatched_at = NULL,
                next_poll_at = NULL
            WHERE id = :id AND status IN ('pending', 'needs_review') AND mintfax_fax_id IS NULL
            """
        ),
        {"id": fax_id, "now": now, "reason": reason},
    )
    return result.rowcount == 1


def insert_resend(conn: Connection, fax_id: int, *, idempotency_key: str) -> tuple[int, bool]:
    """A new fax made from row `fax_id` (recipient, document, filename, reference, retries,
    metadata) under `idempotency_key`: (its id, whether it was created now). The copy is made
    inside the database: the document never travels."""
    created = conn.execute(
        text(
            """
            INSERT INTO fax_outbox (idempotency_key, to_number, document, filename, reference,
                                    retries, metadata)
            SELECT :key, to_number, document, filename, reference, retries, metadata
            FROM fax_outbox WHERE id = :id
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """
        ),
        {"id": fax_id, "key": idempotency_key},
    ).scalar_one_or_none()
    if created is not None:
        return int(created), True
    existing = conn.execute(
        text("SELECT id FROM fax_outbox WHERE idempotency_key = :key"), {"key": idempotency_key}
    ).scalar_one()
    return int(existing), False


def record_action(
    conn: Connection,
    fax_id: int,
    *,
    action: str,
    actor: str,
    from_status: str,
    to_status: str,
    detail: Mapping[str, Any],
    now: datetime | None,
) -> None:
    """Add one entry to a fax's operator history (fax_actions)."""
    conn.execute(
        text(
            """
            INSERT INTO fax_actions (fax_id, action, actor, at, from_status, to_status, detail)
            VALUES (:fax_id, :action, :actor, coalesce(CAST(:now AS timestamptz), now()),
                    :from_status, :to_status, CAST(:detail AS jsonb))
            """
        ),
        {
            "fax_id": fax_id,
            "action": action,
            "actor": actor,
            "now": now,
            "from_status": from_status,
            "to_status": to_status,
            "detail": json.dumps(dict(detail)),
        },
    )


def resends_of(conn: Connection, fax_id: int) -> list[int]:
    """Ids of the new faxes an operator made from fax `fax_id`, oldest first."""
    result = conn.execute(
        text(
            "SELECT (detail->>'new_fax_id')::bigint FROM fax_actions "
            "WHERE fax_id = :id AND action = 'resend' ORDER BY id"
        ),
        {"id": fax_id},
    )
    return [int(new_id) for (new_id,) in result]


def fax_ids_in_status(conn: Connection, status: FaxStatus, *, limit: int) -> list[int]:
    """Ids of up to `limit` rows in `status`, oldest first (a bulk action's targets)."""
    result = conn.execute(
        text(
            "SELECT id FROM fax_outbox WHERE status = CAST(:status AS fax_status) "
            "ORDER BY id LIMIT :limit"
        ),
        {"status": status.value, "limit": limit},
    )
    return [row_id for (row_id,) in result]


# --- fleet pauses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    """An open (or just-ended) pause episode of the whole fleet."""

    id: int
    reason: str
    detail: dict[str, Any]
    started_at: datetime
    started_by: str | None


def open_pause(
    conn: Connection,
    *,
    reason: str,
    detail: Mapping[str, Any],
    now: datetime,
    started_by: str | None,
) -> tuple[Pause, bool]:
    """Open a pause episode for `reason`, or join the open one. Returns (pause, newly opened)."""
    p = fleet_pauses.c
    inserted = conn.execute(
        insert(fleet_pauses)
        .values(reason=reason, detail=dict(detail), started_at=now, started_by=started_by)
        .on_conflict_do_nothing(index_elements=[p.reason], index_where=p.ended_at.is_(None))
        .returning(p.id, p.reason, p.detail, p.started_at, p.started_by)
    ).one_or_none()
    if inserted is not None:
        return Pause(*inserted), True
    existing = conn.execute(
        select(p.id, p.reason, p.detail, p.started_at, p.started_by).where(
            p.reason == reason, p.ended_at.is_(None)
        )
    ).one()
    return Pause(*existing), False


def end_pauses(
    conn: Connection, *, now: datetime, ended_by: str | None, reasons: Sequence[str] | None = None
) -> list[Pause]:
    """Close open pause episodes (all, or those of `reasons`); returns what was closed."""
    p = fleet_pauses.c
    statement = update(fleet_pauses).where(p.ended_at.is_(None))
    if reasons is not None:
        statement = statement.where(p.reason.in_(list(reasons)))
    result = conn.execute(
        statement.values(ended_at=func.greatest(now, p.started_at), ended_by=ended_by).returning(
            p.id, p.reason, p.detail, p.started_at, p.started_by
        )
    )
    return [Pause(*row) for row in result]


def open_pauses(conn: Connection) -> list[Pause]:
    """Pause episodes in progress, oldest first."""
    p = fleet_pauses.c
    result = conn.execute(
        select(p.id, p.reason, p.detail, p.started_at, p.started_by)
        .where(p.ended_at.is_(None))
        .order_by(p.started_at)
    )
    return [Pause(*row) for row in result]


# --- alerts ------------------------------------------------------------------------------------


def insert_alert(
    conn: Connection,
    *,
    kind: str,
    dedupe_key: str,
    severity: str,
    message: str,
    detail: Mapping[str, Any],
    fax_id: int | None,
    now: datetime,
) -> int | None:
    """Record an alert unless its dedupe key was already raised; the new id, or None."""
    a = alerts.c
    return conn.execute(
        insert(alerts)
        .values(
            kind=kind,
            dedupe_key=dedupe_key,
            severity=severity,
            message=message,
            detail=dict(detail),
            fax_id=fax_id,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=[a.dedupe_key])
        .returning(a.id)
    ).scalar_one_or_none()


def alerts_to_notify(
    conn: Connection, *, ids: Sequence[int] | None = None, limit: int = 100
) -> list[Mapping[str, Any]]:
    """Alerts not yet delivered to the alert webhook (given ids, or the oldest ones)."""
    a = alerts.c
    statement = select(alerts).where(a.notified_at.is_(None)).order_by(a.id).limit(limit)
    if ids is not None:
        statement = statement.where(a.id.in_(list(ids)))
    return [dict(row._mapping) for row in conn.execute(statement)]


# Claims on the database's clock (`now()`, unless a test passes its own `now`), like leases.
_CLAIM_ALERTS = text(
    """
    WITH due AS (
        SELECT id FROM alerts
        WHERE notified_at IS NULL
          AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
          AND (next_delivery_at IS NULL
               OR next_delivery_at <= coalesce(CAST(:now AS timestamptz), now()))
          AND (delivery_claimed_until IS NULL
               OR delivery_claimed_until < coalesce(CAST(:now AS timestamptz), now()))
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE alerts AS a
    SET delivery_claimed_until = coalesce(CAST(:now AS timestamptz), now())
                                 + make_interval(secs => :claim_seconds)
    FROM due
    WHERE a.id = due.id
    RETURNING a.id, a.kind, a.severity, a.message, a.detail, a.fax_id, a.created_at,
              a.delivery_attempts
    """
)


def claim_alerts_for_delivery(
    conn: Connection,
    *,
    claim_seconds: float,
    limit: int,
    ids: Sequence[int] | None = None,
    now: datetime | None = None,
) -> list[Mapping[str, Any]]:
    """Take up to `limit` undelivered, due alerts (given ids, or the oldest) for delivery.

    One statement: a claimed alert is skipped by every other process until it is delivered,
    backed off, or its claim ends after `claim_seconds` (the deliverer died), so two processes
    delivering at once never POST the same alert twice.
    """
    result = conn.execute(
        _CLAIM_ALERTS,
        {
            "ids": None if ids is None else list(ids),
            "now": now,
            "limit": limit,
            "claim_seconds": claim_seconds,
        },
    )
    return [dict(row._mapping) for row in result]


def finish_alert_delivery(
    conn: Connection,
    alert_id: int,
    *,
    now: datetime,
    error: str | None,
    retry_after: float | None = None,
) -> None:
    """Record the outcome of one claimed delivery and release the claim.

    Delivered (`error` None): `notified_at = now`. Failed: one more try counted, and the alert
    is not due again for `retry_after` seconds (on the database's clock).
    """
    a = alerts.c
    statement = update(alerts).where(a.id == alert_id, a.notified_at.is_(None))
    if error is None:
        values: dict[str, Any] = {
            "notified_at": now,
            "notify_error": None,
            "delivery_claimed_until": None,
        }
    else:
        values = {
            "notify_error": error,
            "delivery_attempts": a.delivery_attempts + 1,
            "next_delivery_at": func.now() + timedelta(seconds=retry_after or 0.0),
            "delivery_claimed_until": None,
        }
    conn.execute(statement.values(values))


def review_count(conn: Connection, fax_id: int) -> int:
    """How many times the row has entered needs_review (0 if never, or if it is gone)."""
    count: int | None = conn.execute(
        select(fax_outbox.c.review_count).where(fax_outbox.c.id == fax_id)
    ).scalar_one_or_none()
    return count or 0


def recent_alerts(conn: Connection, limit: int = 20) -> list[Mapping[str, Any]]:
    """The newest alerts, newest first."""
    a = alerts.c
    result = conn.execute(select(alerts).order_by(a.id.desc()).limit(limit))
    return [dict(row._mapping) for row in result]


# --- mintfax's own rate limit (outbox/provider_limit.py) ---------------------------------------
# An episode is its alert (kind `provider_rate_limit`): `detail.current_limit` is the figure the
# fleet follows, `detail.ended_at` is set once mintfax's figure is back at or above ours.

_PROVIDER_LIMIT_KIND = "provider_rate_limit"


def open_provider_limit(conn: Connection, *, lock: bool = False) -> tuple[int, int] | None:
    """The open episode as (alert id, mintfax's current figure), or None. With `lock`, first
    serialise every change of the episode until the transaction ends (one per fleet)."""
    if lock:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('faxout.provider_limit'))"))
    row = conn.execute(
        text(
            "SELECT id, (detail->>'current_limit')::int FROM alerts "
            "WHERE kind = :kind AND detail->>'ended_at' IS NULL ORDER BY id DESC LIMIT 1"
        ),
        {"kind": _PROVIDER_LIMIT_KIND},
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def provider_limit_episodes(conn: Connection) -> int:
    """How many episodes there have been (the next one's number is this plus one)."""
    return int(
        conn.execute(
            text("SELECT count(*) FROM alerts WHERE kind = :kind"), {"kind": _PROVIDER_LIMIT_KIND}
        ).scalar_one()
    )


def set_provider_limit(conn: Connection, alert_id: int, limit: int) -> None:
    """Record mintfax's new figure in the open episode."""
    conn.execute(
        text(
            "UPDATE alerts SET detail = detail || jsonb_build_object('current_limit', :limit) "
            "WHERE id = :id"
        ),
        {"id": alert_id, "limit": limit},
    )


def end_provider_limit(conn: Connection, *, now: datetime) -> bool:
    """End the open episode, if any; whether one was open."""
    result = conn.execute(
        text(
            "UPDATE alerts SET detail = detail || jsonb_build_object('ended_at', "
            "CAST(:now AS timestamptz)) WHERE kind = :kind AND detail->>'ended_at' IS NULL"
        ),
        {"kind": _PROVIDER_LIMIT_KIND, "now": now},
    )
    return bool(result.rowcount)


# --- the rejection breaker ---------------------------------------------------------------------

# Attempts on which mintfax decided about the fax itself: accepted it, or refused it.
_LATEST_DECISIONS = text(
    """
    SELECT outcome = 'rejected' AND error->>'error' IS NOT DISTINCT FROM :code
    FROM fax_attempts
    WHERE outcome IN ('submitted', 'replayed', 'rejected')
    ORDER BY id DESC
    LIMIT :limit
    """
)


def rejections_in_a_row(conn: Connection, *, error_code: str | None, limit: int) -> int:
    """How many of the fleet's latest decisions (up to `limit`), newest first, are refusals
    with mintfax error `error_code` before the first other answer."""
    streak = 0
    for (same,) in conn.execute(_LATEST_DECISIONS, {"code": error_code, "limit": limit}):
        if not same:
            break
        streak += 1
    return streak


# --- status polling (outbox/poller.py) ---------------------------------------------------------

# The one polling pass of the fleet takes its rows: a transaction-scoped advisory lock (held
# until the pass ends; `held` is false when another pass has it, and then no row is read), and
# up to :limit rows mintfax accepted that are due a status poll, the longest due first (a
# backlog of never-polled rows does not starve the others): rows never polled whose acceptance
# is old enough (`fax_outbox_poll_fresh_idx`, a range ending at now - poll_after) and rows
# whose next poll is due (`fax_outbox_poll_due_idx`, a range ending at now). It writes
# nothing: with one pass at a time nobody else could take the rows, and the pass sets each
# row's next poll once it has read the fax, so a pass that dies leaves its rows due.
_DUE_POLLS = text(
    """
    SELECT lock.held, due.id, due.mintfax_fax_id, due.poll_attempts
    FROM (SELECT pg_try_advisory_xact_lock(hashtext('faxout.status_poll')) AS held) AS lock
    LEFT JOIN LATERAL (
        SELECT id, mintfax_fax_id, poll_attempts FROM (
            (SELECT id, mintfax_fax_id, poll_attempts,
                    submitted_at + make_interval(secs => :poll_after) AS due_at
             FROM fax_outbox
             WHERE status = 'submitted' AND next_poll_at IS NULL
               AND submitted_at <= coalesce(CAST(:now AS timestamptz), now())
                                   - make_interval(secs => :poll_after)
             ORDER BY submitted_at, id
             LIMIT :limit)
            UNION ALL
            (SELECT id, mintfax_fax_id, poll_attempts, next_poll_at AS due_at
             FROM fax_outbox
             WHERE status = 'submitted'
               AND next_poll_at <= coalesce(CAST(:now AS timestamptz), now())
             ORDER BY next_poll_at, id
             LIMIT :limit)
        ) AS both_kinds
        ORDER BY due_at, id
        LIMIT :limit
    ) AS due ON lock.held
    """
)

# Sends come first: pending rows that are due, or about to be (a dispatched row's
# next_attempt_at sits FAXOUT_REDISPATCH_SECONDS ahead until it is claimed), while no pause
# stops them. One probe of `fax_outbox_due_idx`.
_SENDS_WAITING = text(
    """
    SELECT EXISTS (
        SELECT 1 FROM fax_outbox
        WHERE status = 'pending'
          AND next_attempt_at <= coalesce(CAST(:now AS timestamptz), now())
                                 + make_interval(secs => :horizon)
    ) AND NOT EXISTS (SELECT 1 FROM fleet_pauses WHERE ended_at IS NULL)
    """
)


class PollTarget(NamedTuple):
    """A submitted row due a status poll (a tuple: a pass builds up to a burst of them per
    statement, and a dataclass's constructor cost more than the statement itself)."""

    id: int
    mintfax_fax_id: str
    poll_attempts: int  # polls made before this one


def sends_waiting(conn: Connection, *, now: datetime | None, horizon: float) -> bool:
    """True while sends are due within `horizon` seconds and no pause holds them back."""
    return bool(conn.execute(_SENDS_WAITING, {"now": now, "horizon": horizon}).scalar_one())


def due_polls(
    conn: Connection, *, now: datetime | None, poll_after: float, limit: int
) -> list[PollTarget] | None:
    """Take the fleet's one polling pass until the transaction ends, and up to `limit` rows
    due a status poll (see `_DUE_POLLS`); None when another pass holds it. Writes nothing."""
    # On the driver (`_execute_hot`): at 10 rows SQLAlchemy's per-statement work was a third
    # of the pass's cost (bench/poll_select.py).
    rows = _execute_hot(conn, _DUE_POLLS, {"now": now, "poll_after": poll_after, "limit": limit})
    if not rows[0][0]:
        return None
    return [
        PollTarget(row_id, fax_id, polls) for _, row_id, fax_id, polls in rows if row_id is not None
    ]


def schedule_next_poll(
    conn: Connection, fax_id: int, *, now: datetime | None, delay: float
) -> bool:
    """Count one poll of a row still `submitted` and set its next one `delay` s from now."""
    result = conn.execute(
        text(
            "UPDATE fax_outbox SET poll_attempts = poll_attempts + 1, "
            "next_poll_at = coalesce(CAST(:now AS timestamptz), now()) "
            "+ make_interval(secs => :delay) "
            "WHERE id = :id AND status = 'submitted'"
        ),
        {"now": now, "delay": delay, "id": fax_id},
    )
    return result.rowcount == 1


# --- balance watch (outbox/balance_watch.py) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """One reading of mintfax's balance; `low_since` is the start of its low-balance episode."""

    observed_at: datetime
    available: int
    held: int
    low_since: datetime | None


def lock_balance_watch(conn: Connection) -> None:
    """Serialise balance-watch passes (two beats, a slow pass) until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('faxout.balance_watch'))"))


def low_balance_told_since_topup(conn: Connection, event_id: str) -> bool:
    """Whether mintfax sent a `balance.low` other than `event_id` after its latest
    `balance.topup` (mintfax's own times, both): a repeat within one of its top-up cycles.
    Reads `fax_events_balance_idx` (migration 0017)."""
    return bool(
        conn.execute(
            text(
                """
                SELECT EXISTS (
                    SELECT 1 FROM fax_events AS low
                    WHERE low.event_type = 'balance.low' AND low.event_id <> :event_id
                      AND low.occurred_at > coalesce(
                          (SELECT max(occurred_at) FROM fax_events
                           WHERE event_type = 'balance.topup'), '-infinity'))
                """
            ),
            {"event_id": event_id},
        ).scalar_one()
    )


def latest_balance_snapshot(conn: Connection) -> BalanceSnapshot | None:
    """The newest stored reading, or None."""
    row = conn.execute(
        text(
            "SELECT observed_at, available, held, low_since FROM balance_snapshots "
            "ORDER BY observed_at DESC, id DESC LIMIT 1"
        )
    ).one_or_none()
    return None if row is None else BalanceSnapshot(*row)


def record_balance_snapshot(
    conn: Connection,
    *,
    now: datetime | None,
    available: int,
    held: int,
    low_since: datetime | None,
    start_episode: bool,
    keep_seconds: float,
) -> BalanceSnapshot:
    """Store a reading (a new episode starts at its own time when `start_episode`) and drop
    readings older than `keep_seconds`. Returns the stored snapshot."""
    row = conn.execute(
        text(
            """
            INSERT INTO balance_snapshots (observed_at, available, held, low_since)
            VALUES (coalesce(CAST(:now AS timestamptz), now()), :available, :held,
                    CASE WHEN :start THEN coalesce(CAST(:now AS timestamptz), now())
                         ELSE CAST(:low_since AS timestamptz) END)
            RETURNING observed_at, available, held, low_since
            """
        ),
        {
            "now": now,
            "available": available,
            "held": held,
            "low_since": low_since,
            "start": start_episode,
        },
    ).one()
    conn.execute(
        text(
            "DELETE FROM balance_snapshots "
            "WHERE observed_at < CAST(:at AS timestamptz) - make_interval(secs => :keep)"
        ),
        {"at": row[0], "keep": keep_seconds},
    )
    return BalanceSnapshot(*row)


# --- liveness (outbox/liveness.py) -------------------------------------------------------------

# Every time here is the database's (`coalesce(:now, now())`): a host whose wall clock is wrong
# still publishes a fresh heartbeat, and ages are measured on one clock.
_BEAT = text(
    """
    INSERT INTO heartbeats AS h (instance, role, process, hostname, pid, started_at, seen_at)
    VALUES (:instance, :role, :process, :hostname, :pid,
            coalesce(CAST(:now AS timestamptz), now()), coalesce(CAST(:now AS timestamptz), now()))
    ON CONFLICT (instance) DO UPDATE
    SET seen_at = greatest(h.seen_at, EXCLUDED.seen_at), stopped_at = NULL
    """
)


def beat_heartbeat(
    conn: Connection,
    *,
    instance: uuid.UUID,
    role: str,
    process: str,
    hostname: str,
    pid: int,
    now: datetime | None,
) -> None:
    """Record that process `instance` is alive now (its first beat also records its start)."""
    conn.execute(
        _BEAT,
        {
            "instance": instance,
            "role": role,
            "process": process,
            "hostname": hostname,
            "pid": pid,
            "now": now,
        },
    )


def stop_heartbeat(conn: Connection, instance: uuid.UUID, *, now: datetime | None) -> None:
    """Mark process `instance` as shut down cleanly (it is no longer counted as alive)."""
    conn.execute(
        text(
            "UPDATE heartbeats SET stopped_at = coalesce(CAST(:now AS timestamptz), now()), "
            "seen_at = greatest(seen_at, coalesce(CAST(:now AS timestamptz), now())) "
            "WHERE instance = :instance"
        ),
        {"instance": instance, "now": now},
    )


def heartbeat_rows(conn: Connection, *, now: datetime | None) -> list[Mapping[str, Any]]:
    """Every recorded process, by role and name, with its age in seconds on the database's
    clock (`age_seconds`: since its last heartbeat)."""
    result = conn.execute(
        text(
            "SELECT instance, role, process, hostname, pid, started_at, seen_at, stopped_at, "
            "  extract(epoch FROM coalesce(CAST(:now AS timestamptz), now()) - seen_at) "
            "    AS age_seconds "
            "FROM heartbeats ORDER BY role, process, started_at"
        ),
        {"now": now},
    )
    return [dict(row._mapping) for row in result]


def live_roles(
    conn: Connection, *, within_seconds: float, hostname: str | None, now: datetime | None
) -> set[str]:
    """Roles with a running process (not stopped) seen in the last `within_seconds`, on
    `hostname` only when given."""
    result = conn.execute(
        text(
            "SELECT DISTINCT role FROM heartbeats "
            "WHERE stopped_at IS NULL "
            "  AND seen_at >= coalesce(CAST(:now AS timestamptz), now()) "
            "                 - make_interval(secs => :within) "
            "  AND (CAST(:hostname AS text) IS NULL OR hostname = :hostname)"
        ),
        {"within": within_seconds, "hostname": hostname, "now": now},
    )
    return {row[0] for row in result}


# Opens the role's down episode in one statement when no process of it has been seen for
# `:threshold` seconds and the checker itself has been up that long (a fleet starting up, or a
# checker that just restarted, has not yet had the time to see the role). Two checkers at once
# insert one row: the second waits on the open-episode unique index, then does nothing.
_OPEN_DOWN_EPISODE = text(
    """
    WITH now AS (SELECT coalesce(CAST(:now AS timestamptz), now()) AS t),
    last AS (SELECT max(seen_at) AS seen FROM heartbeats WHERE role = :role)
    INSERT INTO liveness_episodes (role, started_at, last_seen_at)
    SELECT :role, now.t, last.seen
    FROM now, last
    WHERE (last.seen IS NULL OR last.seen < now.t - make_interval(secs => :threshold))
      AND EXISTS (
        SELECT 1 FROM heartbeats
        WHERE instance = :checker
          AND started_at <= now.t - make_interval(secs => :threshold))
    ON CONFLICT (role) WHERE ended_at IS NULL DO NOTHING
    RETURNING id, last_seen_at
    """
)

# Ends the role's open episode once a running process of it has been seen since it began.
_END_DOWN_EPISODE = text(
    """
    UPDATE liveness_episodes AS e
    SET ended_at = greatest(e.started_at, coalesce(CAST(:now AS timestamptz), now()))
    WHERE e.role = :role AND e.ended_at IS NULL
      AND EXISTS (
        SELECT 1 FROM heartbeats h
        WHERE h.role = :role AND h.stopped_at IS NULL AND h.seen_at >= e.started_at)
    RETURNING e.id, e.started_at
    """
)


def open_down_episode(
    conn: Connection, *, role: str, threshold: float, checker: uuid.UUID, now: datetime | None
) -> tuple[int, datetime | None] | None:
    """Open the episode in which no process of `role` is alive (see `_OPEN_DOWN_EPISODE`);
    (its id, when the role was last seen), or None if the role is alive, the checker is too
    young to judge, or the episode is already open."""
    row = conn.execute(
        _OPEN_DOWN_EPISODE,
        {"role": role, "threshold": threshold, "checker": checker, "now": now},
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def end_down_episode(
    conn: Connection, *, role: str, now: datetime | None
) -> tuple[int, datetime] | None:
    """End `role`'s open down episode if a running process of it was seen since it began;
    (its id, when it began), or None."""
    row = conn.execute(_END_DOWN_EPISODE, {"role": role, "now": now}).one_or_none()
    return None if row is None else (row[0], row[1])


def open_down_episodes(conn: Connection) -> list[Mapping[str, Any]]:
    """The roles without a live process right now, as their open episodes."""
    result = conn.execute(
        text(
            "SELECT id, role, started_at, last_seen_at FROM liveness_episodes "
            "WHERE ended_at IS NULL ORDER BY role"
        )
    )
    return [dict(row._mapping) for row in result]


def prune_heartbeats(
    conn: Connection, *, stopped_after: float, silent_after: float, now: datetime | None
) -> int:
    """Forget processes that stopped cleanly `stopped_after` seconds ago, or went silent (a
    crash) `silent_after` seconds ago; how many rows went."""
    result = conn.execute(
        text(
            "DELETE FROM heartbeats WHERE seen_at < coalesce(CAST(:now AS timestamptz), now()) "
            "  - make_interval(secs => CASE WHEN stopped_at IS NULL "
            "                          THEN :silent ELSE :stopped END)"
        ),
        {"stopped": stopped_after, "silent": silent_after, "now": now},
    )
    return result.rowcount


# --- the fleet's state: metrics, `faxout status`, the dashboard (outbox/fleet_status.py) -------
# Each statement walks an index (migration 0013), so a scrape stays cheap at a million rows
# (bench/metrics_scrape.py).


def oldest_pending(conn: Connection, *, now: datetime | None) -> Mapping[str, Any] | None:
    """The pending row enqueued first (`fax_outbox_pending_created_idx`), with its age in
    seconds on the database's clock; None when nothing is pending."""
    row = conn.execute(
        text(
            "SELECT id, reference, to_number, created_at, attempts, next_attempt_at, "
            "status_reason, greatest(0, extract(epoch FROM "
            "coalesce(CAST(:now AS timestamptz), now()) - created_at))::float8 AS age_seconds "
            "FROM fax_outbox WHERE status = 'pending' ORDER BY created_at, id LIMIT 1"
        ),
        {"now": now},
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def attempt_counts(conn: Connection) -> dict[tuple[str, int | None], int]:
    """Every logged attempt counted by (outcome, HTTP status): index-only on
    `fax_attempts_outcome_idx`."""
    result = conn.execute(
        text("SELECT outcome, http_status, count(*) FROM fax_attempts GROUP BY 1, 2")
    )
    return {(outcome, status): count for outcome, status, count in result}


def deleted_tallies(conn: Connection) -> dict[tuple[str, str], int]:
    """What retention deleted, by (kind, label) (`metric_tallies`, migration 0013)."""
    result = conn.execute(text("SELECT kind, label, value FROM metric_tallies"))
    return {(kind, label): value for kind, label, value in result}


def event_counts(conn: Connection) -> dict[str, int]:
    """Recorded webhook events by outcome (each event id once): `fax_events_outcome_idx`."""
    result = conn.execute(text("SELECT outcome, count(*) FROM fax_events GROUP BY 1"))
    return {outcome: count for outcome, count in result}


@dataclass(frozen=True, slots=True)
class LatencyCounts:
    """One latency histogram: cumulative counts per upper bound (seconds), count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total_seconds: float
    window_seconds: float  # over the rows of this many seconds before the snapshot


# The latencies of the last `:window` seconds, grouped by bucket: a latency's bucket is the
# number of bounds below it (the first bound at or above it is its Prometheus `le`), which
# `width_bucket` tells from the negated bounds in ascending order. Insert to submit of the
# rows submitted in the window (a range of `fax_outbox_latency_idx`), submit to final of the
# rows finished in it (ranges of `fax_outbox_completed_at_idx`). date_part (double
# precision), not extract (numeric, several times slower).
_LATENCY = text(
    """
    WITH since AS (
        SELECT coalesce(CAST(:now AS timestamptz), now()) - make_interval(secs => :window) AS t
    )
    SELECT 'submit', :n - width_bucket(-d, CAST(:negated AS float8[])), count(*), sum(d)
    FROM (
        SELECT greatest(0, date_part('epoch', submitted_at - created_at)) AS d
        FROM fax_outbox, since WHERE submitted_at >= since.t
    ) AS submitted
    GROUP BY 2
    UNION ALL
    SELECT 'final', :n - width_bucket(-d, CAST(:negated AS float8[])), count(*), sum(d)
    FROM (
        SELECT greatest(0, date_part('epoch', completed_at - submitted_at)) AS d
        FROM fax_outbox, since
        WHERE status IN ('delivered', 'failed') AND completed_at >= since.t
          AND submitted_at IS NOT NULL
    ) AS finished
    GROUP BY 2
    """
)


def latency_counts(
    conn: Connection, bounds: Sequence[float], *, now: datetime | None, window: float
) -> tuple[LatencyCounts, LatencyCounts]:
    """Insert-to-submit latencies of the rows submitted in the last `window` seconds, and
    submit-to-final latencies of the rows delivered or failed in them, as cumulative
    histograms over `bounds` (ascending): index ranges, so the cost follows the window's
    traffic, not the table's size.

    A duration below zero (mintfax's completion time is its clock, our submission time the
    database's, and the two may disagree) counts as zero.
    """
    key = [float(b) for b in bounds]
    per_bucket = {"submit": [0] * (len(key) + 1), "final": [0] * (len(key) + 1)}
    totals = {"submit": 0.0, "final": 0.0}
    params = {"n": len(key), "negated": [-b for b in reversed(key)], "now": now, "window": window}
    for kind, bucket, count, total in conn.execute(_LATENCY, params):
        per_bucket[kind][bucket] += count
        totals[kind] += total or 0.0

    def histogram(kind: str) -> LatencyCounts:
        running, cumulative = 0, []
        for bound, n in zip(key, per_bucket[kind], strict=False):
            running += n
            cumulative.append((bound, running))
        return LatencyCounts(tuple(cumulative), sum(per_bucket[kind]), totals[kind], window)

    return histogram("submit"), histogram("final")


_LAST_HOUR = text(
    """
    WITH bounds AS (
        SELECT date_trunc('minute', coalesce(CAST(:now AS timestamptz), now()))
               - make_interval(mins => :minutes - 1) AS start
    )
    SELECT 'enqueued', date_trunc('minute', created_at) AS minute, count(*)
    FROM fax_outbox, bounds WHERE created_at >= bounds.start GROUP BY 2
    UNION ALL
    SELECT 'submitted', date_trunc('minute', submitted_at), count(*)
    FROM fax_outbox, bounds WHERE submitted_at >= bounds.start GROUP BY 2
    UNION ALL
    SELECT status::text, date_trunc('minute', completed_at), count(*)
    FROM fax_outbox, bounds
    WHERE status IN ('delivered', 'failed', 'rejected', 'cancelled')
      AND completed_at >= bounds.start
    GROUP BY 1, 2
    """
)


def per_minute(
    conn: Connection, *, now: datetime | None, minutes: int
) -> tuple[datetime, dict[str, dict[datetime, int]]]:
    """Rows enqueued, submitted, and reaching each final status, per minute of the last
    `minutes` (the current minute included): ranges of the indexes of migration 0013.
    Returns the first minute and {series: {minute: count}}."""
    start: datetime = conn.execute(
        text(
            "SELECT date_trunc('minute', coalesce(CAST(:now AS timestamptz), now())) "
            "- make_interval(mins => :minutes - 1)"
        ),
        {"now": now, "minutes": minutes},
    ).scalar_one()
    series: dict[str, dict[datetime, int]] = {}
    for name, minute, count in conn.execute(_LAST_HOUR, {"now": now, "minutes": minutes}):
        series.setdefault(name, {})[minute] = count
    return start, series


_ROWS_TO_LOOK_AT = text(
    """
    (SELECT id, status::text, status_reason, reference, to_number, error_code, error_message,
            last_error, attempts, updated_at
     FROM fax_outbox WHERE status = 'needs_review' ORDER BY updated_at DESC, id DESC
     LIMIT :limit)
    UNION ALL
    (SELECT id, status::text, status_reason, reference, to_number, error_code, error_message,
            last_error, attempts, updated_at
     FROM fax_outbox WHERE status = 'failed' AND completed_at IS NOT NULL
     ORDER BY completed_at DESC, id DESC LIMIT :limit)
    UNION ALL
    (SELECT id, status::text, status_reason, reference, to_number, error_code, error_message,
            last_error, attempts, updated_at
     FROM fax_outbox WHERE status = 'rejected' AND completed_at IS NOT NULL
     ORDER BY completed_at DESC, id DESC LIMIT :limit)
    """
)


def rows_to_look_at(conn: Connection, *, limit: int) -> list[Mapping[str, Any]]:
    """The newest rows (up to `limit` of each) in needs_review, failed and rejected, with
    their reasons: needs_review through `fax_outbox_status_idx` (a few rows), failed and
    rejected as ranges of `fax_outbox_completed_at_idx`."""
    return [dict(row._mapping) for row in conn.execute(_ROWS_TO_LOOK_AT, {"limit": limit})]


# --- retention (outbox/retention.py) -----------------------------------------------------------

# Final rows whose bytes are due to go, oldest final first, walked along
# `fax_outbox_retention_due_idx` (which holds only final rows that still have them). Rows
# another pass holds are skipped, never waited for; final rows are never claimed by a send,
# so a pass and the fleet never wait on each other's rows. A batch also stops at :max_bytes
# of documents (the first row always goes): dropping a 10 MB document deletes its TOAST
# chunks, and 500 of them would make a long transaction. `octet_length` of a stored
# document reads its TOAST pointer, not the bytes. One row back: how many rows were
# candidates, and the ids whose bytes went.
_PURGE_DOCUMENTS = text(
    """
    WITH candidates AS (
        SELECT id, final_at, octet_length(document) AS size FROM fax_outbox
        WHERE final_at IS NOT NULL AND document IS NOT NULL
          AND final_at <= coalesce(CAST(:now AS timestamptz), now()) - make_interval(secs => :age)
        ORDER BY final_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), within AS (
        SELECT id FROM (
            SELECT id, sum(size) OVER (ORDER BY final_at, id) - size AS before FROM candidates
        ) AS running
        WHERE before < :max_bytes
    ), purged AS (
        UPDATE fax_outbox AS f
        SET document = NULL, document_purged_at = coalesce(CAST(:now AS timestamptz), now())
        FROM within
        WHERE f.id = within.id
        RETURNING f.id
    )
    SELECT (SELECT count(*) FROM candidates), (SELECT array_agg(id) FROM purged)
    """
)

# Final rows old enough to delete, with their history, along `fax_outbox_final_idx`. With
# :after_mintfax, a row whose copy at mintfax is still to be deleted waits for that first.
# Attempts and events go explicitly (their foreign keys would cascade or set NULL), alerts too.
_PURGE_ROWS = text(
    """
    WITH doomed AS (
        SELECT id FROM fax_outbox
        WHERE final_at IS NOT NULL
          AND final_at <= coalesce(CAST(:now AS timestamptz), now()) - make_interval(secs => :age)
          AND (NOT :after_mintfax OR mintfax_fax_id IS NULL OR mintfax_deleted_at IS NOT NULL)
        ORDER BY final_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), attempts AS (
        DELETE FROM fax_attempts AS a USING doomed WHERE a.fax_id = doomed.id
    ), events AS (
        DELETE FROM fax_events AS e USING doomed WHERE e.outbox_id = doomed.id
    ), row_alerts AS (
        DELETE FROM alerts AS al USING doomed WHERE al.fax_id = doomed.id
    )
    DELETE FROM fax_outbox AS f USING doomed WHERE f.id = doomed.id
    RETURNING f.id
    """
)

# Rows whose bytes are gone and whose copy at mintfax is still to be deleted, least recently
# tried first, along `fax_outbox_mintfax_delete_idx`. No lock is held while mintfax is asked.
_MINTFAX_DELETIONS_DUE = text(
    """
    SELECT id, mintfax_fax_id FROM fax_outbox
    WHERE document IS NULL AND mintfax_fax_id IS NOT NULL AND mintfax_deleted_at IS NULL
    ORDER BY updated_at, id
    LIMIT :limit
    """
)

# Serialises passes' deletions at mintfax (a session lock on the pass's own connection, gone
# with it if the process dies), so two passes do not ask for the same fax twice.
_MINTFAX_DELETION_LOCK = 7246012


def purge_documents(
    conn: Connection, *, now: datetime | None, age: float, limit: int, max_bytes: int
) -> tuple[list[int], bool]:
    """Remove the bytes of up to `limit` rows final for at least `age` seconds, stopping at
    `max_bytes` of documents (one row at least). Returns their ids, and whether rows may be
    left (a full batch of candidates, or one cut by `max_bytes`)."""
    params = {"now": now, "age": age, "limit": limit, "max_bytes": max_bytes}
    considered, ids = conn.execute(_PURGE_DOCUMENTS, params).one()
    purged = list(ids or [])
    return purged, considered == limit or len(purged) < considered


def purge_rows(
    conn: Connection, *, now: datetime | None, age: float, limit: int, after_mintfax: bool
) -> list[int]:
    """Delete up to `limit` rows final for at least `age` seconds, with their attempts, events
    and alerts; returns their ids."""
    params = {"now": now, "age": age, "limit": limit, "after_mintfax": after_mintfax}
    return [row_id for (row_id,) in conn.execute(_PURGE_ROWS, params)]


def mintfax_deletions_due(conn: Connection, *, limit: int) -> list[tuple[int, str]]:
    """(id, mintfax fax id) of up to `limit` rows whose copy at mintfax is to be deleted."""
    rows = conn.execute(_MINTFAX_DELETIONS_DUE, {"limit": limit})
    return [(row_id, fax_id) for row_id, fax_id in rows]


def try_lock_mintfax_deletions(conn: Connection) -> bool:
    """Take the session lock of mintfax deletions on `conn` (autocommit); False if held."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": _MINTFAX_DELETION_LOCK}
        ).scalar_one()
    )


def unlock_mintfax_deletions(conn: Connection) -> None:
    """Release the lock `try_lock_mintfax_deletions` took on `conn`."""
    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MINTFAX_DELETION_LOCK})


def mark_mintfax_deleted(conn: Connection, fax_id: int, *, now: datetime | None) -> bool:
    """Record that mintfax no longer holds the row's copy."""
    result = conn.execute(
        text(
            "UPDATE fax_outbox SET mintfax_deleted_at = coalesce(CAST(:now AS timestamptz), now()) "
            "WHERE id = :id AND mintfax_deleted_at IS NULL"
        ),
        {"now": now, "id": fax_id},
    )
    return result.rowcount == 1


def postpone_mintfax_deletion(conn: Connection, fax_id: int) -> None:
    """Send a row whose deletion mintfax refused to the back of the queue (the update trigger
    moves `updated_at`, the order of `_MINTFAX_DELETIONS_DUE`)."""
    conn.execute(
        text("UPDATE fax_outbox SET mintfax_deleted_at = NULL WHERE id = :id"), {"id": fax_id}
    )


# --- reconciliation ----------------------------------------------------------------------------


def lock_fax_events(conn: Connection, mintfax_fax_id: str) -> None:
    """Serialise, per fax id, applying what mintfax says with storing the id on a row (the
    trigger of migration 0008 takes the same lock), until the transaction ends."""
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('fax_events:' || :fax_id))"),
        {"fax_id": mintfax_fax_id},
    )


_INGEST_EVENT = text(
    """
    SELECT fax_events_ingest(:event_id, :event_type, :fax_id, :occurred_at,
                             CAST(:observation AS jsonb), CAST(:payload AS jsonb))
    """
)


def ingest_event(conn: Connection, event: FaxEvent, observation: FaxObservation | None) -> str:
    """Record and apply a webhook event in one statement (migration 0015's
    `fax_events_ingest`): its outcome, or 'duplicate' when its id was seen before."""
    rows = _execute_hot(
        conn,
        _INGEST_EVENT,
        {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "fax_id": observation.mintfax_fax_id if observation else None,
            "occurred_at": event.occurred_at,
            "observation": None
            if observation is None
            else json.dumps(_observation_json(observation)),
            "payload": json.dumps(event.payload),
        },
    )
    return str(rows[0][0])


# Many events in one statement and one commit (the receiver's group commit): each gets the
# outcome `fax_events_ingest` would give it alone. `fax_events_ingest_batch` (migration 0016)
# takes every event's lock first, in one global order (two batches never deadlock), then
# applies the batch by set; a fax named twice in the batch has its events applied one by one,
# in the order they came.
_INGEST_EVENTS = text(
    "SELECT event_n, event_outcome FROM fax_events_ingest_batch(CAST(:events AS jsonb))"
)


def ingest_events(
    conn: Connection, items: Sequence[tuple[FaxEvent, FaxObservation | None]]
) -> list[str]:
    """Record and apply several webhook events in one statement, as `ingest_event` does one:
    their outcomes, in the order given. Run it alone in its transaction (it holds every
    event's fax-id lock until the end)."""
    if not items:
        return []
    rows = _execute_hot(conn, _INGEST_EVENTS, {"events": _ingest_document(items)})
    return _outcomes_in_order(rows, len(items))


async def ingest_events_async(
    conn: psycopg.AsyncConnection[Any], items: Sequence[tuple[FaxEvent, FaxObservation | None]]
) -> list[str]:
    """`ingest_events` on an autocommit psycopg connection of an event loop (the receiver's
    batches: no worker thread). psycopg's errors are raised as they are."""
    if not items:
        return []
    sql, _ = _raw_statement(_INGEST_EVENTS)
    cursor = await conn.execute(sql, {"events": _ingest_document(items)})
    return _outcomes_in_order(await cursor.fetchall(), len(items))


def _ingest_document(items: Sequence[tuple[FaxEvent, FaxObservation | None]]) -> str:
    # One JSON document for the batch: psycopg escapes each string of a text[] parameter with
    # a regular expression, which cost more CPU than the rest of the receiver (JSON bodies are
    # all quotes).
    return json.dumps(
        [
            {
                "n": n,
                "event_id": event.event_id,
                "event_type": event.event_type,
                "fax_id": obs.mintfax_fax_id if obs else None,
                "occurred_at": event.occurred_at.isoformat(),
                "observation": None if obs is None else _observation_json(obs),
                "payload": event.payload,
            }
            for n, (event, obs) in enumerate(items, start=1)
        ]
    )


def _outcomes_in_order(rows: Sequence[Sequence[Any]], count: int) -> list[str]:
    outcomes = {int(n): str(outcome) for n, outcome in rows}
    return [outcomes[n] for n in range(1, count + 1)]


_APPLY_OBSERVATION = text(
    """
    SELECT fax_outbox_apply_observation(:fax_id, :status, :observed_at, :pages, :attempt,
                                        :error_code, :error_message, :completed_at)
    """
)


def apply_observation(conn: Connection, observation: FaxObservation) -> str:
    """The state-transition function (migration 0008): 'applied', 'stale', 'pending' or
    'ignored'. Take `lock_fax_events` first in the same transaction."""
    return str(
        conn.execute(
            _APPLY_OBSERVATION,
            {
                "fax_id": observation.mintfax_fax_id,
                "status": observation.status,
                "observed_at": observation.observed_at,
                "pages": observation.pages,
                "attempt": observation.attempt,
                "error_code": observation.error_code,
                "error_message": observation.error_message,
                "completed_at": observation.completed_at,
            },
        ).scalar_one()
    )


def _observation_json(observation: FaxObservation) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "status": observation.status,
        "observed_at": iso(observation.observed_at),
        "pages": observation.pages,
        "attempt": observation.attempt,
        "error_code": observation.error_code,
        "error_message": observation.error_message,
        "completed_at": iso(observation.completed_at),
    }


_STATE_COLUMNS = (
    "id",
    "reference",
    "status",
    "status_reason",
    "mintfax_fax_id",
    "pages",
    "error_code",
    "error_message",
    "submitted_at",
    "completed_at",
)


def fax_states(
    conn: Connection, *, fax_id: int | None = None, reference: str | None = None
) -> list[dict[str, Any]]:
    """The application-facing columns of one fax (by id) or of a reference's faxes."""
    c = fax_outbox.c
    statement = select(*(c[name] for name in _STATE_COLUMNS)).order_by(c.id.desc())
    if fax_id is not None:
        statement = statement.where(c.id == fax_id)
    if reference is not None:
        statement = statement.where(c.reference == reference)
    rows = [dict(row._mapping) for row in conn.execute(statement)]
    for row in rows:
        row["status"] = FaxStatus(row["status"])
    return rows


# --- unknown outcomes resolved -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnknownOutcome:
    """A row parked because an attempt may have created its fax, claimed for a lookup."""

    id: int
    idempotency_key: str
    to_number: str
    first_attempt_at: datetime | None
    now: datetime  # the database's clock at the claim


# Parked rows whose attempts may have created a fax and that hold no fax id, due for a lookup;
# `next_poll_at` is the next lookup (polling proper only reads `submitted` rows).
_CLAIM_UNKNOWN_OUTCOMES = text(
    """
    WITH due AS (
        SELECT id FROM fax_outbox
        WHERE status = 'needs_review' AND outcome_unknown AND mintfax_fax_id IS NULL
          AND poll_attempts < :max_lookups
          AND (next_poll_at IS NULL OR next_poll_at <= coalesce(CAST(:now AS timestamptz), now()))
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE fax_outbox AS f
    SET next_poll_at = coalesce(CAST(:now AS timestamptz), now()) + make_interval(secs => :hold),
        poll_attempts = f.poll_attempts + 1
    FROM due
    WHERE f.id = due.id
    RETURNING f.id, f.idempotency_key, f.to_number, f.first_attempt_at,
              coalesce(CAST(:now AS timestamptz), now())
    """
)


def claim_unknown_outcomes(
    conn: Connection, *, now: datetime | None, hold: float, limit: int, max_lookups: int
) -> list[UnknownOutcome]:
    """Take up to `limit` parked rows of unknown outcome for a lookup (they are not taken
    again for `hold` seconds); each lookup counts, up to `max_lookups`."""
    rows = conn.execute(
        _CLAIM_UNKNOWN_OUTCOMES,
        {"now": now, "hold": hold, "limit": limit, "max_lookups": max_lookups},
    )
    return [UnknownOutcome(*row) for row in rows]


def attach_found_fax(
    conn: Connection, fax_id: int, *, mintfax_fax_id: str, submitted_at: datetime | None
) -> bool:
    """A parked row whose fax was found at mintfax becomes `submitted` with its fax id (the
    database then applies events that waited for it). False if the row changed meanwhile."""
    c = fax_outbox.c
    result = conn.execute(
        update(fax_outbox)
        .where(
            c.id == fax_id,
            c.status == FaxStatus.NEEDS_REVIEW,
            c.mintfax_fax_id.is_(None),
        )
        .values(
            status=FaxStatus.SUBMITTED,
            mintfax_fax_id=mintfax_fax_id,
            mintfax_status=None,  # the lookup's observation sets it
            submitted_at=func.coalesce(submitted_at, func.now()),
            status_reason=None,
            last_error=None,
            next_poll_at=None,
            poll_attempts=0,
        )
    )
    return result.rowcount == 1


def resend_unknown(conn: Connection, fax_id: int, *, now: datetime | None) -> bool:
    """A parked row whose fax mintfax certainly does not have goes back to `pending` with its
    key, its attempts counted afresh (its first POST, which the 24 h window counts from, is
    kept). False if the row changed meanwhile."""
    c = fax_outbox.c
    result = conn.execute(
        update(fax_outbox)
        .where(
            c.id == fax_id,
            c.status == FaxStatus.NEEDS_REVIEW,
            c.mintfax_fax_id.is_(None),
            c.outcome_unknown.is_(True),
        )
        .values(
            status=FaxStatus.PENDING,
            next_attempt_at=func.coalesce(now, func.now()),
            attempts=0,
            outcome_unknown=False,
            status_reason=None,
            next_poll_at=None,
            poll_attempts=0,
        )
    )
    return result.rowcount == 1
