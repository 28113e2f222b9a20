"""Fenced leases on the database's clock: a unique token per claim guards every write.

Revision ID: 0004_fenced_leases
Revises: 0003_attempt_outcomes
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op  # noqa: F401 (filled in by the change this revision belongs to)

revision: str = "0004_fenced_leases"
down_revision: str | None = "0003_attempt_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
