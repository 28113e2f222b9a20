"""Retention: the document bytes of a final fax can be removed, and whole rows deleted later.

- `fax_outbox.final_at`: when the row reached a final state (`delivered`, `failed`,
  `rejected`, `cancelled`), set by a trigger of its own on that transition (an insert of a
  final row by a test fixture gets `coalesce(completed_at, now())`). Retention counts its days
  from here; existing final rows get `coalesce(completed_at, updated_at)`.
- `document` may now be NULL, but only on a final row and only together with
  `document_purged_at` (CHECKs `document_purged_only_when_final`, `document_purged_iff_null`):
  a row without its bytes can never be claimed or sent again (final states are sticky, and the
  claim takes only `pending` rows). The size check still holds for every stored document (a
  NULL passes it), and the insert trigger still refuses a row without a document. The
  idempotency key, `document_sha256`, recipient and history stay: a re-enqueue of the same
  intent still finds the row.
- The two guards of 0001 let exactly one change of a final row's document through: to NULL
  (the bytes removed), never back, never to other bytes.
- `mintfax_deleted_at`: when mintfax confirmed it deleted its copy (`DELETE /v1/fax/{id}`,
  `FAXOUT_DELETE_AT_MINTFAX`).
- Three columns an insert cannot set (a BEFORE INSERT trigger of this revision's own, in the
  words of 0005's, so the shared guard function of 0007/0008 stays untouched).
- Index-driven passes (`outbox.retention`): `fax_outbox_retention_due_idx` holds only final
  rows that still have their bytes, `fax_outbox_final_idx` every final row by `final_at` (the
  row purge), `fax_outbox_mintfax_delete_idx` only rows whose copy at mintfax is still to be
  deleted, least recently tried first (a refused deletion touches its row: `updated_at`);
  `alerts_fax_id_idx` lets a purge delete a row's alerts without a scan.

Downgrade refuses while any row has lost its bytes: NOT NULL cannot come back for them.

Revision ID: 0010_retention
Revises: 0009_polling
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision: str = "0010_retention"
down_revision: str | None = "0009_polling"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FINAL = "('delivered', 'failed', 'rejected', 'cancelled')"

# 0001's transition guard, with one change: a final row's document may become NULL.
_TRANSITION = r"""
CREATE OR REPLACE FUNCTION fax_outbox_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.status = OLD.status THEN
        IF OLD.status IN ('delivered', 'failed', 'rejected', 'cancelled')
           AND ((NEW.idempotency_key, NEW.to_number) IS DISTINCT FROM
                (OLD.idempotency_key, OLD.to_number)
                OR (NEW.document IS NOT NULL AND NEW.document IS DISTINCT FROM OLD.document))
        THEN
            RAISE EXCEPTION 'fax_outbox %: a % fax cannot be changed', OLD.id, OLD.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF (OLD.status, NEW.status) IN (
        ('pending', 'sending'), ('pending', 'cancelled'),
        ('sending', 'pending'), ('sending', 'submitted'), ('sending', 'rejected'),
        ('sending', 'failed'), ('sending', 'needs_review'), ('sending', 'delivered'),
        ('submitted', 'delivered'), ('submitted', 'failed'), ('submitted', 'needs_review'),
        ('needs_review', 'pending'), ('needs_review', 'cancelled'),
        ('needs_review', 'submitted'), ('needs_review', 'delivered'), ('needs_review', 'failed')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'fax_outbox %: status cannot move from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;
"""

# 0001's identity guard, with the same one change.
_IDENTITY = r"""
CREATE OR REPLACE FUNCTION fax_outbox_identity_immutable() RETURNS trigger LANGUAGE plpgsql
AS $$
BEGIN
    IF (NEW.idempotency_key, NEW.to_number, NEW.document_sha256, NEW.filename, NEW.reference)
       IS DISTINCT FROM
       (OLD.idempotency_key, OLD.to_number, OLD.document_sha256, OLD.filename, OLD.reference)
       OR (NEW.document IS DISTINCT FROM OLD.document
           AND NOT (NEW.document IS NULL
                    AND OLD.status IN ('delivered', 'failed', 'rejected', 'cancelled')
                    AND NEW.status = OLD.status)) THEN
        RAISE EXCEPTION 'fax_outbox %: recipient, document, filename, reference and key of a '
            'fax never change; enqueue a new fax instead', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

_MARK_FINAL = r"""
CREATE FUNCTION fax_outbox_mark_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.final_at := now();
    RETURN NEW;
END $$;
"""

_GUARD_RETENTION_COLUMNS = r"""
CREATE FUNCTION fax_outbox_guard_retention_columns() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owned text[] := '{}';
BEGIN
    IF NOT (ROW(NEW.final_at, NEW.document_purged_at, NEW.mintfax_deleted_at) IS NULL)
       AND coalesce(current_setting('faxout.allow_system_columns', true), '') <> 'on' THEN
        IF NEW.final_at IS NOT NULL THEN owned := owned || 'final_at'::text; END IF;
        IF NEW.document_purged_at IS NOT NULL THEN
            owned := owned || 'document_purged_at'::text;
        END IF;
        IF NEW.mintfax_deleted_at IS NOT NULL THEN
            owned := owned || 'mintfax_deleted_at'::text;
        END IF;
        RAISE EXCEPTION 'fax_outbox: % set by the system, not by an insert',
            array_to_string(owned, ', ')
            || CASE WHEN cardinality(owned) = 1 THEN ' is' ELSE ' are' END
            USING ERRCODE = 'check_violation',
                  HINT = 'An insert sets to_number, document, filename and reference, and '
                         'optionally retries, metadata and idempotency_key.';
    END IF;
    -- Only fixtures get here with a final status: give the row its moment, as a transition would.
    IF NEW.final_at IS NULL AND NEW.status IN ('delivered', 'failed', 'rejected', 'cancelled')
    THEN
        NEW.final_at := coalesce(NEW.completed_at, now());
    END IF;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.add_column("fax_outbox", sa.Column("final_at", sa.DateTime(timezone=True)))
    op.add_column("fax_outbox", sa.Column("document_purged_at", sa.DateTime(timezone=True)))
    op.add_column("fax_outbox", sa.Column("mintfax_deleted_at", sa.DateTime(timezone=True)))
    # Before the final-state trigger exists, so the backfill is the only writer.
    op.execute(
        "UPDATE fax_outbox SET final_at = coalesce(completed_at, updated_at) "
        "WHERE status IN ('delivered', 'failed', 'rejected', 'cancelled')"
    )
    op.alter_column("fax_outbox", "document", nullable=True)
    op.create_check_constraint(
        op.f("fax_outbox_document_purged_only_when_final_check"),
        "fax_outbox",
        f"document IS NOT NULL OR status IN {_FINAL}",
    )
    op.create_check_constraint(
        op.f("fax_outbox_document_purged_iff_null_check"),
        "fax_outbox",
        "(document IS NULL) = (document_purged_at IS NOT NULL)",
    )
    op.execute(_TRANSITION)
    op.execute(_IDENTITY)
    op.execute(_MARK_FINAL)
    op.execute(
        "CREATE TRIGGER fax_outbox_mark_final BEFORE UPDATE OF status ON fax_outbox "
        f"FOR EACH ROW WHEN (NEW.status IN {_FINAL} AND OLD.status NOT IN {_FINAL}) "
        "EXECUTE FUNCTION fax_outbox_mark_final()"
    )
    op.execute(_GUARD_RETENTION_COLUMNS)
    op.execute(
        "CREATE TRIGGER fax_outbox_guard_retention_columns BEFORE INSERT ON fax_outbox "
        "FOR EACH ROW EXECUTE FUNCTION fax_outbox_guard_retention_columns()"
    )
    op.create_index(
        "fax_outbox_retention_due_idx",
        "fax_outbox",
        ["final_at", "id"],
        postgresql_where=sa.text("final_at IS NOT NULL AND document IS NOT NULL"),
    )
    op.create_index(
        "fax_outbox_final_idx",
        "fax_outbox",
        ["final_at", "id"],
        postgresql_where=sa.text("final_at IS NOT NULL"),
    )
    op.create_index(
        "fax_outbox_mintfax_delete_idx",
        "fax_outbox",
        ["updated_at", "id"],
        postgresql_where=sa.text(
            "document IS NULL AND mintfax_fax_id IS NOT NULL AND mintfax_deleted_at IS NULL"
        ),
    )
    op.create_index("alerts_fax_id_idx", "alerts", ["fax_id"])


def downgrade() -> None:
    purged = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM fax_outbox WHERE document IS NULL"))
        .scalar_one()
    )
    if purged:
        raise RuntimeError(
            f"{purged} fax_outbox row(s) have had their document removed by retention; "
            "0009's schema requires every document: delete those rows first"
        )
    op.drop_index("alerts_fax_id_idx", table_name="alerts")
    op.drop_index("fax_outbox_mintfax_delete_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_final_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_retention_due_idx", table_name="fax_outbox")
    op.execute("DROP TRIGGER fax_outbox_guard_retention_columns ON fax_outbox")
    op.execute("DROP FUNCTION fax_outbox_guard_retention_columns()")
    op.execute("DROP TRIGGER fax_outbox_mark_final ON fax_outbox")
    op.execute("DROP FUNCTION fax_outbox_mark_final()")
    # 0001's guards, as they were.
    previous = import_module("migrations.versions.0001_outbox")
    op.execute(
        previous.TRANSITION_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    )
    op.execute(previous.IDENTITY_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.drop_constraint(
        op.f("fax_outbox_document_purged_iff_null_check"), "fax_outbox", type_="check"
    )
    op.drop_constraint(
        op.f("fax_outbox_document_purged_only_when_final_check"), "fax_outbox", type_="check"
    )
    op.alter_column("fax_outbox", "document", nullable=False)
    op.drop_column("fax_outbox", "mintfax_deleted_at")
    op.drop_column("fax_outbox", "document_purged_at")
    op.drop_column("fax_outbox", "final_at")
