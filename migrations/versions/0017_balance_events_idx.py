"""A small index of mintfax's balance events, for the low-balance episode's question "has
mintfax said `balance.low` since its last `balance.topup`?" (outbox/balance_watch.py), asked
in the webhook's transaction: without it, a scan of every fax event.

Revision ID: 0017_balance_events_idx
Revises: 0016_ingest_batch
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017_balance_events_idx"
down_revision: str | None = "0016_ingest_batch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX fax_events_balance_idx ON fax_events (event_type, occurred_at) "
        "WHERE event_type IN ('balance.low', 'balance.topup')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX fax_events_balance_idx")
