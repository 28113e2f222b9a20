"""Fenced leases on the database's clock: a unique token per claim guards every write.

`fax_outbox.lease_token` is set by the claim (`gen_random_uuid()`) and every later write of that
claim is guarded by it, not by `lease_owner` (host:pid, which can repeat across containers; it
stays for display). A lease is an owner, an expiry and a token: all three while `sending`,
none otherwise. `fax_attempts.mintfax_fax_id` and `lease_lost` keep what a POST made on a lost lease
learned, so its result is never dropped.

Revision ID: 0004_fenced_leases
Revises: 0003_attempt_outcomes
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_fenced_leases"
down_revision: str | None = "0003_attempt_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEASE_BEFORE = "(status = 'sending') = (lease_expires_at IS NOT NULL AND lease_owner IS NOT NULL)"
# All three lease columns while sending, none otherwise.
_LEASE_FENCED = (
    "num_nulls(lease_owner, lease_expires_at, lease_token) "
    "= CASE WHEN status = 'sending' THEN 0 ELSE 3 END"
)


def upgrade() -> None:
    op.add_column("fax_outbox", sa.Column("lease_token", postgresql.UUID(as_uuid=True)))
    # Rows in flight during the upgrade get a token of their own: their old worker's write
    # back (guarded by owner) then misses, and the rescuer returns them when the lease ends.
    op.execute("UPDATE fax_outbox SET lease_token = gen_random_uuid() WHERE status = 'sending'")
    op.execute(
        "UPDATE fax_outbox SET lease_owner = NULL, lease_expires_at = NULL "
        "WHERE status <> 'sending' AND (lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL)"
    )
    op.drop_constraint(op.f("fax_outbox_lease_iff_sending_check"), "fax_outbox", type_="check")
    op.create_check_constraint(
        op.f("fax_outbox_lease_iff_sending_check"), "fax_outbox", _LEASE_FENCED
    )
    op.add_column("fax_attempts", sa.Column("mintfax_fax_id", sa.Text()))
    op.add_column(
        "fax_attempts",
        sa.Column("lease_lost", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("fax_attempts", "lease_lost")
    op.drop_column("fax_attempts", "mintfax_fax_id")
    op.drop_constraint(op.f("fax_outbox_lease_iff_sending_check"), "fax_outbox", type_="check")
    op.drop_column("fax_outbox", "lease_token")
    op.create_check_constraint(
        op.f("fax_outbox_lease_iff_sending_check"), "fax_outbox", _LEASE_BEFORE
    )
