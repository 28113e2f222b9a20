"""Indexes that keep a metrics scrape and the dashboard cheap at a million rows.

`outbox/fleet_status.py` reads the whole fleet's state from the tables on every scrape, so
each of its statements walks an index, never the table:

- `fax_outbox_pending_created_idx` on `fax_outbox (created_at) WHERE status = 'pending'`:
  the oldest pending fax is its first entry.
- `fax_outbox_latency_idx` on `fax_outbox (submitted_at, created_at, completed_at) WHERE
  submitted_at IS NOT NULL`: the latency histograms (insert to submit, submit to final) are an
  index-only scan, and the submissions of the last hour a range of it.
- `fax_outbox_completed_at_idx` on `fax_outbox (status, completed_at) WHERE completed_at IS
  NOT NULL`: the newest failed or rejected rows are a range of it, and so are the finals of
  the last hour (one range per final status).
- `fax_outbox_created_at_idx` on `fax_outbox (created_at)`: the enqueues of the last hour.
- `fax_attempts_outcome_idx` on `fax_attempts (outcome, http_status)`: the attempt counters
  (submitted, retries, 429s, 402s) are an index-only count.
- `fax_events_outcome_idx` on `fax_events (outcome)`: webhook events by outcome, likewise.

Revision ID: 0013_metrics
Revises: 0012_operate
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_metrics"
down_revision: str | None = "0012_operate"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "fax_outbox_pending_created_idx",
        "fax_outbox",
        ["created_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "fax_outbox_latency_idx",
        "fax_outbox",
        ["submitted_at", "created_at", "completed_at"],
        postgresql_where=sa.text("submitted_at IS NOT NULL"),
    )
    op.create_index(
        "fax_outbox_completed_at_idx",
        "fax_outbox",
        ["status", "completed_at"],
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )
    op.create_index("fax_outbox_created_at_idx", "fax_outbox", ["created_at"])
    op.create_index("fax_attempts_outcome_idx", "fax_attempts", ["outcome", "http_status"])
    op.create_index("fax_events_outcome_idx", "fax_events", ["outcome"])


def downgrade() -> None:
    op.drop_index("fax_events_outcome_idx", table_name="fax_events")
    op.drop_index("fax_attempts_outcome_idx", table_name="fax_attempts")
    op.drop_index("fax_outbox_created_at_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_completed_at_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_latency_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_pending_created_idx", table_name="fax_outbox")
