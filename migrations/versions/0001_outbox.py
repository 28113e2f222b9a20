"""The outbox: fax_outbox, its attempt log, key trigger, state machine and wake-up NOTIFY.

Revision ID: 0001_outbox
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_outbox"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "pending",
    "sending",
    "submitted",
    "delivered",
    "failed",
    "rejected",
    "cancelled",
    "needs_review",
)

# The canonical string is documented in outbox/keys.py; both must change together.
KEY_FUNCTION = r"""
CREATE FUNCTION fax_outbox_fill_keys() RETURNS trigger LANGUAGE plpgsql AS $$
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

# Status only moves forward (invariant 6); terminal states are sticky. Raised errors name the
# transition so an operator's bad UPDATE explains itself.
TRANSITION_FUNCTION = r"""
CREATE FUNCTION fax_outbox_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.status = OLD.status THEN
        IF OLD.status IN ('delivered', 'failed', 'rejected', 'cancelled')
           AND (NEW.idempotency_key, NEW.to_number, NEW.document)
               IS DISTINCT FROM (OLD.idempotency_key, OLD.to_number, OLD.document) THEN
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

# What a fax is never changes after insert: its key and fingerprint must keep describing the
# stored document. Fires only when an UPDATE names one of these columns, so ordinary status
# updates never compare (and detoast) the document.
IDENTITY_FUNCTION = r"""
CREATE FUNCTION fax_outbox_identity_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.idempotency_key, NEW.to_number, NEW.document_sha256, NEW.filename, NEW.reference)
       IS DISTINCT FROM
       (OLD.idempotency_key, OLD.to_number, OLD.document_sha256, OLD.filename, OLD.reference)
       OR NEW.document IS DISTINCT FROM OLD.document THEN
        RAISE EXCEPTION 'fax_outbox %: recipient, document, filename, reference and key of a '
            'fax never change; enqueue a new fax instead', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

NOTIFY_FUNCTION = r"""
CREATE FUNCTION fax_outbox_notify_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fax_outbox_new', '');
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    status = postgresql.ENUM(*STATUSES, name="fax_status", create_type=False)
    status.create(op.get_bind())
    op.create_table(
        "fax_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("to_number", sa.Text(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("document_sha256", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("retries", sa.SmallInteger(), server_default=sa.text("3"), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("status", status, server_default=sa.text("'pending'"), nullable=False),
        sa.Column("status_reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.Text()),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("mintfax_fax_id", sa.Text()),
        sa.Column("mintfax_status", sa.Text()),
        sa.Column("pages", sa.Integer()),
        sa.Column("last_error", postgresql.JSONB()),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("last_event_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        # Names below are final (op.f): the metadata's naming convention must not expand them
        # a second time into "fax_outbox_fax_outbox_..._check_check".
        sa.UniqueConstraint("idempotency_key", name="fax_outbox_idempotency_key_key"),
        sa.UniqueConstraint("mintfax_fax_id", name="fax_outbox_mintfax_fax_id_key"),
        sa.CheckConstraint(
            r"to_number ~ '^\+[1-9][0-9]{1,14}$'", name=op.f("fax_outbox_to_number_e164_check")
        ),
        sa.CheckConstraint(
            "octet_length(document) BETWEEN 1 AND 10485760",
            name=op.f("fax_outbox_document_size_check"),
        ),
        sa.CheckConstraint(
            "char_length(filename) BETWEEN 1 AND 255", name=op.f("fax_outbox_filename_length_check")
        ),
        sa.CheckConstraint(
            "char_length(reference) BETWEEN 1 AND 255",
            name=op.f("fax_outbox_reference_length_check"),
        ),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 255",
            name=op.f("fax_outbox_idempotency_key_length_check"),
        ),
        sa.CheckConstraint("retries BETWEEN 0 AND 10", name=op.f("fax_outbox_retries_range_check")),
        sa.CheckConstraint("attempts >= 0", name=op.f("fax_outbox_attempts_nonnegative_check")),
        sa.CheckConstraint(
            "jsonb_typeof(metadata) = 'object'", name=op.f("fax_outbox_metadata_object_check")
        ),
        sa.CheckConstraint(
            "(status = 'sending') = (lease_expires_at IS NOT NULL AND lease_owner IS NOT NULL)",
            name=op.f("fax_outbox_lease_iff_sending_check"),
        ),
        sa.CheckConstraint(
            "status NOT IN ('submitted', 'delivered') OR mintfax_fax_id IS NOT NULL",
            name=op.f("fax_outbox_accepted_has_fax_id_check"),
        ),
    )
    op.create_index(
        "fax_outbox_due_idx",
        "fax_outbox",
        ["next_attempt_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "fax_outbox_lease_idx",
        "fax_outbox",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'sending'"),
    )
    op.create_index(
        "fax_outbox_submitted_idx",
        "fax_outbox",
        ["submitted_at"],
        postgresql_where=sa.text("status = 'submitted'"),
    )
    op.create_index("fax_outbox_status_idx", "fax_outbox", ["status"])

    op.create_table(
        "fax_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "fax_id",
            sa.BigInteger(),
            sa.ForeignKey("fax_outbox.id", name="fax_attempts_fax_id_fkey", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer()),
        sa.Column("error", postgresql.JSONB()),
        sa.Column("request_id", sa.Text()),
        sa.CheckConstraint("attempt >= 1", name=op.f("fax_attempts_attempt_positive_check")),
        sa.CheckConstraint(
            "duration_ms >= 0", name=op.f("fax_attempts_duration_nonnegative_check")
        ),
    )
    op.create_index("fax_attempts_fax_id_idx", "fax_attempts", ["fax_id", "attempt"])

    op.execute(KEY_FUNCTION)
    op.execute(
        "CREATE TRIGGER fax_outbox_fill_keys BEFORE INSERT ON fax_outbox "
        "FOR EACH ROW EXECUTE FUNCTION fax_outbox_fill_keys()"
    )
    op.execute(TRANSITION_FUNCTION)
    op.execute(
        "CREATE TRIGGER fax_outbox_guard_transition BEFORE UPDATE ON fax_outbox "
        "FOR EACH ROW EXECUTE FUNCTION fax_outbox_guard_transition()"
    )
    op.execute(IDENTITY_FUNCTION)
    op.execute(
        "CREATE TRIGGER fax_outbox_identity_immutable BEFORE UPDATE OF idempotency_key, "
        "to_number, document, document_sha256, filename, reference ON fax_outbox "
        "FOR EACH ROW EXECUTE FUNCTION fax_outbox_identity_immutable()"
    )
    op.execute(NOTIFY_FUNCTION)
    # One NOTIFY per statement, not per row: a bulk insert wakes the relay once.
    op.execute(
        "CREATE TRIGGER fax_outbox_notify_new AFTER INSERT ON fax_outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION fax_outbox_notify_new()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS fax_outbox_notify_new ON fax_outbox")
    op.execute("DROP TRIGGER IF EXISTS fax_outbox_identity_immutable ON fax_outbox")
    op.execute("DROP TRIGGER IF EXISTS fax_outbox_guard_transition ON fax_outbox")
    op.execute("DROP TRIGGER IF EXISTS fax_outbox_fill_keys ON fax_outbox")
    op.execute("DROP FUNCTION IF EXISTS fax_outbox_notify_new()")
    op.execute("DROP FUNCTION IF EXISTS fax_outbox_identity_immutable()")
    op.execute("DROP FUNCTION IF EXISTS fax_outbox_guard_transition()")
    op.execute("DROP FUNCTION IF EXISTS fax_outbox_fill_keys()")
    op.drop_table("fax_attempts")
    op.drop_table("fax_outbox")
    postgresql.ENUM(name="fax_status").drop(op.get_bind())
