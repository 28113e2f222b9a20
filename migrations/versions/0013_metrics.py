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

Counters derived from rows must not go down when retention deletes rows (Prometheus would
take the drop for a restart of the counter): `metric_tallies` keeps what was deleted, by kind
and label, added by one statement-level trigger per table (transition tables, so a purge of a
thousand rows is one update per label, and nothing runs on inserts or updates):

- `fax_outbox`: `faxes_deleted` by status;
- `fax_attempts`: `attempts_deleted` by `outcome:http_status`;
- `fax_events`: `events_deleted` by outcome.

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


TALLY_FUNCTION = r"""
CREATE FUNCTION metric_tallies_add_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'fax_outbox' THEN
        INSERT INTO metric_tallies (kind, label, value)
        SELECT 'faxes_deleted', status::text, count(*) FROM gone GROUP BY 2
        ON CONFLICT (kind, label) DO UPDATE SET value = metric_tallies.value + EXCLUDED.value;
    ELSIF TG_TABLE_NAME = 'fax_attempts' THEN
        INSERT INTO metric_tallies (kind, label, value)
        SELECT 'attempts_deleted', outcome || ':' || coalesce(http_status::text, ''), count(*)
        FROM gone GROUP BY 2
        ON CONFLICT (kind, label) DO UPDATE SET value = metric_tallies.value + EXCLUDED.value;
    ELSE
        INSERT INTO metric_tallies (kind, label, value)
        SELECT 'events_deleted', outcome, count(*) FROM gone GROUP BY 2
        ON CONFLICT (kind, label) DO UPDATE SET value = metric_tallies.value + EXCLUDED.value;
    END IF;
    RETURN NULL;
END $$;
"""
TALLIED_TABLES = ("fax_outbox", "fax_attempts", "fax_events")


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
    op.create_table(
        "metric_tallies",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "label", name="metric_tallies_pkey"),
        sa.CheckConstraint("value >= 0", name=op.f("metric_tallies_value_nonnegative_check")),
    )
    op.execute(TALLY_FUNCTION)
    for table in TALLIED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_tally_deleted AFTER DELETE ON {table} "
            "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
            "EXECUTE FUNCTION metric_tallies_add_deleted()"
        )


def downgrade() -> None:
    for table in TALLIED_TABLES:
        op.execute(f"DROP TRIGGER {table}_tally_deleted ON {table}")
    op.execute("DROP FUNCTION metric_tallies_add_deleted()")
    op.drop_table("metric_tallies")
    op.drop_index("fax_events_outcome_idx", table_name="fax_events")
    op.drop_index("fax_attempts_outcome_idx", table_name="fax_attempts")
    op.drop_index("fax_outbox_created_at_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_completed_at_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_latency_idx", table_name="fax_outbox")
    op.drop_index("fax_outbox_pending_created_idx", table_name="fax_outbox")
