"""The outbox schema as SQLAlchemy Core tables: the source Alembic migrations are checked against.

State machine of `fax_outbox.status` (also drawn in the README, enforced by a trigger):

    pending ──claim──> sending ──201──> submitted ──webhook/poll──> delivered | failed
       ^                 │ │ │
       └──retry/rescue───┘ │ └──4xx/bad file──> rejected
                           └──409 reuse / unknown outcome after 24 h──> needs_review
    pending | needs_review ──operator──> cancelled
    sending ──retries exhausted──> failed

Terminal states (`delivered`, `failed`, `rejected`, `cancelled`) never change.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from outbox.keys import HEADER_VALUE_SQL


class FaxStatus(StrEnum):
    """Public contract: the statuses of a row in `fax_outbox`."""

    PENDING = "pending"
    SENDING = "sending"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"


TERMINAL_STATUSES = frozenset(
    {FaxStatus.DELIVERED, FaxStatus.FAILED, FaxStatus.REJECTED, FaxStatus.CANCELLED}
)


class Outcome(StrEnum):
    """What one submission of a row did: what `submit_fax` returns, and the vocabulary of
    `fax_attempts.outcome` (a CHECK constraint holds that column to `ATTEMPT_OUTCOMES`)."""

    SUBMITTED = "submitted"
    REPLAYED = "replayed"  # accepted: mintfax replayed the 201 of an earlier attempt
    RETRY_SCHEDULED = "retry_scheduled"
    RATE_LIMITED = "rate_limited"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    REJECTED = "rejected"  # by mintfax
    REJECTED_LOCALLY = "rejected_locally"  # by our own checks, without calling mintfax
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"
    # Never in the attempt log: nothing was attempted, or the attempt's lease was lost.
    NOT_CLAIMED = "not_claimed"
    THROTTLED = "throttled"
    LEASE_LOST = "lease_lost"


ATTEMPT_OUTCOMES = tuple(
    o for o in Outcome if o not in (Outcome.NOT_CLAIMED, Outcome.THROTTLED, Outcome.LEASE_LOST)
)

NOTIFY_CHANNEL = "fax_outbox_new"

# mintfax's carrier retries of a fax when the caller names none (the column's default).
DEFAULT_RETRIES = 3

metadata = MetaData(
    naming_convention={
        "ix": "%(table_name)s_%(column_0_N_name)s_idx",
        "uq": "%(table_name)s_%(column_0_N_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "pk": "%(table_name)s_pkey",
    }
)

fax_status_enum = Enum(
    FaxStatus,
    name="fax_status",
    values_callable=lambda members: [m.value for m in members],
    metadata=metadata,
)

_NOW = text("now()")

# What an INSERT into fax_outbox may set (README "Writing a fax"); the insert trigger refuses
# any other column that is not at its default (migration 0005). `document_sha256` is derived:
# the trigger computes it whatever the insert says.
INSERT_COLUMNS = (
    "to_number",
    "document",
    "filename",
    "reference",
    "retries",
    "metadata",
    "idempotency_key",
)

fax_outbox = Table(
    "fax_outbox",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    # Filled by the insert trigger when NULL (see outbox/keys.py for the canonical string).
    Column("idempotency_key", Text, nullable=False),
    Column("to_number", Text, nullable=False),
    # NULL only once retention removed the bytes of a final row (migration 0010).
    Column("document", LargeBinary),
    Column("document_sha256", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("reference", Text, nullable=False),
    Column("retries", SmallInteger, nullable=False, server_default=text(str(DEFAULT_RETRIES))),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", fax_status_enum, nullable=False, server_default=text("'pending'")),
    Column("status_reason", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # An attempt may have created the fax at mintfax (timeout, reset, 5xx, lost lease): when
    # the attempts run out, the row goes to needs_review, never to failed.
    Column("outcome_unknown", Boolean, nullable=False, server_default=text("false")),
    # How many times the row has entered needs_review (a trigger counts): the episode that
    # its review alert names, so a row parked again after an operator's retry alerts again.
    Column("review_count", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    # The fencing token of the current claim (set by the claim, guards each of its writes);
    # lease_owner (host:pid) is for display only: it can repeat across containers.
    Column("lease_token", UUID(as_uuid=True)),
    Column("first_attempt_at", DateTime(timezone=True)),
    Column("mintfax_fax_id", Text),
    Column("mintfax_status", Text),
    Column("pages", Integer),
    Column("last_error", JSONB),
    Column("submitted_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    # Timestamp of the newest provider event applied, so an older event never wins.
    Column("last_event_at", DateTime(timezone=True)),
    # What mintfax reported after acceptance: the carrier attempt in progress, and on a
    # failure its error code and message (the row's final state, for the application).
    Column("mintfax_attempt", Integer),
    Column("error_code", Text),
    Column("error_message", Text),
    # Status polling of accepted rows without a final state: when next, and how many so far.
    Column("next_poll_at", DateTime(timezone=True)),
    Column("poll_attempts", Integer, nullable=False, server_default=text("0")),
    # Retention (migration 0010, outbox/retention.py): when the row became final (a trigger
    # sets it), when its document bytes were removed, when mintfax confirmed deleting its copy.
    Column("final_at", DateTime(timezone=True)),
    Column("document_purged_at", DateTime(timezone=True)),
    Column("mintfax_deleted_at", DateTime(timezone=True)),
    # Set when a relay has published the row's id; cleared by the claim. A row that stays
    # dispatched past its next_attempt_at had its message lost and is published again.
    Column("dispatched_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    UniqueConstraint("idempotency_key"),
    UniqueConstraint("mintfax_fax_id"),
    CheckConstraint(r"to_number ~ '^\+[1-9][0-9]{1,14}$'", name="to_number_e164"),
    CheckConstraint("octet_length(document) BETWEEN 1 AND 10485760", name="document_size"),
    # Bytes go only from a final row (which can never be sent again), and only with a date.
    CheckConstraint(
        "document IS NOT NULL OR status IN ('delivered', 'failed', 'rejected', 'cancelled')",
        name="document_purged_only_when_final",
    ),
    CheckConstraint(
        "(document IS NULL) = (document_purged_at IS NOT NULL)", name="document_purged_iff_null"
    ),
    CheckConstraint("char_length(filename) BETWEEN 1 AND 255", name="filename_length"),
    CheckConstraint("char_length(reference) BETWEEN 1 AND 255", name="reference_length"),
    CheckConstraint(
        "char_length(idempotency_key) BETWEEN 1 AND 255", name="idempotency_key_length"
    ),
    # The one definition of a valid key (outbox.keys), which the helper and the client share.
    CheckConstraint(f"idempotency_key ~ '{HEADER_VALUE_SQL}'", name="idempotency_key_header_safe"),
    CheckConstraint("retries BETWEEN 0 AND 10", name="retries_range"),
    CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    CheckConstraint("poll_attempts >= 0", name="poll_attempts_nonnegative"),
    CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
    CheckConstraint(
        # All three lease columns while sending (the token fences its writes), none otherwise.
        "num_nulls(lease_owner, lease_expires_at, lease_token) "
        "= CASE WHEN status = 'sending' THEN 0 ELSE 3 END",
        name="lease_iff_sending",
    ),
    CheckConstraint(
        "status NOT IN ('submitted', 'delivered') OR mintfax_fax_id IS NOT NULL",
        name="accepted_has_fax_id",
    ),
)

# "Due rows in fetch order": the claim query walks this index and nothing else.
Index(
    "fax_outbox_due_idx",
    fax_outbox.c.next_attempt_at,
    fax_outbox.c.id,
    postgresql_where=text("status = 'pending'"),
)
# The rescuer looks for expired leases among the (few) rows being sent.
Index(
    "fax_outbox_lease_idx",
    fax_outbox.c.lease_expires_at,
    postgresql_where=text("status = 'sending'"),
)
# Reconciliation polls rows mintfax has accepted but not finished.
Index(
    "fax_outbox_submitted_idx",
    fax_outbox.c.submitted_at,
    postgresql_where=text("status = 'submitted'"),
)
Index("fax_outbox_status_idx", fax_outbox.c.status)
# Operators and applications find faxes by their reference (migration 0012).
Index("fax_outbox_reference_idx", fax_outbox.c.reference)
# Retention passes (migration 0010): final rows that still hold their bytes, oldest final
# first; every final row by age (the row purge); rows whose copy at mintfax is to be deleted.
Index(
    "fax_outbox_retention_due_idx",
    fax_outbox.c.final_at,
    fax_outbox.c.id,
    postgresql_where=text("final_at IS NOT NULL AND document IS NOT NULL"),
)
Index(
    "fax_outbox_final_idx",
    fax_outbox.c.final_at,
    fax_outbox.c.id,
    postgresql_where=text("final_at IS NOT NULL"),
)
Index(
    "fax_outbox_mintfax_delete_idx",
    fax_outbox.c.updated_at,
    fax_outbox.c.id,
    postgresql_where=text(
        "document IS NULL AND mintfax_fax_id IS NOT NULL AND mintfax_deleted_at IS NULL"
    ),
)
# The metrics scrape and the dashboard (migration 0013, outbox/fleet_status.py): the oldest
# pending fax, the latency histograms (index-only), and the last hour as ranges.
Index(
    "fax_outbox_pending_created_idx",
    fax_outbox.c.created_at,
    postgresql_where=text("status = 'pending'"),
)
Index(
    "fax_outbox_latency_idx",
    fax_outbox.c.submitted_at,
    fax_outbox.c.created_at,
    fax_outbox.c.completed_at,
    postgresql_where=text("submitted_at IS NOT NULL"),
)
Index(
    "fax_outbox_completed_at_idx",
    fax_outbox.c.status,
    fax_outbox.c.completed_at,
    postgresql_where=text("completed_at IS NOT NULL"),
)
Index("fax_outbox_created_at_idx", fax_outbox.c.created_at)

fax_attempts = Table(
    "fax_attempts",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column(
        "fax_id",
        BigInteger,
        ForeignKey("fax_outbox.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempt", Integer, nullable=False),
    Column("worker", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    # What we did about it: an `Outcome` of ATTEMPT_OUTCOMES.
    Column("outcome", Text, nullable=False),
    Column("http_status", Integer),
    Column("error", JSONB),
    Column("request_id", Text),
    # What mintfax answered with, kept even when the row itself could not take it.
    Column("mintfax_fax_id", Text),
    # The POST was made on a lease that had been lost by the time its result came back.
    Column("lease_lost", Boolean, nullable=False, server_default=text("false")),
    CheckConstraint("attempt >= 1", name="attempt_positive"),
    CheckConstraint("duration_ms >= 0", name="duration_nonnegative"),
    CheckConstraint(
        "outcome IN (" + ", ".join(f"'{o.value}'" for o in ATTEMPT_OUTCOMES) + ")",
        name="outcome_known",
    ),
)
Index("fax_attempts_fax_id_idx", fax_attempts.c.fax_id, fax_attempts.c.attempt)


# What an operator did to a fax (migration 0012, outbox/operations.py): `retry` (back to
# `pending`, same key), `resend` (sent again as a new fax with a new key; `detail.new_fax_id`),
# `resent_from` (on that new fax; `detail.resent_from`), `cancel`. Refusals change nothing and
# are not recorded.
ACTION_KINDS = ("retry", "resend", "resent_from", "cancel")
fax_actions = Table(
    "fax_actions",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("fax_id", BigInteger, ForeignKey("fax_outbox.id", ondelete="CASCADE"), nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("from_status", Text, nullable=False),
    Column("to_status", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint(
        "action IN (" + ", ".join(f"'{a}'" for a in ACTION_KINDS) + ")", name="action_known"
    ),
    CheckConstraint("char_length(actor) BETWEEN 1 AND 255", name="actor_length"),
    CheckConstraint("jsonb_typeof(detail) = 'object'", name="detail_object"),
)
Index("fax_actions_fax_id_idx", fax_actions.c.fax_id, fax_actions.c.id)
# The attempt counters of the metrics (submitted, retries, 429s, 402s), index-only (0013).
Index("fax_attempts_outcome_idx", fax_attempts.c.outcome, fax_attempts.c.http_status)


class PauseReason(StrEnum):
    """Why the whole fleet stopped sending."""

    INSUFFICIENT_BALANCE = "insufficient_balance"
    AUTHENTICATION_FAILED = "authentication_failed"
    API_KEY_MISMATCH = "api_key_environment_mismatch"
    OPERATOR = "operator"
    # A 3xx/4xx without mintfax's error envelope: a wrong base URL or a proxy.
    UNEXPECTED_RESPONSE = "unexpected_response"
    # The same mintfax refusal, many faxes in a row across the fleet (a circuit breaker).
    REJECTIONS_IN_A_ROW = "rejections_in_a_row"


# One row per pause episode; an episode is open while ended_at IS NULL. Postgres is the truth,
# Redis holds a mirror for a fast check on the hot path.
fleet_pauses = Table(
    "fleet_pauses",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("started_by", Text),
    Column("ended_at", DateTime(timezone=True)),
    Column("ended_by", Text),
    CheckConstraint(
        "reason IN (" + ", ".join(f"'{r.value}'" for r in PauseReason) + ")",
        name="reason_known",
    ),
    CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="ends_after_start"),
)
# At most one open episode per reason: a second 402 joins the open episode.
Index(
    "fleet_pauses_open_reason_idx",
    fleet_pauses.c.reason,
    unique=True,
    postgresql_where=text("ended_at IS NULL"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("kind", Text, nullable=False),
    # One alert per episode: the same dedupe key never alerts twice.
    Column("dedupe_key", Text, nullable=False),
    Column("severity", Text, nullable=False, server_default=text("'error'")),
    Column("message", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("fax_id", BigInteger, ForeignKey("fax_outbox.id", ondelete="SET NULL")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("notified_at", DateTime(timezone=True)),
    Column("notify_error", Text),
    # Webhook delivery: failed POSTs so far, when the next may be tried (capped exponential
    # backoff), and until when one process holds the delivery (so no other POSTs it too).
    Column("delivery_attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_delivery_at", DateTime(timezone=True)),
    Column("delivery_claimed_until", DateTime(timezone=True)),
    UniqueConstraint("dedupe_key"),
    CheckConstraint("severity IN ('warning', 'error', 'critical')", name="severity_known"),
    CheckConstraint("delivery_attempts >= 0", name="delivery_attempts_nonnegative"),
)
Index("alerts_created_at_idx", alerts.c.created_at)
# A row purge deletes the row's alerts (migration 0010).
Index("alerts_fax_id_idx", alerts.c.fax_id)
# Alerts not yet delivered to the webhook (few), in delivery order.
Index("alerts_undelivered_idx", alerts.c.id, postgresql_where=text("notified_at IS NULL"))


# Every webhook event, recorded once in the transaction that applies it (migration 0008).
# `observation` is what it says about its fax (outbox.events.FaxObservation, as JSON); an
# event whose fax id no row holds yet waits as `pending` until a row stores that id.
EVENT_OUTCOMES = ("applied", "stale", "pending", "ignored")
fax_events = Table(
    "fax_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("mintfax_fax_id", Text),
    Column("outbox_id", BigInteger, ForeignKey("fax_outbox.id", ondelete="SET NULL")),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("observation", JSONB),
    Column("payload", JSONB, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True)),
    UniqueConstraint("event_id"),
    CheckConstraint(
        "outcome IN (" + ", ".join(f"'{o}'" for o in EVENT_OUTCOMES) + ")", name="outcome_known"
    ),
)
Index(
    "fax_events_pending_idx",
    fax_events.c.mintfax_fax_id,
    postgresql_where=text("outcome = 'pending'"),
)
Index("fax_events_outbox_id_idx", fax_events.c.outbox_id)
# Webhook events by outcome, for the metrics (migration 0013).
Index("fax_events_outcome_idx", fax_events.c.outcome)
# mintfax's balance events, for the low-balance episode's top-up cycle (migration 0017).
Index(
    "fax_events_balance_idx",
    fax_events.c.event_type,
    fax_events.c.occurred_at,
    postgresql_where=text("event_type IN ('balance.low', 'balance.topup')"),
)

# What retention deleted, by kind and label (migration 0013's triggers add to it), so counters
# derived from rows never go down: `faxes_deleted` by status, `attempts_deleted` by
# `outcome:http_status`, `events_deleted` by outcome.
metric_tallies = Table(
    "metric_tallies",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("label", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
    CheckConstraint("value >= 0", name="value_nonnegative"),
)


# --- status polling and balance watch (migration 0009) ---
# Status polling walks these two indexes and nothing else, among the accepted rows without a
# final state: rows whose next poll is due, and never-polled rows by acceptance time (0014).
Index(
    "fax_outbox_poll_due_idx",
    fax_outbox.c.next_poll_at,
    fax_outbox.c.id,
    postgresql_where=text("status = 'submitted'"),
)
Index(
    "fax_outbox_poll_fresh_idx",
    fax_outbox.c.submitted_at,
    fax_outbox.c.id,
    postgresql_include=["mintfax_fax_id", "poll_attempts"],
    postgresql_where=text("status = 'submitted' AND next_poll_at IS NULL"),
)
# mintfax's balance as the balance watch read it (recent readings only); `low_since` names the
# low-balance episode a reading belongs to (NULL when the balance is not low).
balance_snapshots = Table(
    "balance_snapshots",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("observed_at", DateTime(timezone=True), nullable=False),
    Column("available", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("low_since", DateTime(timezone=True)),
)
Index("balance_snapshots_observed_at_idx", balance_snapshots.c.observed_at)


# --- liveness (migration 0011, outbox/liveness.py) ---
# The roles whose processes publish heartbeats.
LIVENESS_ROLES = ("relay", "beat", "worker", "webhooks")
_ROLE_KNOWN = "role IN (" + ", ".join(f"'{r}'" for r in LIVENESS_ROLES) + ")"
# One row per running process, keyed by a random id drawn when it starts (a restarted container
# keeps its hostname and pid 1); every time on the database's clock.
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("instance", UUID(as_uuid=True), primary_key=True),
    Column("role", Text, nullable=False),
    Column("process", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
    CheckConstraint(_ROLE_KNOWN, name="role_known"),
    CheckConstraint("seen_at >= started_at", name="seen_after_start"),
)
Index("heartbeats_role_seen_at_idx", heartbeats.c.role, heartbeats.c.seen_at)
# A stretch of time in which no process of a role was alive: one open episode per role (two
# checkers noticing at once open one), which names the episode's one alert.
liveness_episodes = Table(
    "liveness_episodes",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("role", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    CheckConstraint(_ROLE_KNOWN, name="role_known"),
    CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="ends_after_start"),
)
Index(
    "liveness_episodes_open_role_idx",
    liveness_episodes.c.role,
    unique=True,
    postgresql_where=text("ended_at IS NULL"),
)
