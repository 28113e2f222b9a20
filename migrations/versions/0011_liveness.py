"""Liveness: heartbeats of the fleet's processes, and the episodes in which a role was down.

- `heartbeats`: one row per running process (`instance`, a random id the process draws when it
  starts, so a restarted container with the same hostname and pid 1 is a new row), with its
  `role` (relay, beat, worker, webhooks), a display name (`process`), `hostname`, `pid`, and
  `started_at` / `seen_at` on the database's clock; `stopped_at` when it shut down cleanly.
  Rows of processes gone for long are deleted by the checkers.
- `liveness_episodes`: one row per stretch of time in which no process of a role was alive
  (`ended_at` NULL while it lasts); the unique partial index on `role` makes two checkers that
  notice at once open one episode, which names the episode's one alert.

Revision ID: 0011_liveness
Revises: 0010_retention
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0011_liveness"
down_revision: str | None = "0010_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "role IN ('relay', 'beat', 'worker', 'webhooks')"


def upgrade() -> None:
    op.create_table(
        "heartbeats",
        sa.Column("instance", UUID(as_uuid=True), primary_key=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("process", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(ROLES, name=op.f("heartbeats_role_known_check")),
        sa.CheckConstraint("seen_at >= started_at", name=op.f("heartbeats_seen_after_start_check")),
    )
    op.create_index("heartbeats_role_seen_at_idx", "heartbeats", ["role", "seen_at"])
    op.create_table(
        "liveness_episodes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(ROLES, name=op.f("liveness_episodes_role_known_check")),
        sa.CheckConstraint(
            "ended_at IS NULL OR ended_at >= started_at",
            name=op.f("liveness_episodes_ends_after_start_check"),
        ),
    )
    op.create_index(
        "liveness_episodes_open_role_idx",
        "liveness_episodes",
        ["role"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("liveness_episodes_open_role_idx", table_name="liveness_episodes")
    op.drop_table("liveness_episodes")
    op.drop_index("heartbeats_role_seen_at_idx", table_name="heartbeats")
    op.drop_table("heartbeats")
