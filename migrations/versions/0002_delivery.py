"""Delivery: dispatch marker on fax_outbox, fleet pause episodes, alerts.

Revision ID: 0002_delivery
Revises: 0001_outbox
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_delivery"
down_revision: str | None = "0001_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fax_outbox", sa.Column("dispatched_at", sa.DateTime(timezone=True)))
    op.create_table(
        "fleet_pauses",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "detail", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_by", sa.Text()),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("ended_by", sa.Text()),
        sa.CheckConstraint(
            "reason IN ('insufficient_balance', 'authentication_failed', "
            "'api_key_environment_mismatch', 'operator')",
            name=op.f("fleet_pauses_reason_known_check"),
        ),
        sa.CheckConstraint(
            "ended_at IS NULL OR ended_at >= started_at",
            name=op.f("fleet_pauses_ends_after_start_check"),
        ),
    )
    op.create_index(
        "fleet_pauses_open_reason_idx",
        "fleet_pauses",
        ["reason"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), server_default=sa.text("'error'"), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "detail", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "fax_id",
            sa.BigInteger(),
            sa.ForeignKey("fax_outbox.id", name="alerts_fax_id_fkey", ondelete="SET NULL"),
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True)),
        sa.Column("notify_error", sa.Text()),
        sa.UniqueConstraint("dedupe_key", name="alerts_dedupe_key_key"),
        sa.CheckConstraint(
            "severity IN ('warning', 'error', 'critical')", name=op.f("alerts_severity_known_check")
        ),
    )
    op.create_index("alerts_created_at_idx", "alerts", ["created_at"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("fleet_pauses")
    op.drop_column("fax_outbox", "dispatched_at")
