"""A webhook event is written once: `fax_events_ingest` inserts it with its outcome.

0008's function inserted each event as `ignored`, applied it, then updated the row it had just
written with the outcome: two writes of every event (the update not HOT once `outcome` is
indexed), a third of the receiver's database work. It now looks for the event id first, under
the lock that already serialises everything said about the fax (an event without a fax takes
a lock on its own id), applies the event, and inserts it once with its outcome.

Two copies of one event id that reach the database at once wait on the same lock (an event id
names one event, about one fax), so the second finds the first and answers `duplicate`. Should
copies of an event id differ in their fax (a forgery the signature would have refused), the
unique index still holds: the later insert fails, and its whole transaction, the transition
included, is rolled back.

Revision ID: 0015_ingest_once
Revises: 0014_poll_fresh
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from importlib import import_module

from alembic import op

revision: str = "0015_ingest_once"
down_revision: str | None = "0014_poll_fresh"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INGEST_FUNCTION = r"""
CREATE OR REPLACE FUNCTION fax_events_ingest(
    p_event_id text, p_event_type text, p_fax_id text, p_occurred_at timestamptz,
    p_observation jsonb, p_payload jsonb
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtext('fax_events:' || coalesce(p_fax_id, 'event:' || p_event_id)));
    IF EXISTS (SELECT 1 FROM fax_events WHERE event_id = p_event_id) THEN
        RETURN 'duplicate';
    END IF;
    IF p_observation IS NOT NULL THEN
        result := fax_outbox_apply_observation(
            p_fax_id, p_observation->>'status', (p_observation->>'observed_at')::timestamptz,
            (p_observation->>'pages')::integer, (p_observation->>'attempt')::integer,
            p_observation->>'error_code', p_observation->>'error_message',
            (p_observation->>'completed_at')::timestamptz);
    ELSIF p_event_type IN ('balance.low', 'balance.topup') THEN
        result := 'applied';
    ELSE
        result := 'ignored';
    END IF;
    INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, occurred_at, observation,
                            payload, outcome, applied_at, outbox_id)
    VALUES (p_event_id, p_event_type, p_fax_id, p_occurred_at, p_observation, p_payload,
            result, CASE WHEN result = 'pending' THEN NULL ELSE now() END,
            (SELECT id FROM fax_outbox WHERE mintfax_fax_id = p_fax_id));
    RETURN result;
END $$;
"""


def upgrade() -> None:
    op.execute(INGEST_FUNCTION)


def downgrade() -> None:
    previous = import_module("migrations.versions.0008_reconciliation")
    op.execute(previous.INGEST_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
