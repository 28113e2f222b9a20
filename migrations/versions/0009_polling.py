"""Status polling and the balance watch.

- `fax_outbox_poll_due_idx` on `fax_outbox (next_poll_at, id) WHERE status = 'submitted'`: the
  poller's selection (`outbox.repository.claim_for_poll`) walks it and nothing else, whatever
  the size of the table: never-polled rows are its `next_poll_at IS NULL` range, rows due again
  its range up to now.
- `balance_snapshots`: mintfax's balance as the balance watch read it (`observed_at`,
  `available`, `held` in cents, and `low_since`, the start of the low-balance episode the
  reading belongs to, which names the episode's one alert). Only recent readings are kept.

Revision ID: 0009_polling
Revises: 0008_reconciliation
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_polling"
down_revision: str | None = "0008_reconciliation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "fax_outbox_poll_due_idx",
        "fax_outbox",
        ["next_poll_at", "id"],
        postgresql_where=sa.text("status = 'submitted'"),
    )
    op.create_table(
        "balance_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("low_since", sa.DateTime(timezone=True)),
    )
    op.create_index("balance_snapshots_observed_at_idx", "balance_snapshots", ["observed_at"])


def downgrade() -> None:
    op.drop_index("balance_snapshots_observed_at_idx", table_name="balance_snapshots")
    op.drop_table("balance_snapshots")
    op.drop_index("fax_outbox_poll_due_idx", table_name="fax_outbox")
