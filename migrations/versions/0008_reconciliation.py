"""Reconciliation: every fax reaches its true final state, from webhooks and polls alike.

- `fax_outbox` gains what mintfax tells after acceptance: `error_code`, `error_message`,
  `mintfax_attempt` (the carrier attempt in progress), and the poll schedule `next_poll_at`,
  `poll_attempts`. None of them can be set by a plain-SQL insert.
- `fax_events`: every webhook event, recorded once (unique `event_id`) in the transaction that
  applies it, with what it says about its fax (`observation`) and what became of it (`outcome`:
  applied, stale, pending, duplicate-free by construction, ignored).
- `fax_outbox_apply_observation(...)`: THE state-transition function. Events, polls and operator
  lookups all call it, so they follow one set of rules: a row mintfax owns (`submitted`, or
  `needs_review` once its fax id is known) moves only forward along mintfax's statuses
  (queued < submitted < sending = in_progress < delivered | failed); terminal states are sticky;
  an observation older than the newest applied one at the same rank changes nothing. Returns
  'applied', 'stale' (a row holds the fax id, the news is old or the row is final) or 'pending'
  (no row holds the fax id yet).
- An event for a fax id no row holds yet is kept (`outcome = 'pending'`) and applied by a
  trigger the moment a row stores that fax id. The trigger and the webhook side both take a
  transaction advisory lock on the fax id first, so whichever commits first, nothing is lost.
- `fax_events_ingest(...)`: a webhook event in one statement: the lock, the once-only record,
  the transition and the event's outcome.
- `NOTIFY fax_outbox_final` with `{"id", "status", "reference"}` whenever a row reaches a final
  state (delivered, failed, rejected, cancelled): any language can LISTEN.

Revision ID: 0008_reconciliation
Revises: 0007_unknown_outcomes
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from importlib import import_module

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_reconciliation"
down_revision: str | None = "0007_unknown_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# mintfax's statuses in the order a fax moves through them (mintfax-api.md section 3);
# "sending" appears in generation A's events although the enum has only in_progress.
RANK_FUNCTION = r"""
CREATE FUNCTION mintfax_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status WHEN 'queued' THEN 0 WHEN 'submitted' THEN 1 WHEN 'sending' THEN 2
        WHEN 'in_progress' THEN 2 WHEN 'delivered' THEN 3 WHEN 'failed' THEN 3 ELSE -1 END
$$;
"""

APPLY_FUNCTION = r"""
CREATE FUNCTION fax_outbox_apply_observation(
    p_fax_id text, p_status text, p_observed_at timestamptz, p_pages integer,
    p_attempt integer, p_error_code text, p_error_message text, p_completed_at timestamptz
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_rank integer := mintfax_status_rank(p_status);
    terminal boolean := p_status IN ('delivered', 'failed');
    touched bigint;
BEGIN
    IF new_rank < 0 THEN
        RETURN 'ignored';
    END IF;
    UPDATE fax_outbox SET
        mintfax_status = p_status,
        pages = coalesce(p_pages, pages),
        mintfax_attempt = coalesce(greatest(mintfax_attempt, p_attempt), p_attempt,
                                   mintfax_attempt),
        error_code = CASE WHEN p_status = 'delivered' THEN NULL
                          ELSE coalesce(p_error_code, error_code) END,
        error_message = CASE WHEN p_status = 'delivered' THEN NULL
                             ELSE coalesce(p_error_message, error_message) END,
        last_event_at = p_observed_at,
        status = CASE WHEN terminal THEN p_status::fax_status ELSE status END,
        status_reason = CASE WHEN p_status = 'failed' THEN coalesce(p_error_code, 'failed')
                             WHEN terminal THEN NULL ELSE status_reason END,
        completed_at = CASE WHEN terminal THEN coalesce(p_completed_at, p_observed_at)
                            ELSE completed_at END,
        next_poll_at = CASE WHEN terminal THEN NULL ELSE next_poll_at END
    WHERE mintfax_fax_id = p_fax_id
      AND status IN ('submitted', 'needs_review')
      AND (new_rank > mintfax_status_rank(mintfax_status)
           OR (new_rank = mintfax_status_rank(mintfax_status)
               AND p_observed_at > coalesce(last_event_at, '-infinity')))
    RETURNING id INTO touched;
    IF touched IS NOT NULL THEN
        RETURN 'applied';
    END IF;
    IF EXISTS (SELECT 1 FROM fax_outbox WHERE mintfax_fax_id = p_fax_id) THEN
        RETURN 'stale';
    END IF;
    RETURN 'pending';
END $$;
"""

PENDING_FUNCTION = r"""
CREATE FUNCTION fax_outbox_apply_pending_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev record;
    result text;
BEGIN
    -- The webhook side takes the same lock before it looks for the row: see the docstring.
    PERFORM pg_advisory_xact_lock(hashtext('fax_events:' || NEW.mintfax_fax_id));
    FOR ev IN
        SELECT id, observation AS o FROM fax_events
        WHERE mintfax_fax_id = NEW.mintfax_fax_id AND outcome = 'pending'
        ORDER BY occurred_at, id
    LOOP
        result := fax_outbox_apply_observation(
            NEW.mintfax_fax_id, ev.o->>'status', (ev.o->>'observed_at')::timestamptz,
            (ev.o->>'pages')::integer, (ev.o->>'attempt')::integer, ev.o->>'error_code',
            ev.o->>'error_message', (ev.o->>'completed_at')::timestamptz);
        UPDATE fax_events SET outcome = result, outbox_id = NEW.id, applied_at = now()
        WHERE id = ev.id;
    END LOOP;
    RETURN NULL;
END $$;
"""

# A webhook event in one statement (one round trip, atomic in autocommit): the fax's lock,
# the once-only record, the transition, and what became of the event. Returns the outcome, or
# 'duplicate' for an event id seen before (nothing changes).
INGEST_FUNCTION = r"""
CREATE FUNCTION fax_events_ingest(
    p_event_id text, p_event_type text, p_fax_id text, p_occurred_at timestamptz,
    p_observation jsonb, p_payload jsonb
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
    result text;
BEGIN
    IF p_fax_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('fax_events:' || p_fax_id));
    END IF;
    INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, occurred_at, observation,
                            payload, outcome)
    VALUES (p_event_id, p_event_type, p_fax_id, p_occurred_at, p_observation, p_payload,
            'ignored')
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
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
    UPDATE fax_events SET
        outcome = result,
        applied_at = CASE WHEN result = 'pending' THEN NULL ELSE now() END,
        outbox_id = (SELECT id FROM fax_outbox WHERE mintfax_fax_id = p_fax_id)
    WHERE id = new_id;
    RETURN result;
END $$;
"""

FINAL_NOTIFY_FUNCTION = r"""
CREATE FUNCTION fax_outbox_notify_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fax_outbox_final', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'reference', NEW.reference)::text);
    RETURN NULL;
END $$;
"""

# 0007's guard of the columns added after 0005, now with this revision's as well.
GUARD_FUNCTION = r"""
CREATE OR REPLACE FUNCTION fax_outbox_guard_later_columns() RETURNS trigger LANGUAGE plpgsql
AS $$
DECLARE
    owned text[] := '{}';
BEGIN
    IF (NEW.review_count <> 0 OR NEW.outcome_unknown OR NEW.poll_attempts <> 0
        OR NOT (ROW(NEW.error_code, NEW.error_message, NEW.mintfax_attempt, NEW.next_poll_at)
                IS NULL))
       AND coalesce(current_setting('faxout.allow_system_columns', true), '') <> 'on' THEN
        IF NEW.review_count <> 0 THEN owned := owned || 'review_count'::text; END IF;
        IF NEW.outcome_unknown THEN owned := owned || 'outcome_unknown'::text; END IF;
        IF NEW.poll_attempts <> 0 THEN owned := owned || 'poll_attempts'::text; END IF;
        IF NEW.error_code IS NOT NULL THEN owned := owned || 'error_code'::text; END IF;
        IF NEW.error_message IS NOT NULL THEN owned := owned || 'error_message'::text; END IF;
        IF NEW.mintfax_attempt IS NOT NULL THEN owned := owned || 'mintfax_attempt'::text;
        END IF;
        IF NEW.next_poll_at IS NOT NULL THEN owned := owned || 'next_poll_at'::text; END IF;
        RAISE EXCEPTION 'fax_outbox: % set by the system, not by an insert',
            array_to_string(owned, ', ')
            || CASE WHEN cardinality(owned) = 1 THEN ' is' ELSE ' are' END
            USING ERRCODE = 'check_violation',
                  HINT = 'An insert sets to_number, document, filename and reference, and '
                         'optionally retries, metadata and idempotency_key.';
    END IF;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.add_column("fax_outbox", sa.Column("error_code", sa.Text()))
    op.add_column("fax_outbox", sa.Column("error_message", sa.Text()))
    op.add_column("fax_outbox", sa.Column("mintfax_attempt", sa.Integer()))
    op.add_column("fax_outbox", sa.Column("next_poll_at", sa.DateTime(timezone=True)))
    op.add_column(
        "fax_outbox",
        sa.Column("poll_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.create_check_constraint(
        op.f("fax_outbox_poll_attempts_nonnegative_check"), "fax_outbox", "poll_attempts >= 0"
    )
    op.create_table(
        "fax_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("mintfax_fax_id", sa.Text()),
        sa.Column(
            "outbox_id", sa.BigInteger(), sa.ForeignKey("fax_outbox.id", ondelete="SET NULL")
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("observation", postgresql.JSONB()),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", name=op.f("fax_events_event_id_key")),
        sa.CheckConstraint(
            "outcome IN ('applied', 'stale', 'pending', 'ignored')",
            name=op.f("fax_events_outcome_known_check"),
        ),
    )
    op.create_index(
        "fax_events_pending_idx",
        "fax_events",
        ["mintfax_fax_id"],
        postgresql_where=sa.text("outcome = 'pending'"),
    )
    op.create_index("fax_events_outbox_id_idx", "fax_events", ["outbox_id"])
    op.execute(RANK_FUNCTION)
    op.execute(APPLY_FUNCTION)
    op.execute(PENDING_FUNCTION)
    op.execute(INGEST_FUNCTION)
    op.execute(
        "CREATE TRIGGER fax_outbox_apply_pending_events AFTER UPDATE OF mintfax_fax_id "
        "ON fax_outbox FOR EACH ROW WHEN (OLD.mintfax_fax_id IS NULL "
        "AND NEW.mintfax_fax_id IS NOT NULL) EXECUTE FUNCTION fax_outbox_apply_pending_events()"
    )
    op.execute(FINAL_NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER fax_outbox_notify_final AFTER UPDATE OF status ON fax_outbox "
        "FOR EACH ROW WHEN (NEW.status IN ('delivered', 'failed', 'rejected', 'cancelled') "
        "AND OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION fax_outbox_notify_final()"
    )
    op.execute(GUARD_FUNCTION)


def downgrade() -> None:
    # The guard names this revision's columns: restore 0007's version before they go.
    previous = import_module("migrations.versions.0007_unknown_outcomes")
    op.execute(
        previous._GUARD_LATER_COLUMNS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    )
    op.execute("DROP TRIGGER fax_outbox_notify_final ON fax_outbox")
    op.execute("DROP FUNCTION fax_outbox_notify_final()")
    op.execute("DROP TRIGGER fax_outbox_apply_pending_events ON fax_outbox")
    op.execute("DROP FUNCTION fax_outbox_apply_pending_events()")
    op.execute(
        "DROP FUNCTION fax_outbox_apply_observation(text, text, timestamptz, integer, integer, "
        "text, text, timestamptz)"
    )
    op.execute("DROP FUNCTION fax_events_ingest(text, text, text, timestamptz, jsonb, jsonb)")
    op.execute("DROP FUNCTION mintfax_status_rank(text)")
    op.drop_table("fax_events")
    op.drop_constraint(
        op.f("fax_outbox_poll_attempts_nonnegative_check"), "fax_outbox", type_="check"
    )
    for column in (
        "poll_attempts",
        "next_poll_at",
        "mintfax_attempt",
        "error_message",
        "error_code",
    ):
        op.drop_column("fax_outbox", column)
