"""A batch of webhook events is applied by set, not by one function call per event.

`fax_events_ingest_batch(events jsonb)` gives each event of a batch the outcome
`fax_events_ingest` (0015) would give it alone, in the order of `n`, in two statements instead
of one plpgsql call (five statements) per event: the receiver's database work per event fell
from about 0.26 ms to a fraction of that (bench/webhook_ingest.py), and Postgres shares the
machine with the receiver.

- First every event's lock (its fax id's, or its own id's without a fax), in one global order,
  so two batches never deadlock, and before anything is read: the statement that follows takes
  its snapshot after the locks, so it sees whatever an earlier holder committed.
- Then one statement: an event id already recorded, or met earlier in the batch, is
  `duplicate`; each fresh fax observation goes through the forward-only rule of
  `fax_outbox_apply_observation` (0008), written here as one UPDATE over the batch; every fresh
  event is inserted once with its outcome.
- A fax named by more than one event of the batch cannot be done by set (each event must see
  the state the one before it left), so its events go through `fax_events_ingest` one by one,
  in order, after the rest. mintfax sends a fax's events seconds apart, so this is rare.

The UPDATE repeats `fax_outbox_apply_observation`'s SET list and condition; a test applies
the same events both ways and compares every column (tests/integration/test_ingest_batch.py).

Revision ID: 0016_ingest_batch
Revises: 0015_ingest_once
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_ingest_batch"
down_revision: str | None = "0015_ingest_once"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_FUNCTION = r"""
CREATE FUNCTION fax_events_ingest_batch(p_events jsonb)
RETURNS TABLE (event_n integer, event_outcome text) LANGUAGE plpgsql AS $$
DECLARE
    ev record;
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT hashtext('fax_events:' || coalesce(e->>'fax_id', 'event:' || (e->>'event_id'))) AS k
        FROM jsonb_array_elements(p_events) AS e
        ORDER BY 1
    ) AS keys;

    RETURN QUERY
    WITH e AS (
        SELECT * FROM jsonb_to_recordset(p_events) AS e(
            n integer, event_id text, event_type text, fax_id text, occurred_at timestamptz,
            observation jsonb, payload jsonb)
    ), shared AS (  -- faxes named by more than one event: applied one by one, below
        SELECT e.fax_id FROM e WHERE e.fax_id IS NOT NULL GROUP BY e.fax_id HAVING count(*) > 1
    ), fresh AS (
        SELECT DISTINCT ON (e.event_id) e.* FROM e
        WHERE (SELECT f.id FROM fax_events AS f WHERE f.event_id = e.event_id) IS NULL
          AND (e.fax_id IS NULL OR e.fax_id NOT IN (SELECT s.fax_id FROM shared AS s))
        ORDER BY e.event_id, e.n
    ), obs AS (
        SELECT f.n, (SELECT x.id FROM fax_outbox AS x WHERE x.mintfax_fax_id = f.fax_id) AS row_id,
               o.status, o.observed_at, o.pages, o.attempt, o.error_code,
               o.error_message, o.completed_at, mintfax_status_rank(o.status) AS rank,
               o.status IN ('delivered', 'failed') AS terminal
        FROM fresh AS f
        CROSS JOIN LATERAL jsonb_to_record(f.observation) AS o(
            status text, observed_at timestamptz, pages integer, attempt integer,
            error_code text, error_message text, completed_at timestamptz)
        WHERE f.observation IS NOT NULL AND jsonb_typeof(f.observation) = 'object'
    ), updated AS (
        UPDATE fax_outbox AS r SET
            mintfax_status = o.status,
            pages = coalesce(o.pages, r.pages),
            mintfax_attempt = coalesce(greatest(r.mintfax_attempt, o.attempt), o.attempt,
                                       r.mintfax_attempt),
            error_code = CASE WHEN o.status = 'delivered' THEN NULL
                              ELSE coalesce(o.error_code, r.error_code) END,
            error_message = CASE WHEN o.status = 'delivered' THEN NULL
                                 ELSE coalesce(o.error_message, r.error_message) END,
            last_event_at = o.observed_at,
            status = CASE WHEN o.terminal THEN o.status::fax_status ELSE r.status END,
            status_reason = CASE WHEN o.status = 'failed' THEN coalesce(o.error_code, 'failed')
                                 WHEN o.terminal THEN NULL ELSE r.status_reason END,
            completed_at = CASE WHEN o.terminal THEN coalesce(o.completed_at, o.observed_at)
                                ELSE r.completed_at END,
            next_poll_at = CASE WHEN o.terminal THEN NULL ELSE r.next_poll_at END
        FROM obs AS o
        WHERE o.rank >= 0
          AND r.id = o.row_id
          AND r.status IN ('submitted', 'needs_review')
          AND (o.rank > mintfax_status_rank(r.mintfax_status)
               OR (o.rank = mintfax_status_rank(r.mintfax_status)
                   AND o.observed_at > coalesce(r.last_event_at, '-infinity')))
        RETURNING o.n
    ), decided AS (
        SELECT f.*, (SELECT x.id FROM fax_outbox AS x WHERE x.mintfax_fax_id = f.fax_id)
                    AS outbox_id,
               CASE WHEN f.observation IS NOT NULL THEN
                        CASE WHEN o.rank IS NULL OR o.rank < 0 THEN 'ignored'
                             WHEN u.n IS NOT NULL THEN 'applied'
                             WHEN o.row_id IS NOT NULL THEN 'stale'
                             ELSE 'pending' END
                    WHEN f.event_type IN ('balance.low', 'balance.topup') THEN 'applied'
                    ELSE 'ignored' END AS outcome
        FROM fresh AS f
        LEFT JOIN obs AS o ON o.n = f.n
        LEFT JOIN updated AS u ON u.n = f.n
    ), inserted AS (
        INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, occurred_at, observation,
                                payload, outcome, applied_at, outbox_id)
        SELECT d.event_id, d.event_type, d.fax_id, d.occurred_at, d.observation, d.payload,
               d.outcome, CASE WHEN d.outcome = 'pending' THEN NULL ELSE now() END,
               d.outbox_id
        FROM decided AS d
        ORDER BY d.n
    )
    SELECT d.n, d.outcome FROM decided AS d
    UNION ALL
    SELECT e.n, 'duplicate' FROM e
    WHERE (e.fax_id IS NULL OR e.fax_id NOT IN (SELECT s.fax_id FROM shared AS s))
      AND e.n NOT IN (SELECT d.n FROM decided AS d);

    FOR ev IN
        SELECT * FROM jsonb_to_recordset(p_events) AS e(
            n integer, event_id text, event_type text, fax_id text, occurred_at timestamptz,
            observation jsonb, payload jsonb)
        WHERE e.fax_id IN (SELECT e2.fax_id FROM jsonb_to_recordset(p_events) AS e2(fax_id text)
                           WHERE e2.fax_id IS NOT NULL GROUP BY e2.fax_id HAVING count(*) > 1)
        ORDER BY e.n
    LOOP
        event_n := ev.n;
        event_outcome := fax_events_ingest(ev.event_id, ev.event_type, ev.fax_id,
                                           ev.occurred_at, ev.observation, ev.payload);
        RETURN NEXT;
    END LOOP;
END $$;
"""


def upgrade() -> None:
    op.execute(BATCH_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION fax_events_ingest_batch(jsonb)")
