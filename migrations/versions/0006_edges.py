"""Edges: unknown outcomes, alert delivery claims, repeated review alerts.

Revision ID: 0006_edges
Revises: 0005_one_key_per_intent
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op  # noqa: F401 (filled in by the change this revision belongs to)

revision: str = "0006_edges"
down_revision: str | None = "0005_one_key_per_intent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
