"""Edges: unknown outcomes, alert delivery claims, repeated review alerts.

Revision ID: 0006_edges
Revises: 0005_one_key_per_intent
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_edges"
down_revision: str | None = "0005_one_key_per_intent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# How many times a row has been parked in needs_review: the episode its review alert names.
_COUNT_REVIEWS = """
CREATE FUNCTION fax_outbox_count_reviews() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.review_count := OLD.review_count + 1;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    # Alert delivery: claimed by one process at a time, failed POSTs backed off.
    op.add_column(
        "alerts",
        sa.Column("delivery_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("alerts", sa.Column("next_delivery_at", sa.DateTime(timezone=True)))
    op.add_column("alerts", sa.Column("delivery_claimed_until", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        op.f("alerts_delivery_attempts_nonnegative_check"), "alerts", "delivery_attempts >= 0"
    )
    op.create_index(
        "alerts_undelivered_idx",
        "alerts",
        ["id"],
        postgresql_where=sa.text("notified_at IS NULL"),
    )
    # Repeated review alerts: each stay in needs_review is an episode of its own.
    op.add_column(
        "fax_outbox",
        sa.Column("review_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(_COUNT_REVIEWS)
    op.execute(
        "CREATE TRIGGER fax_outbox_count_reviews BEFORE UPDATE OF status ON fax_outbox "
        "FOR EACH ROW WHEN (NEW.status = 'needs_review' AND OLD.status <> 'needs_review') "
        "EXECUTE FUNCTION fax_outbox_count_reviews()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS fax_outbox_count_reviews ON fax_outbox")
    op.execute("DROP FUNCTION IF EXISTS fax_outbox_count_reviews()")
    op.drop_column("fax_outbox", "review_count")
    op.drop_index("alerts_undelivered_idx", table_name="alerts")
    op.drop_constraint(op.f("alerts_delivery_attempts_nonnegative_check"), "alerts")
    op.drop_column("alerts", "delivery_claimed_until")
    op.drop_column("alerts", "next_delivery_at")
    op.drop_column("alerts", "delivery_attempts")
