"""Unknown outcomes and setup faults: a row remembers that an attempt may have created its fax;
the fleet can pause for an answer that is not mintfax's and for a run of identical refusals.

`outcome_unknown` is set by any attempt whose outcome nobody knows (a timeout, a reset, a 5xx,
an unreadable 2xx, a lost lease). A row whose attempts run out with it set goes to
`needs_review`, never to `failed`: `failed` would be sticky and let a re-enqueue send a second
fax.

Like every column the system owns, `outcome_unknown` (and 0006's `review_count`) cannot be set
by a plain-SQL insert: a second, small insert trigger refuses them, in the words of 0005's
(`SET LOCAL faxout.allow_system_columns = on` lets test fixtures through).

Revision ID: 0007_unknown_outcomes
Revises: 0006_edges
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_unknown_outcomes"
down_revision: str | None = "0006_edges"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# outbox.models.PauseReason when this revision was written.
REASONS_BEFORE = (
    "insufficient_balance",
    "authentication_failed",
    "api_key_environment_mismatch",
    "operator",
)
REASONS = (*REASONS_BEFORE, "unexpected_response", "rejections_in_a_row")


def _reason_check(reasons: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("fleet_pauses_reason_known_check"), "fleet_pauses", type_="check")
    op.create_check_constraint(
        op.f("fleet_pauses_reason_known_check"),
        "fleet_pauses",
        "reason IN (" + ", ".join(f"'{r}'" for r in reasons) + ")",
    )


_GUARD_LATER_COLUMNS = r"""
CREATE FUNCTION fax_outbox_guard_later_columns() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owned text[] := '{}';
BEGIN
    IF (NEW.review_count <> 0 OR NEW.outcome_unknown)
       AND coalesce(current_setting('faxout.allow_system_columns', true), '') <> 'on' THEN
        IF NEW.review_count <> 0 THEN owned := owned || 'review_count'::text; END IF;
        IF NEW.outcome_unknown THEN owned := owned || 'outcome_unknown'::text; END IF;
        RAISE EXCEPTION 'fax_outbox: % set by the system, not by an insert',
            array_to_string(owned, ', ')
            || CASE WHEN cardinality(owned) = 1 THEN ' is' ELSE ' are' END
            USING ERRCODE = 'check_violation',
                  HINT = 'An insert sets to_number, document, filename and reference, and '
                         'optionally retries, metadata and idempotency_key.';
    END IF;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.add_column(
        "fax_outbox",
        sa.Column("outcome_unknown", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # Rows that already hold an attempt of unknown outcome (the last error says so).
    op.execute(
        "UPDATE fax_outbox SET outcome_unknown = true "
        "WHERE last_error->>'kind' IN ('TransportError', 'ServerError', 'LeaseExpired')"
    )
    _reason_check(REASONS)
    op.execute(_GUARD_LATER_COLUMNS)
    op.execute(
        "CREATE TRIGGER fax_outbox_guard_later_columns BEFORE INSERT ON fax_outbox "
        "FOR EACH ROW EXECUTE FUNCTION fax_outbox_guard_later_columns()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER fax_outbox_guard_later_columns ON fax_outbox")
    op.execute("DROP FUNCTION fax_outbox_guard_later_columns()")
    op.execute(
        "DELETE FROM fleet_pauses WHERE reason IN ('unexpected_response', 'rejections_in_a_row')"
    )
    _reason_check(REASONS_BEFORE)
    op.drop_column("fax_outbox", "outcome_unknown")
