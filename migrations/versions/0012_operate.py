"""Operator actions: each retry, resend and cancel an operator makes is kept in the row's history.

- `fax_actions`: one row per action that changed a fax (`retry`: back to `pending` with its
  key; `resend`: sent again as a new fax with a new key, `detail.new_fax_id` names it;
  `resent_from`: on that new fax, `detail.resent_from` names the original; `cancel`), with who
  made it (`actor`: the OS user, or `--as NAME`), when (the database's clock), the status
  before and after, and a JSON `detail`. A refusal changes nothing and is not recorded. Rows
  follow their fax (ON DELETE CASCADE), like `fax_attempts`, so retention can delete a fax.
- `fax_outbox_reference_idx`: operators find faxes by the application's reference
  (`faxout list --reference`, `faxout show --reference`, `fax_states_by_reference`) without a
  scan of the table.

Revision ID: 0012_operate
Revises: 0011_liveness
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_operate"
down_revision: str | None = "0011_liveness"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# outbox.models.ACTION_KINDS when this revision was written.
ACTIONS = ("retry", "resend", "resent_from", "cancel")


def upgrade() -> None:
    op.create_table(
        "fax_actions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "fax_id",
            sa.BigInteger(),
            sa.ForeignKey("fax_outbox.id", ondelete="CASCADE", name="fax_actions_fax_id_fkey"),
            nullable=False,
        ),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("from_status", sa.Text(), nullable=False),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column(
            "detail",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "action IN (" + ", ".join(f"'{a}'" for a in ACTIONS) + ")",
            name=op.f("fax_actions_action_known_check"),
        ),
        sa.CheckConstraint(
            "char_length(actor) BETWEEN 1 AND 255", name=op.f("fax_actions_actor_length_check")
        ),
        sa.CheckConstraint(
            "jsonb_typeof(detail) = 'object'", name=op.f("fax_actions_detail_object_check")
        ),
    )
    op.create_index("fax_actions_fax_id_idx", "fax_actions", ["fax_id", "id"])
    op.create_index("fax_outbox_reference_idx", "fax_outbox", ["reference"])


def downgrade() -> None:
    op.drop_index("fax_outbox_reference_idx", table_name="fax_outbox")
    op.drop_index("fax_actions_fax_id_idx", table_name="fax_actions")
    op.drop_table("fax_actions")
