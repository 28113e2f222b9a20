"""Attempt log: `fax_attempts.outcome` holds only the known outcomes (outbox.models.Outcome).

Revision ID: 0003_attempt_outcomes
Revises: 0002_delivery
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_attempt_outcomes"
down_revision: str | None = "0002_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values of outbox.models.ATTEMPT_OUTCOMES when this revision was written: exactly what
# submit has recorded since 0001, so every existing row passes. A later vocabulary change is a
# later revision, never an edit of this one.
OUTCOMES = (
    "submitted",
    "replayed",
    "retry_scheduled",
    "rate_limited",
    "in_progress",
    "paused",
    "rejected",
    "rejected_locally",
    "failed",
    "needs_review",
)


def upgrade() -> None:
    op.create_check_constraint(
        op.f("fax_attempts_outcome_known_check"),
        "fax_attempts",
        "outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fax_attempts_outcome_known_check"), "fax_attempts", type_="check")
