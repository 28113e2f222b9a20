"""The database refuses what SQL can judge, each refusal naming its constraint or rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from outbox.models import ATTEMPT_OUTCOMES, INSERT_COLUMNS, Outcome, fax_outbox, metadata
from tests import fixtures_files as files

TEN_MB = 10 * 1024 * 1024
GOOD: dict[str, Any] = {
    "to_number": "+12127365000",
    "document": files.pdf("constraints"),
    "filename": "letter.pdf",
    "reference": "ref-1",
}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def _insert(conn: psycopg.Connection[Any], **changes: Any) -> int:
    """Insert a row; columns the system owns go in under the fixtures' allowance (0005)."""
    row = {**GOOD, **changes}
    columns = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    with conn.transaction():
        if set(row) - set(INSERT_COLUMNS):
            conn.execute("SET LOCAL faxout.allow_system_columns = on")
        cursor = conn.execute(
            f"INSERT INTO fax_outbox ({columns}) VALUES ({marks}) RETURNING id",
            list(row.values()),
        )
        found = cursor.fetchone()
    assert found is not None
    return int(found[0])


def _plain_insert(conn: psycopg.Connection[Any], **changes: Any) -> int:
    """Insert a row as an application would: no allowance."""
    row = {**GOOD, **changes}
    cursor = conn.execute(
        f"INSERT INTO fax_outbox ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"
        " RETURNING id",
        list(row.values()),
    )
    found = cursor.fetchone()
    assert found is not None
    return int(found[0])


def _refused(conn: psycopg.Connection[Any], constraint: str, **changes: Any) -> str:
    with pytest.raises(pg_errors.IntegrityError) as caught:
        _insert(conn, **changes)
    assert caught.value.diag.constraint_name == constraint
    message = str(caught.value)
    assert constraint in message  # readable: the error names the rule that was broken
    return message


def _count(conn: psycopg.Connection[Any]) -> int:
    found = conn.execute("SELECT count(*) FROM fax_outbox").fetchone()
    assert found is not None
    return int(found[0])


def test_the_minimal_insert_gets_every_default(conn: psycopg.Connection[Any]) -> None:
    fax_id = _insert(conn)
    row = conn.execute(
        "SELECT status::text, retries, attempts, metadata, next_attempt_at IS NOT NULL,"
        " created_at IS NOT NULL, idempotency_key IS NOT NULL, document_sha256"
        " FROM fax_outbox WHERE id = %s",
        [fax_id],
    ).fetchone()
    assert row is not None
    assert row[:7] == ("pending", 3, 0, {}, True, True, True)
    assert len(row[7]) == 64


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("to_number", "12127365000", "fax_outbox_to_number_e164_check"),
        ("to_number", "+02127365000", "fax_outbox_to_number_e164_check"),
        ("to_number", "+1 212 736 5000", "fax_outbox_to_number_e164_check"),
        ("to_number", "+1234567890123456", "fax_outbox_to_number_e164_check"),  # 16 digits
        ("to_number", "+1", "fax_outbox_to_number_e164_check"),
        ("to_number", "+12127365000\n", "fax_outbox_to_number_e164_check"),
        ("document", b"", "fax_outbox_document_size_check"),
        ("document", b"a" * (TEN_MB + 1), "fax_outbox_document_size_check"),
        ("filename", "", "fax_outbox_filename_length_check"),
        ("filename", "f" * 256, "fax_outbox_filename_length_check"),
        ("reference", "", "fax_outbox_reference_length_check"),
        ("reference", "r" * 256, "fax_outbox_reference_length_check"),
        ("idempotency_key", "", "fax_outbox_idempotency_key_length_check"),
        ("idempotency_key", "k" * 256, "fax_outbox_idempotency_key_length_check"),
        ("idempotency_key", "my key", "fax_outbox_idempotency_key_header_safe_check"),
        ("idempotency_key", "key\n", "fax_outbox_idempotency_key_header_safe_check"),
        ("idempotency_key", "cl\u00e9", "fax_outbox_idempotency_key_header_safe_check"),
        ("retries", -1, "fax_outbox_retries_range_check"),
        ("retries", 11, "fax_outbox_retries_range_check"),
        ("attempts", -1, "fax_outbox_attempts_nonnegative_check"),
        ("metadata", psycopg.types.json.Jsonb([1, 2]), "fax_outbox_metadata_object_check"),
        ("metadata", psycopg.types.json.Jsonb("text"), "fax_outbox_metadata_object_check"),
    ],
)
def test_each_check_constraint_rejects_its_bad_value(
    conn: psycopg.Connection[Any], column: str, value: Any, constraint: str
) -> None:
    _refused(conn, constraint, **{column: value})
    assert _count(conn) == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("to_number", "+12"),
        ("to_number", "+123456789012345"),  # 15 digits, the E.164 maximum
        ("document", b"a"),
        ("document", b"a" * TEN_MB),
        ("filename", "f" * 255),
        ("reference", "\u00e9" * 255),  # 255 characters, 510 bytes
        ("idempotency_key", "k" * 255),
        ("idempotency_key", "!~" * 100),  # visible ASCII at both ends of the range
        ("retries", 0),
        ("retries", 10),
    ],
)
def test_values_on_the_edges_are_accepted(
    conn: psycopg.Connection[Any], column: str, value: Any
) -> None:
    _insert(conn, **{column: value})
    assert _count(conn) == 1


# A value for each column the system owns, different from what an insert leaves there. A column
# added to fax_outbox must be classified here or in INSERT_COLUMNS (the test below says which).
SYSTEM_VALUES: dict[str, Any] = {
    "status": "cancelled",
    "status_reason": "why",
    "attempts": 1,
    "next_attempt_at": "2030-01-01T00:00:00Z",
    "lease_owner": "w1",
    "lease_expires_at": "2030-01-01T00:00:00Z",
    "lease_token": "00000000-0000-0000-0000-000000000001",
    "first_attempt_at": "2030-01-01T00:00:00Z",
    "mintfax_fax_id": "fax_1",
    "mintfax_status": "queued",
    "pages": 1,
    "last_error": psycopg.types.json.Jsonb({"kind": "X"}),
    "submitted_at": "2030-01-01T00:00:00Z",
    "completed_at": "2030-01-01T00:00:00Z",
    "last_event_at": "2030-01-01T00:00:00Z",
    "dispatched_at": "2030-01-01T00:00:00Z",
    "created_at": "2030-01-01T00:00:00Z",
    "updated_at": "2030-01-01T00:00:00Z",
    # Added after 0005; refused by 0007's second insert trigger.
    "review_count": 1,
    "outcome_unknown": True,
    # Added by 0008 (reconciliation), refused by the same trigger.
    "error_code": "busy",
    "error_message": "the line was busy",
    "mintfax_attempt": 1,
    "next_poll_at": "2030-01-01T00:00:00Z",
    "poll_attempts": 1,
    # Added by 0010 (retention), refused by a trigger of its own with the same words.
    "final_at": "2030-01-01T00:00:00Z",
    "document_purged_at": "2030-01-01T00:00:00Z",
    "mintfax_deleted_at": "2030-01-01T00:00:00Z",
}
# Not set by the caller and not checked by the insert trigger: the identity (a caller-given id
# cannot be told from the sequence's in a BEFORE trigger) and the derived fingerprint (always
# recomputed from the document).
UNCHECKED = {"id", "document_sha256"}


def test_every_column_is_the_callers_or_the_systems() -> None:
    columns = {c.name for c in fax_outbox.columns}
    unclassified = columns - set(INSERT_COLUMNS) - set(SYSTEM_VALUES) - UNCHECKED
    assert unclassified == set(), "classify these in SYSTEM_VALUES (and the 0005 trigger)"


@pytest.mark.parametrize("column", sorted(SYSTEM_VALUES))
def test_a_plain_insert_cannot_set_a_column_the_system_owns(
    conn: psycopg.Connection[Any], column: str
) -> None:
    # Issue 8, item 7: refused, naming the column, rather than trusted (or silently reset).
    if column not in {c.name for c in fax_outbox.columns}:
        pytest.skip(f"{column} is not in this schema")
    with pytest.raises(pg_errors.CheckViolation) as caught:
        _plain_insert(conn, **{column: SYSTEM_VALUES[column]})
    assert f"fax_outbox: {column} is set by the system, not by an insert" in str(caught.value)
    assert "An insert sets to_number, document, filename and reference" in str(
        caught.value.diag.message_hint
    )
    assert _count(conn) == 0


def test_every_system_column_set_is_named(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pg_errors.CheckViolation) as caught:
        _plain_insert(conn, status="cancelled", attempts=3, completed_at="2030-01-01T00:00:00Z")
    assert "status, attempts, completed_at are set by the system" in str(caught.value)


def test_an_insert_may_spell_out_the_defaults(conn: psycopg.Connection[Any]) -> None:
    cursor = conn.execute(
        "INSERT INTO fax_outbox (to_number, document, filename, reference, status, attempts,"
        " next_attempt_at, created_at, mintfax_fax_id, retries, metadata, idempotency_key)"
        " VALUES (%s, %s, %s, %s, 'pending', 0, now(), DEFAULT, NULL, 0, '{}', 'my-own-key')"
        " RETURNING idempotency_key",
        [GOOD["to_number"], GOOD["document"], GOOD["filename"], GOOD["reference"]],
    )
    assert cursor.fetchone() == ("my-own-key",)


def test_fixtures_may_set_system_columns_only_when_they_say_so(
    conn: psycopg.Connection[Any],
) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL faxout.allow_system_columns = on")
        _plain_insert(conn, status="cancelled", reference="fixture")
    # The allowance ended with its transaction.
    with pytest.raises(pg_errors.CheckViolation):
        _plain_insert(conn, status="cancelled", reference="app")
    assert _count(conn) == 1


def test_lease_exists_exactly_while_sending(conn: psycopg.Connection[Any]) -> None:
    _refused(conn, "fax_outbox_lease_iff_sending_check", status="sending")
    _refused(
        conn,
        "fax_outbox_lease_iff_sending_check",
        lease_owner="worker-1",
        lease_expires_at="2030-01-01T00:00:00Z",
    )
    _refused(
        conn,
        "fax_outbox_lease_iff_sending_check",
        status="sending",
        lease_owner="worker-1",  # an owner without an expiry is no lease
    )
    _refused(
        conn,
        "fax_outbox_lease_iff_sending_check",
        status="sending",
        lease_owner="worker-1",
        lease_expires_at="2030-01-01T00:00:00Z",  # a lease without its fencing token is none
    )


def test_accepted_faxes_carry_the_mintfax_id(conn: psycopg.Connection[Any]) -> None:
    _refused(conn, "fax_outbox_accepted_has_fax_id_check", status="submitted")
    _refused(conn, "fax_outbox_accepted_has_fax_id_check", status="delivered")


def test_unique_keys(conn: psycopg.Connection[Any]) -> None:
    _insert(conn, idempotency_key="same", mintfax_fax_id="fax-1", status="submitted")
    _refused(conn, "fax_outbox_idempotency_key_key", idempotency_key="same", reference="other")
    _refused(
        conn,
        "fax_outbox_mintfax_fax_id_key",
        reference="other",
        mintfax_fax_id="fax-1",
        status="submitted",
    )


@pytest.mark.parametrize("column", ["to_number", "document", "reference"])
def test_missing_key_parts_are_named(conn: psycopg.Connection[Any], column: str) -> None:
    with pytest.raises(pg_errors.NotNullViolation) as caught:
        _insert(conn, **{column: None})
    assert "to_number, document and reference are required" in str(caught.value)


def test_missing_filename_is_named(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pg_errors.NotNullViolation) as caught:
        _insert(conn, filename=None)
    assert caught.value.diag.column_name == "filename"


def test_unknown_status_is_refused(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pg_errors.InvalidTextRepresentation) as caught:
        _insert(conn, status="sent")
    assert "fax_status" in str(caught.value)


def _attempt(conn: psycopg.Connection[Any], for_fax: int, **changes: Any) -> None:
    row = {
        "fax_id": for_fax,
        "attempt": 1,
        "started_at": "2030-01-01T00:00:00Z",
        "finished_at": "2030-01-01T00:00:01Z",
        "duration_ms": 1000,
        "outcome": "submitted",
        **changes,
    }
    conn.execute(
        f"INSERT INTO fax_attempts ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
        list(row.values()),
    )


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"attempt": 0}, "fax_attempts_attempt_positive_check"),
        ({"duration_ms": -1}, "fax_attempts_duration_nonnegative_check"),
        ({"fax_id": 999_999}, "fax_attempts_fax_id_fkey"),
        ({"outcome": "retry"}, "fax_attempts_outcome_known_check"),
    ],
)
def test_attempt_log_constraints(
    conn: psycopg.Connection[Any], changes: dict[str, Any], constraint: str
) -> None:
    fax_id = _insert(conn)
    _attempt(conn, fax_id)  # the good row goes in
    with pytest.raises(pg_errors.IntegrityError) as caught:
        _attempt(conn, fax_id, **changes)
    assert caught.value.diag.constraint_name == constraint
    assert constraint in str(caught.value)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_the_attempt_log_speaks_the_outcome_vocabulary(
    conn: psycopg.Connection[Any], outcome: Outcome
) -> None:
    fax_id = _insert(conn)
    if outcome in ATTEMPT_OUTCOMES:
        _attempt(conn, fax_id, outcome=outcome.value)
        return
    # Nothing was attempted (not claimed, throttled) or the lease was lost: never logged.
    with pytest.raises(pg_errors.CheckViolation) as caught:
        _attempt(conn, fax_id, outcome=outcome.value)
    assert caught.value.diag.constraint_name == "fax_attempts_outcome_known_check"


def test_attempts_go_with_their_fax(conn: psycopg.Connection[Any]) -> None:
    fax_id = _insert(conn)
    _attempt(conn, fax_id)
    conn.execute("DELETE FROM fax_outbox WHERE id = %s", [fax_id])
    found = conn.execute("SELECT count(*) FROM fax_attempts").fetchone()
    assert found == (0,)


# --- the status state machine (trigger fax_outbox_guard_transition) -------------------------

ALLOWED = {
    ("pending", "sending"),
    ("pending", "cancelled"),
    ("sending", "pending"),
    ("sending", "submitted"),
    ("sending", "rejected"),
    ("sending", "failed"),
    ("sending", "needs_review"),
    ("sending", "delivered"),
    ("submitted", "delivered"),
    ("submitted", "failed"),
    ("submitted", "needs_review"),
    ("needs_review", "pending"),
    ("needs_review", "cancelled"),
    ("needs_review", "submitted"),
    ("needs_review", "delivered"),
    ("needs_review", "failed"),
}
STATUSES = [
    "pending",
    "sending",
    "submitted",
    "delivered",
    "failed",
    "rejected",
    "cancelled",
    "needs_review",
]
TERMINAL = {"delivered", "failed", "rejected", "cancelled"}

# Columns each status needs so that only the transition rule, not a CHECK, decides.
_SENDING = (
    "lease_owner = 'w1', lease_expires_at = now() + interval '1 minute', "
    "lease_token = gen_random_uuid()"
)
_NOT_SENDING = "lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL"


def _row_in(conn: psycopg.Connection[Any], status: str) -> int:
    fax_id = _insert(
        conn,
        reference=f"{status}-{_count(conn)}",
        status=status,
        mintfax_fax_id=f"fax-{status}-{_count(conn)}",
        lease_owner="w1" if status == "sending" else None,
        lease_expires_at="2030-01-01T00:00:00Z" if status == "sending" else None,
        lease_token="7f1c2a52-4b0e-4c55-9d3c-3f0f2d9b6a11" if status == "sending" else None,
    )
    return fax_id


def _move(conn: psycopg.Connection[Any], fax_id: int, status: str) -> None:
    lease = _SENDING if status == "sending" else _NOT_SENDING
    conn.execute(
        f"UPDATE fax_outbox SET status = %s, {lease} WHERE id = %s",
        [status, fax_id],
    )


@pytest.mark.parametrize(("old", "new"), [(a, b) for a in STATUSES for b in STATUSES if a != b])
def test_status_moves_only_along_the_diagram(
    conn: psycopg.Connection[Any], old: str, new: str
) -> None:
    fax_id = _row_in(conn, old)
    if (old, new) in ALLOWED:
        _move(conn, fax_id, new)
        found = conn.execute("SELECT status::text FROM fax_outbox WHERE id = %s", [fax_id])
        assert found.fetchone() == (new,)
        return
    with pytest.raises(pg_errors.CheckViolation) as caught:
        _move(conn, fax_id, new)
    assert f"status cannot move from {old} to {new}" in str(caught.value)


def test_terminal_states_are_sticky() -> None:
    # Derived from the table above, so the two cannot drift apart.
    assert all(old not in TERMINAL for old, _new in ALLOWED)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_a_finished_fax_keeps_its_identity(conn: psycopg.Connection[Any], status: str) -> None:
    fax_id = _row_in(conn, status)
    for assignment, value in [
        ("to_number = %s", "+12127365001"),
        ("document = %s", files.pdf("changed")),
        ("idempotency_key = %s", "another"),
    ]:
        with pytest.raises(pg_errors.CheckViolation) as caught:
            conn.execute(
                f"UPDATE fax_outbox SET {assignment} WHERE id = %s",
                [value, fax_id],
            )
        assert f"a {status} fax cannot be changed" in str(caught.value)
    # Bookkeeping on a finished fax (a late event's timestamp) is still allowed.
    conn.execute("UPDATE fax_outbox SET last_event_at = now() WHERE id = %s", [fax_id])


def test_updates_stamp_updated_at(conn: psycopg.Connection[Any]) -> None:
    fax_id = _insert(conn)
    conn.execute("UPDATE fax_outbox SET updated_at = '2000-01-01' WHERE id = %s", [fax_id])
    found = conn.execute(
        "SELECT updated_at > '2020-01-01'::timestamptz FROM fax_outbox WHERE id = %s", [fax_id]
    ).fetchone()
    assert found == (True,)


@pytest.mark.parametrize(
    ("assignment", "value"),
    [
        ("to_number = %s", "+12127365001"),
        ("reference = %s", "ref-2"),
        ("idempotency_key = %s", "another"),
        ("filename = %s", "other.pdf"),
        ("document = %s", b"%PDF-1.4 another document"),
    ],
)
def test_a_pending_fax_keeps_its_identity(
    conn: psycopg.Connection[Any], assignment: str, value: str
) -> None:
    fax_id = _insert(conn)
    with pytest.raises(pg_errors.CheckViolation) as caught:
        conn.execute(
            f"UPDATE fax_outbox SET {assignment} WHERE id = %s",
            [value, fax_id],
        )
    assert "never change; enqueue a new fax instead" in str(caught.value)


def test_database_constraint_names_are_the_models_names(conn: psycopg.Connection[Any]) -> None:
    # Alembic's autogenerate (and so `faxout db check`) does not compare CHECK constraints, so a
    # migration that names them differently from outbox.models would go unnoticed; the names
    # are what operators and error handlers see.
    dialect = postgresql.psycopg.dialect()
    expected = {
        (table.name, name)
        for table in metadata.sorted_tables
        for name in re.findall(
            r"CONSTRAINT (\w+)", str(CreateTable(table).compile(dialect=dialect))
        )
    }
    found = {
        (str(table), str(name))
        for table, name in conn.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace AND contype IN ('c', 'u', 'f', 'p')"
            " AND conrelid::regclass::text <> 'alembic_version'"
        )
    }
    assert found == expected
