"""One intent, one key: plain-SQL inserts cannot set the columns the system owns.

Revision ID: 0005_one_key_per_intent
Revises: 0004_fenced_leases
Create Date: 2026-11-30

What an insert may set: `to_number`, `document`, `filename`, `reference`, and optionally
`retries`, `metadata` and `idempotency_key` (`outbox.models.INSERT_COLUMNS`). Everything else
belongs to the system: the status (only `pending`), attempts, the lease, mintfax's fax id and
status, the timestamps, errors and reasons. The insert trigger **refuses** a row that sets any
of them, naming the columns, rather than resetting them: an application that inserts
`status = 'delivered'` or a `mintfax_fax_id` has a bug or a wrong idea of the contract, and a
silent reset would turn that into a fax sent that the application thinks was not (or the
reverse). `document_sha256` is derived, not owned: the trigger computes it from the document
whatever the insert said, as before.

Test fixtures and benchmarks that need rows in other states, and only they, set
`SET LOCAL faxout.allow_system_columns = on` in their transaction; no production code does.

The idempotency key, when the caller gives one, must be a valid HTTP header value (visible
ASCII, no spaces or control characters): the CHECK `fax_outbox_idempotency_key_header_safe_check`
is `outbox.keys.HEADER_VALUE_SQL`, the definition the helper and the client use. mintfax was
never sent a key that breaks it (the client always refused one), so an existing row that does
can never be sent; such rows make this upgrade fail on the constraint, and must be cancelled
or deleted first.

The key the trigger derives is unchanged: from `to_number` exactly as inserted. The helper now
refuses a number that is not in canonical E.164 form instead of rewriting it, and the worker
rejects such a plain-SQL row before calling mintfax, so both paths derive the key from the
string that is stored and sent.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_one_key_per_intent"
down_revision: str | None = "0004_fenced_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# System columns with a default an insert must leave alone (the value the default gives).
_DEFAULTED = {
    "status": "'pending'",
    "attempts": "0",
    "next_attempt_at": "now()",
    "created_at": "now()",
    "updated_at": "now()",
}
# System columns that start NULL. `lease_token` comes with 0004 (fenced leases); each name is
# checked only if the column exists when this revision runs.
_NULL_AT_FIRST = (
    "status_reason",
    "lease_owner",
    "lease_expires_at",
    "lease_token",
    "first_attempt_at",
    "mintfax_fax_id",
    "mintfax_status",
    "pages",
    "last_error",
    "submitted_at",
    "completed_at",
    "last_event_at",
    "dispatched_at",
)

_KEY_FUNCTION = r"""
CREATE OR REPLACE FUNCTION fax_outbox_fill_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owned text[] := '{{}}';
BEGIN
    -- Name the missing field ourselves: otherwise the NULL surfaces as a derived column.
    IF NEW.to_number IS NULL OR NEW.document IS NULL OR NEW.reference IS NULL THEN
        RAISE EXCEPTION 'fax_outbox: to_number, document and reference are required'
            USING ERRCODE = 'not_null_violation';
    END IF;
    -- One expression on the common path; the columns are named only when one is set.
    IF ({any_set}) AND coalesce(current_setting('faxout.allow_system_columns', true), '') <> 'on'
    THEN
{name_each}
        RAISE EXCEPTION 'fax_outbox: % set by the system, not by an insert',
            array_to_string(owned, ', ')
            || CASE WHEN cardinality(owned) = 1 THEN ' is' ELSE ' are' END
            USING ERRCODE = 'check_violation',
                  HINT = 'An insert sets to_number, document, filename and reference, and '
                         'optionally retries, metadata and idempotency_key.';
    END IF;
    NEW.document_sha256 := encode(sha256(NEW.document), 'hex');
    IF NEW.idempotency_key IS NULL THEN
        NEW.idempotency_key := encode(sha256(convert_to(
            'faxout:v1' || E'\n' || NEW.to_number || E'\n' || NEW.document_sha256
            || E'\n' || NEW.reference, 'UTF8')), 'hex');
    END IF;
    RETURN NEW;
END $$;
"""

# 0001's function, restored by downgrade.
_KEY_FUNCTION_0001 = r"""
CREATE OR REPLACE FUNCTION fax_outbox_fill_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Name the missing field ourselves: otherwise the NULL surfaces as a derived column.
    IF NEW.to_number IS NULL OR NEW.document IS NULL OR NEW.reference IS NULL THEN
        RAISE EXCEPTION 'fax_outbox: to_number, document and reference are required'
            USING ERRCODE = 'not_null_violation';
    END IF;
    NEW.document_sha256 := encode(sha256(NEW.document), 'hex');
    IF NEW.idempotency_key IS NULL THEN
        NEW.idempotency_key := encode(sha256(convert_to(
            'faxout:v1' || E'\n' || NEW.to_number || E'\n' || NEW.document_sha256
            || E'\n' || NEW.reference, 'UTF8')), 'hex');
    END IF;
    RETURN NEW;
END $$;
"""

# outbox.keys.HEADER_VALUE_SQL when this revision was written.
_KEY_IS_HEADER_SAFE = r"idempotency_key ~ '^[\x21-\x7e]*$'"


def _key_function(existing: set[str]) -> str:
    nulls = [c for c in _NULL_AT_FIRST if c in existing]
    any_set = " OR ".join(
        [f"NEW.{c} <> {v}" for c, v in _DEFAULTED.items()]
        + [f"NOT (ROW({', '.join(f'NEW.{c}' for c in nulls)}) IS NULL)"]
    )
    checks = [f"NEW.{c} <> {v}" for c, v in _DEFAULTED.items()]
    checks += [f"NEW.{c} IS NOT NULL" for c in nulls]
    names = [*_DEFAULTED, *nulls]
    name_each = "\n".join(
        f"        IF {check} THEN owned := owned || '{name}'::text; END IF;"
        for check, name in zip(checks, names, strict=True)
    )
    return _KEY_FUNCTION.format(any_set=any_set, name_each=name_each)


def upgrade() -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("fax_outbox")}
    op.execute(_key_function(existing))
    op.create_check_constraint(
        op.f("fax_outbox_idempotency_key_header_safe_check"), "fax_outbox", _KEY_IS_HEADER_SAFE
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fax_outbox_idempotency_key_header_safe_check"), "fax_outbox", type_="check"
    )
    op.execute(_KEY_FUNCTION_0001)
