"""One intent, one key: plain-SQL inserts cannot set the columns the system owns.

Revision ID: 0005_one_key_per_intent
Revises: 0004_fenced_leases
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op  # noqa: F401 (filled in by the change this revision belongs to)

revision: str = "0005_one_key_per_intent"
down_revision: str | None = "0004_fenced_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
