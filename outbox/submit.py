"""Submit one outbox row to mintfax: the plain function behind the Celery submit task.

    claim (lease) -> check row and key -> pause? -> throttle token -> lease still held? -> POST
    -> record outcome

The lease is fenced (invariant 3): the claim gets a unique token, every later write is guarded
by it, and it is re-checked, with enough of it left for the request, just before the POST. A
POST made on a lease lost meanwhile still has its result recorded (attempt log) and acted on:
a 402 pauses the fleet, a 201 is applied to its row if that waits unleased, or alerted.

Every outcome is written in one transaction guarded by the lease: the row's new state, the
attempt log entry, and any pause episode or alert it causes. What a failure means (retry, wait,
pause the fleet, give up) is `outbox.retry.decide`'s answer; `plan_failure` only writes it
down. What happens next is data on the row (`next_attempt_at`), never a Celery countdown
(invariant 4). The idempotency key is the row's, on every attempt (invariant 2), so a resend
after a lost response is a replay.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr
from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.alerts import Alert, Alerter, give_up_alert
from outbox.clock import Clock, sql_now
from outbox.errors import (
    ApiKeyMismatch,
    ConfigurationError,
    DatabaseUnavailable,
    FaxOutboxError,
    FleetStateUnavailable,
    IdempotencyWindowClosed,
    UnexpectedError,
    ValidationFailed,
)
from outbox.keys import IDEMPOTENCY_SAFETY_MARGIN, IDEMPOTENCY_WINDOW
from outbox.models import TERMINAL_STATUSES, FaxStatus, Outcome, PauseReason
from outbox.outage import DATABASE, REDIS, KeptWork, OutageLog, database_boundary, process_log
from outbox.pause import PauseMirror, pause_in_transaction
from outbox.redaction import mask_number
from outbox.repository import ClaimedFax
from outbox.retry import CoolDown, Decision, GiveUp, PauseFleet, RetryAt, RetryPolicy, decide
from outbox.settings import (
    DEFAULT_HTTP_TIMEOUT_SECONDS,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_REJECTION_BREAKER,
    MAX_INLINE_WAIT_SECONDS,
    Environment,
)
from outbox.throttle import ThrottleDecision
from outbox.validation import check_document, check_number, check_retries

if TYPE_CHECKING:  # the client brings httpx; submit needs only the shape of its answer
    from outbox.fax_client import SubmitResult

__all__ = [
    "IDEMPOTENCY_SAFETY_MARGIN",
    "IDEMPOTENCY_WINDOW",
    "FaxSender",
    "Outcome",
    "SubmitContext",
    "SubmitReport",
    "describe_reports",
    "submit_fax",
    "submit_faxes",
    "submit_reports",
]

log = logging.getLogger("faxout.submit")

# IDEMPOTENCY_WINDOW, IDEMPOTENCY_SAFETY_MARGIN (outbox/keys.py): past mintfax's 24 h key
# window, a row whose outcome may be unknown is parked for a human instead of being resent.


class FaxSender(Protocol):
    """What submit needs of the mintfax client."""

    def send_fax(
        self,
        *,
        to: str,
        document: bytes,
        filename: str,
        idempotency_key: str,
        retries: int,
        webhook_url: str | None = None,
    ) -> SubmitResult: ...


class Throttle(Protocol):
    """What submit needs of the fleet throttle (its gate being the pause mirror)."""

    def try_acquire(self) -> ThrottleDecision: ...

    def cooldown(self, seconds: float) -> None: ...


@dataclass
class SubmitContext:
    """Everything `submit_fax` depends on, built once per worker process."""

    engine: Engine
    sender: FaxSender
    throttle: Throttle
    mirror: PauseMirror
    alerter: Alerter
    clock: Clock
    rng: random.Random
    api_key: Callable[[], SecretStr]
    environment: Environment
    worker_id: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # This many identical mintfax refusals in a row pause the fleet (0: never).
    rejection_breaker: int = DEFAULT_REJECTION_BREAKER
    # The client's timeout: no POST starts with less than this left on its lease.
    http_timeout: float = DEFAULT_HTTP_TIMEOUT_SECONDS
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_inline_wait: float = MAX_INLINE_WAIT_SECONDS
    webhook_url: str | None = None
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    # Same database in autocommit mode, for the single-statement steps (claim, release, the
    # common finish): no BEGIN/COMMIT round trips. Defaults to `engine`.
    autocommit_engine: Engine | None = None
    # What a database outage kept this process from writing (`settle_kept`), the claim in
    # progress (what would be kept), and the process's one-line-per-outage log.
    kept: KeptWork[_Kept] = field(default_factory=KeptWork)
    current: _Kept | None = None
    outages: OutageLog = field(default_factory=process_log)

    @property
    def fast_engine(self) -> Engine:
        return self.autocommit_engine or self.engine


@dataclass
class _Kept:
    """A claim in progress, kept as it stands if the database goes away before its work is
    written: unsent (given back), or posted with the plan of what mintfax answered."""

    claimed: ClaimedFax
    posted: bool = False
    plan: _Plan | None = None
    started: datetime | None = None
    duration_ms: int = 0


@dataclass(frozen=True)
class _Plan:
    """How to record an attempt's result: the row change and its side effects."""

    outcome: Outcome  # returned, and recorded in the attempt log
    values: dict[str, Any]
    alert: Alert | None = None
    pause: PauseReason | None = None
    cooldown: float | None = None
    http_status: int | None = None
    request_id: str | None = None


# What may appear of an error code in a report: a code, never free text (which could quote a
# number or anything else a server chose to put there).
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# Errors of our own machinery, not answers about the fax: the task could not do its job.
# Not an outage of Redis or Postgres: that is told once per process (outbox/outage.py), and
# the rows go on by themselves within seconds of its end; a failed task per fax would bury it.
_OWN_FAULTS = frozenset({"UnexpectedError"})


@dataclass(frozen=True, slots=True)
class SubmitReport:
    """What one submission of a row did, in words fit for a task's result (Flower): the row
    id, codes and delays, never a phone number, a document or a secret."""

    fax_id: int
    outcome: Outcome
    # When the row is due again (it waits in `pending`), and when that was decided.
    retry_at: datetime | None = None
    decided_at: datetime | None = None
    http_status: int | None = None
    # mintfax's `error` code, or the class name of our own error.
    error: str | None = None
    # The row's `status_reason` when it left for rejected, failed or needs_review.
    reason: str | None = None
    # The fleet pause this submission opened (a fault of the setup: 401, 402, a wrong URL).
    paused: PauseReason | None = None

    @property
    def fault(self) -> bool:
        """True when the fax could not be tried because of a fault of ours or of the setup (a
        pause it opened, a bug, a lost lease), not because of an answer about the fax itself:
        its task did not do its job and shows as failed. Not for an outage of Redis or
        Postgres, which the process tells once and which the rows outlive."""
        return (
            self.outcome is Outcome.LEASE_LOST
            or self.paused is not None
            or self.error in _OWN_FAULTS
        )

    def describe(self) -> str:
        """One line: `1234: submitted`, `1235: retry in 7 s (503)`."""
        cause = " ".join(
            part
            for part in (
                str(self.http_status) if self.http_status is not None else None,
                self.error if self.error and _CODE.fullmatch(self.error) else None,
            )
            if part
        )
        suffix = f" ({cause})" if cause else ""
        wait = ""
        if self.retry_at is not None and self.decided_at is not None:
            seconds = max(0.0, (self.retry_at - self.decided_at).total_seconds())
            wait = f"in {seconds:.1f} s" if seconds < 10 else f"in {seconds:.0f} s"
        match self.outcome:
            case Outcome.SUBMITTED:
                text, suffix = "submitted", ""
            case Outcome.REPLAYED:
                text = "submitted (replay of an earlier 201)"
                suffix = ""
            case Outcome.RETRY_SCHEDULED:
                text = f"retry {wait}"
            case Outcome.RATE_LIMITED:
                text = f"rate limited, fleet waits, retry {wait}"
            case Outcome.IN_PROGRESS:
                text = f"key in progress at mintfax, retry {wait}"
            case Outcome.THROTTLED:
                text = f"throttled, due again {wait}"
            case Outcome.PAUSED:
                what = f"paused the fleet: {self.paused}" if self.paused else "fleet paused"
                text = f"not sent, {what}"
            case Outcome.REJECTED | Outcome.REJECTED_LOCALLY | Outcome.FAILED:
                where = " locally" if self.outcome is Outcome.REJECTED_LOCALLY else ""
                status = "failed" if self.outcome is Outcome.FAILED else "rejected"
                text = f"{status}{where}" + (f": {self.reason}" if self.reason else "")
            case Outcome.NEEDS_REVIEW:
                text = "needs review" + (f": {self.reason}" if self.reason else "")
            case Outcome.NOT_CLAIMED if self.error == "DatabaseUnavailable":
                text = "database unavailable, handed out again when it is back"
                suffix = ""
            case Outcome.NOT_CLAIMED:
                text = "skipped (already taken, finished or not due)"
            case Outcome.LEASE_LOST:
                text = "lease lost (another worker or the rescuer has it)"
            case _:
                text = str(self.outcome)
        return f"{self.fax_id}: {text.strip()}{suffix}"


def describe_reports(reports: Sequence[SubmitReport]) -> str:
    """A task's result: each fax and what became of it, `1234: submitted; 1235: retry ...`."""
    return "; ".join(report.describe() for report in reports)


def submit_fax(ctx: SubmitContext, fax_id: int) -> Outcome:
    """Try to hand row `fax_id` to mintfax once; safe to call any number of times per row."""
    return submit_faxes(ctx, [fax_id])[0]


def submit_faxes(ctx: SubmitContext, fax_ids: Sequence[int]) -> list[Outcome]:
    """`submit_fax` for each row of one message, in order."""
    return [report.outcome for report in submit_reports(ctx, fax_ids)]


def submit_reports(ctx: SubmitContext, fax_ids: Sequence[int]) -> list[SubmitReport]:
    """`submit_faxes`, with what became of each row told (`SubmitReport`).

    If the database goes away meanwhile, what could not be written is kept (`KeptWork`) and
    written by `settle_kept` before this process claims anything new; the rows not reached
    are reported `DatabaseUnavailable`, and the outage is logged once per process.
    """
    reports: list[SubmitReport] = []
    with ctx.kept.busy:
        try:
            settle_kept(ctx)
            # One connection for the whole message: one checkout (and liveness ping).
            with database_boundary(), ctx.fast_engine.connect() as conn:
                for fax_id in fax_ids:
                    ctx.current = None
                    reports.append(_submit(ctx, conn, fax_id))
            ctx.outages.back(DATABASE)
        except DatabaseUnavailable as exc:
            _keep_unwritten(ctx, list(fax_ids[len(reports) :]), exc)
            reports += [
                SubmitReport(fax_id, Outcome.NOT_CLAIMED, error=type(exc).__name__)
                for fax_id in fax_ids[len(reports) :]
            ]
        finally:
            ctx.current = None
    return reports


def _keep_unwritten(ctx: SubmitContext, rest: list[int], exc: DatabaseUnavailable) -> None:
    """Keep the claim in progress (if the database went away during one) and the ids not
    reached, and say so once per outage."""
    current = ctx.current
    if current is not None and rest and current.claimed.id == rest[0]:
        # The document is not needed again: a kept claim is written or given back, not sent.
        claimed = replace(current.claimed, document=b"")
        ctx.kept.keep(claimed.lease_token, replace(current, claimed=claimed))
        rest = rest[1:]
    ctx.kept.keep_waiting(rest)
    ctx.outages.lost(
        DATABASE,
        exc,
        "keeping what this process could not write; it writes it, and gives back what it "
        "did not send, as soon as the database answers",
    )


def settle_kept(ctx: SubmitContext) -> int:
    """Write what a database outage kept this process from writing; returns how many rows.

    Called before anything new is claimed (and by a retry thread while anything is kept).
    A POST's outcome is recorded as `_apply` records any: under its lease if still held; on a
    lost lease (the rescuer gave the row back meanwhile) the attempt is logged and a 201 is
    applied to the row waiting in `pending` (`_record_lost_lease_post`), so it is not sent
    again. A claim that was not sent is given back, due now, not after its lease; rows never
    claimed are made due now. A POST whose answer never came is left to its lease: its
    outcome is unknown, which is what the rescuer records. Raises `DatabaseUnavailable` while
    the database is still away (everything stays kept).
    """
    if not ctx.kept:
        return 0
    settled = 0
    with ctx.kept.busy, database_boundary(), ctx.fast_engine.connect() as conn:
        try:
            for token, kept in ctx.kept.claims():
                ctx.current = kept
                claimed = kept.claimed
                if kept.plan is not None and kept.started is not None:
                    with conn.begin():
                        # The write may have reached the database before its answer was lost.
                        written = repository.attempt_logged(
                            conn, claimed.id, worker=ctx.worker_id, started_at=kept.started
                        )
                    if not written:
                        _apply(
                            ctx,
                            conn,
                            claimed,
                            kept.plan,
                            kept.started,
                            kept.duration_ms,
                            posted=kept.posted,
                        )
                elif not kept.posted:
                    _release(ctx, conn, claimed, ctx.clock.now(), Outcome.THROTTLED)
                ctx.kept.drop(token)
                settled += 1
        finally:
            ctx.current = None
        waiting = ctx.kept.waiting()
        if waiting:
            with conn.begin():
                settled += repository.redispatch_now(conn, waiting, now=sql_now(ctx.clock))
            ctx.kept.drop_waiting(waiting)
    ctx.outages.back(DATABASE, f"wrote or gave back {settled} row(s) it had kept")
    return settled


def _submit(ctx: SubmitContext, conn: Connection, fax_id: int) -> SubmitReport:
    # The lease ends `lease_seconds` after the claim on the database's clock; measured from
    # before the claim on this host's monotonic clock, this deadline is never later than that.
    lease_deadline = ctx.monotonic() + ctx.lease_seconds
    with conn.begin():
        claimed = repository.claim_for_submit(
            conn,
            fax_id,
            owner=ctx.worker_id,
            now=sql_now(ctx.clock),
            lease_seconds=ctx.lease_seconds,
        )
    if claimed is None:
        return SubmitReport(fax_id, Outcome.NOT_CLAIMED)
    ctx.current = _Kept(claimed)
    now = claimed.claimed_at or ctx.clock.now()

    refusal = _refusal(ctx, claimed, now)
    if refusal is not None:
        return _fail(ctx, conn, claimed, refusal, started=now, duration_ms=0)

    try:
        held = _wait_for_turn(ctx, conn, claimed, lease_deadline)
    except FleetStateUnavailable as exc:
        # Nobody may call mintfax without the throttle. Nothing was attempted, so the row is
        # given back (for as long as the table says) without an attempt in the log. One
        # warning per outage and process, not one per fax.
        ctx.outages.lost(REDIS, exc, "giving claimed faxes back unsent until it answers")
        log.debug(
            "fax %s: %s; retrying soon",
            claimed.id,
            exc,
            extra={"action": "submit.retry_soon", "fax_id": claimed.id},
        )
        decision = decide(now, claimed.attempts, exc, ctx.policy, ctx.rng)
        if isinstance(decision, RetryAt):
            return _release(
                ctx, conn, claimed, decision.at, decision.outcome, error=type(exc).__name__
            )
        return _apply(ctx, conn, claimed, plan_failure(claimed, exc, decision, now), now, 0)
    if held is not None:
        return held
    ctx.outages.back(REDIS)

    with conn.begin():
        may_post = repository.begin_post(
            conn,
            claimed.id,
            token=claimed.lease_token,
            now=sql_now(ctx.clock),
            need=ctx.http_timeout,
        )
    if may_post is None:  # rescued (and perhaps cancelled) while it waited: not ours to send
        log.warning(
            "fax %s: lease lost before the POST; not sent",
            claimed.id,
            extra={"action": "submit.lease_lost", "fax_id": claimed.id},
        )
        return SubmitReport(claimed.id, Outcome.LEASE_LOST)
    if not may_post:  # too little lease left for the request: give it back, unsent
        return _release(ctx, conn, claimed, ctx.clock.now(), Outcome.THROTTLED)

    started, t0 = ctx.clock.now(), ctx.monotonic()
    if ctx.current is not None:
        ctx.current.posted = True  # from here on, a lost answer is an unknown outcome
    try:
        result = ctx.sender.send_fax(
            to=claimed.to_number,
            document=claimed.document,
            filename=claimed.filename,
            idempotency_key=claimed.idempotency_key,
            retries=claimed.retries,
            webhook_url=ctx.webhook_url,
        )
    except FaxOutboxError as exc:
        duration_ms = max(0, int((ctx.monotonic() - t0) * 1000))
        return _fail(ctx, conn, claimed, exc, started=started, duration_ms=duration_ms, posted=True)
    except Exception as exc:  # a bug must not leave the row in `sending` (invariant 3)
        # Only the type is logged: the exception's text could hold anything, a key included.
        log.error(
            "fax %s: unexpected %s while sending",
            claimed.id,
            type(exc).__name__,
            extra={"action": "submit.unexpected_error", "fax_id": claimed.id},
        )
        duration_ms = max(0, int((ctx.monotonic() - t0) * 1000))
        error = UnexpectedError(exc)
        return _fail(
            ctx, conn, claimed, error, started=started, duration_ms=duration_ms, posted=True
        )
    plan = plan_success(claimed, result, ctx.clock.now())
    duration_ms = max(0, int((ctx.monotonic() - t0) * 1000))
    return _apply(ctx, conn, claimed, plan, started, duration_ms, posted=True)


def _fail(
    ctx: SubmitContext,
    conn: Connection,
    claimed: ClaimedFax,
    error: FaxOutboxError,
    *,
    started: datetime,
    duration_ms: int,
    posted: bool = False,
) -> SubmitReport:
    now = ctx.clock.now()
    decision = decide(
        now,
        claimed.attempts,
        error,
        ctx.policy,
        ctx.rng,
        outcome_unknown_before=claimed.outcome_unknown,
    )
    plan = plan_failure(claimed, error, decision, now)
    return _apply(ctx, conn, claimed, plan, started, duration_ms, posted=posted)


def _wait_for_turn(
    ctx: SubmitContext, conn: Connection, claimed: ClaimedFax, lease_deadline: float
) -> SubmitReport | None:
    """None once a throttle token is held; else the row was given back (paused, throttled).

    The throttle's script also reads the pause mirror (its gate), so "paused?" and "my turn?"
    are one atomic Redis call, asked again after every wait. A wait is slept inline only if
    the lease (ending at `lease_deadline`, monotonic) still outlasts the request after it.
    """
    while not (decision := ctx.throttle.try_acquire()).granted:
        if decision.reason == "paused":
            return _release(ctx, conn, claimed, ctx.clock.now(), Outcome.PAUSED)
        wait = decision.wait_seconds
        left_after = lease_deadline - ctx.monotonic() - wait
        if wait > ctx.max_inline_wait or left_after <= ctx.http_timeout:
            at = ctx.clock.now() + timedelta(seconds=wait)
            return _release(ctx, conn, claimed, at, Outcome.THROTTLED)
        ctx.sleep(wait)
    return None


def plan_success(claimed: ClaimedFax, result: SubmitResult, now: datetime) -> _Plan:
    """mintfax accepted the fax (201, or a replay of the original 201)."""
    return _Plan(
        outcome=Outcome.REPLAYED if result.replayed else Outcome.SUBMITTED,
        http_status=result.status_code,
        request_id=result.request_id,
        values={
            "status": FaxStatus.SUBMITTED,
            "mintfax_fax_id": result.fax_id,
            "mintfax_status": result.status,
            "submitted_at": now,
            "attempts": claimed.attempts + 1,
            "last_error": None,
            "status_reason": None,
        },
    )


def plan_failure(
    claimed: ClaimedFax, error: FaxOutboxError, decision: Decision, now: datetime
) -> _Plan:
    """The row values, attempt-log entry and side effects of `decide`'s answer (pure).

    What the error means was decided by `outbox.retry.decide`; this only writes it down.
    """
    envelope = error.envelope()
    values: dict[str, Any] = {"last_error": envelope}
    if decision.consumes_attempt:
        values["attempts"] = claimed.attempts + 1
    alert = None
    if isinstance(decision, GiveUp):
        values |= {"status": decision.status, "status_reason": decision.reason}
        if decision.status in TERMINAL_STATUSES:
            values["completed_at"] = now
        if decision.alert:
            alert = give_up_alert(claimed.id, decision, str(error), envelope)
    else:  # the row waits in `pending`
        values |= {"status": FaxStatus.PENDING, "next_attempt_at": decision.at}
        if isinstance(decision, RetryAt) and decision.outcome_unknown:
            values["outcome_unknown"] = True
    return _Plan(
        outcome=decision.outcome,
        values=values,
        alert=alert,
        pause=decision.reason if isinstance(decision, PauseFleet) else None,
        cooldown=decision.seconds if isinstance(decision, CoolDown) else None,
        http_status=envelope.get("status_code"),
        request_id=envelope.get("request_id"),
    )


def _refusal(ctx: SubmitContext, claimed: ClaimedFax, now: datetime) -> FaxOutboxError | None:
    """Why this row must not be sent now, as the error that says so; None to send it."""
    # The window counts from the first POST (a claim given back unsent starts nothing), on
    # the database's clock (`now` is the claim's). `outcome_unknown` too, not only a used
    # attempt: an operator's retry (outbox/operations.py) gives a row fresh attempts but keeps
    # its first POST and what it may have created.
    if (
        (claimed.attempts > 0 or claimed.outcome_unknown)
        and claimed.first_attempt_at is not None
        and now - claimed.first_attempt_at > IDEMPOTENCY_WINDOW - IDEMPOTENCY_SAFETY_MARGIN
    ):
        return IdempotencyWindowClosed(claimed.first_attempt_at)
    try:
        key_problem = api_key_problem(ctx.api_key(), ctx.environment)
    except ConfigurationError as exc:  # e.g. MINTFAX_API_KEY_FILE unreadable mid-rotation
        return exc
    if key_problem is not None:
        return key_problem
    _, errors = check_number(claimed.to_number, ctx.environment)
    _, doc_errors = check_document(claimed.document, claimed.filename)
    errors += doc_errors + check_retries(claimed.retries)
    return ValidationFailed(errors) if errors else None


def api_key_problem(key: SecretStr, environment: Environment) -> ApiKeyMismatch | None:
    """Why this key must not be used in `environment`, or None. Never includes the key."""
    value = key.get_secret_value()
    test = value.startswith(("fx_test_", "mfx_test_"))
    live = value.startswith(("fx_live_", "mfx_live_"))
    if environment == "production" and test:
        return ApiKeyMismatch(
            "MINTFAX_API_KEY",
            "is a sandbox (test) key, which FAXOUT_ENVIRONMENT=production refuses",
        )
    if environment == "sandbox" and live:
        return ApiKeyMismatch(
            "MINTFAX_API_KEY", "is a live key, which FAXOUT_ENVIRONMENT=sandbox refuses"
        )
    if not (test or live):
        return ApiKeyMismatch(
            "MINTFAX_API_KEY", "has an unknown prefix (expected fx_test_ or fx_live_)"
        )
    return None


def _release(
    ctx: SubmitContext,
    conn: Connection,
    claimed: ClaimedFax,
    at: datetime,
    outcome: Outcome,
    *,
    error: str | None = None,
) -> SubmitReport:
    """Give the row back without using an attempt (pause or throttle wait)."""
    with conn.begin():
        kept = repository.update_claimed(
            conn,
            claimed.id,
            token=claimed.lease_token,
            values={"status": FaxStatus.PENDING, "next_attempt_at": at},
        )
    if not kept:
        return SubmitReport(claimed.id, Outcome.LEASE_LOST)
    return SubmitReport(claimed.id, outcome, retry_at=at, decided_at=ctx.clock.now(), error=error)


def _apply(
    ctx: SubmitContext,
    conn: Connection,
    claimed: ClaimedFax,
    plan: _Plan,
    started: datetime,
    duration_ms: int,
    *,
    posted: bool = False,
) -> SubmitReport:
    """Record the plan under the claim's lease. If the lease was lost and a POST was made,
    its result is still logged and acted on (`posted`)."""
    current = ctx.current
    if current is not None and current.claimed.lease_token == claimed.lease_token:
        # Kept as it stands should the database go away before it is written.
        current.plan, current.started, current.duration_ms = plan, started, duration_ms
    if plan.cooldown is not None:
        # First, so that the rest of the fleet stops before this transaction even commits.
        ctx.throttle.cooldown(plan.cooldown)
    error = plan.values.get("last_error")
    attempt = {
        "attempt": claimed.attempts + 1,
        "worker": ctx.worker_id,
        "started_at": started,
        "finished_at": ctx.clock.now(),
        "duration_ms": duration_ms,
        "outcome": plan.outcome,
        "http_status": plan.http_status,
        "error": error,
        "request_id": plan.request_id,
        "mintfax_fax_id": plan.values.get("mintfax_fax_id"),
    }
    token = claimed.lease_token
    if plan.pause is None and plan.alert is None:
        # The common case: the row's new state and its attempt log in one statement.
        with conn.begin():
            kept = repository.finish_claimed(
                conn, claimed.id, token=token, values=plan.values, attempt=attempt
            )
        if not kept and posted:
            return _report(ctx, claimed, plan, _record_lost_lease_post(ctx, claimed, plan, attempt))
        _log_outcome(claimed, plan, duration_ms)
        if kept and plan.outcome is Outcome.REJECTED and ctx.rejection_breaker:
            _trip_breaker_if_needed(ctx, claimed, error or {})
        return _report(ctx, claimed, plan, plan.outcome if kept else Outcome.LEASE_LOST)
    alert_ids: list[int] = []
    with ctx.engine.begin() as tx:
        kept = repository.finish_claimed(
            tx, claimed.id, token=token, values=plan.values, attempt=attempt
        )
        if not kept and posted:
            repository.log_attempt(tx, claimed.id, attempt)
        # A 402 (or 401) is about the account, not the row: it pauses the fleet even when it
        # came back on a lost lease.
        if kept or posted:
            if plan.pause is not None:
                _, alert_id = pause_in_transaction(
                    tx,
                    ctx.alerter,
                    reason=plan.pause,
                    detail={"fax_id": claimed.id, "error": error or {}},
                    started_by=ctx.worker_id,
                    clock=ctx.clock,
                )
                alert_ids += [alert_id] if alert_id else []
            if plan.alert is not None and kept:
                alert_id = ctx.alerter.record(tx, plan.alert)
                alert_ids += [alert_id] if alert_id else []
    if plan.pause is not None:
        with conn.begin():
            ctx.mirror.publish(repository.open_pauses(conn))
    ctx.alerter.deliver(ctx.engine, alert_ids)
    _log_outcome(claimed, plan, duration_ms)
    return _report(ctx, claimed, plan, plan.outcome if kept else Outcome.LEASE_LOST)


def _report(ctx: SubmitContext, claimed: ClaimedFax, plan: _Plan, outcome: Outcome) -> SubmitReport:
    """What `plan`, recorded with `outcome`, did to the row, for the task's result."""
    error = plan.values.get("last_error") or {}
    return SubmitReport(
        claimed.id,
        outcome,
        retry_at=plan.values.get("next_attempt_at") if outcome is plan.outcome else None,
        decided_at=ctx.clock.now(),
        http_status=plan.http_status,
        error=error.get("error") or error.get("kind"),
        reason=plan.values.get("status_reason"),
        paused=plan.pause,
    )


def _trip_breaker_if_needed(
    ctx: SubmitContext, claimed: ClaimedFax, error: Mapping[str, Any]
) -> None:
    """Pause the fleet when mintfax refused the last `rejection_breaker` faxes, fleet-wide, with
    the same error: one refusal is about a fax, a run of identical ones is about the setup
    (an account without a feature, a wrong environment), and the backlog must not burn."""
    code = error.get("error")
    with ctx.engine.begin() as tx:
        streak = repository.rejections_in_a_row(tx, error_code=code, limit=ctx.rejection_breaker)
        if streak < ctx.rejection_breaker:
            return
        _, alert_id = pause_in_transaction(
            tx,
            ctx.alerter,
            reason=PauseReason.REJECTIONS_IN_A_ROW,
            detail={"error": code, "in_a_row": streak, "fax_id": claimed.id},
            started_by=ctx.worker_id,
            clock=ctx.clock,
        )
        pauses = repository.open_pauses(tx)
    ctx.mirror.publish(pauses)
    ctx.alerter.deliver(ctx.engine, [alert_id] if alert_id else [])


def _record_lost_lease_post(
    ctx: SubmitContext, claimed: ClaimedFax, plan: _Plan, attempt: dict[str, Any]
) -> Outcome:
    """A POST whose lease was lost before its result came back: never drop what it learned.

    The attempt goes into the row's history. A 201 is applied to the row if it waits unleased
    in `pending` (the rescuer gave it back); if another claim holds it, that claim's resend is
    a replay of this 201; if the row has meanwhile ended otherwise (cancelled, rejected,
    parked), an alert names the fax mintfax accepted.
    """
    fax_id = plan.values.get("mintfax_fax_id")
    adopted = False
    alert_ids: list[int] = []
    with ctx.engine.begin() as tx:
        repository.log_attempt(tx, claimed.id, attempt)
        if fax_id is not None:
            adopted = repository.adopt_acceptance(
                tx,
                claimed.id,
                mintfax_fax_id=fax_id,
                mintfax_status=plan.values.get("mintfax_status"),
                attempts=claimed.attempts + 1,
                owner=ctx.worker_id,
                now=sql_now(ctx.clock),
            )
            row = None if adopted else repository.fax_row(tx, claimed.id)
            if row is not None and _acceptance_unaccounted(row, fax_id):
                alert_id = ctx.alerter.record(tx, _orphan_alert(claimed.id, fax_id, row))
                alert_ids += [alert_id] if alert_id else []
    ctx.alerter.deliver(ctx.engine, alert_ids)
    log.warning(
        "fax %s: lease lost during the POST (%s%s); %s",
        claimed.id,
        plan.outcome,
        f", mintfax fax {fax_id}" if fax_id else "",
        "applied to the waiting row" if adopted else "logged",
        extra={
            "action": "submit.lease_lost_during_post",
            "fax_id": claimed.id,
            "mintfax_fax_id": fax_id,
        },
    )
    return plan.outcome if adopted else Outcome.LEASE_LOST


def _acceptance_unaccounted(row: Mapping[str, Any], fax_id: str) -> bool:
    """Whether a 201 for `fax_id` on a lost lease leaves a fax at mintfax the row does not
    know of. Not when another claim holds the row (its resend replays this 201), nor when
    the row already carries this fax id."""
    if row["status"] == FaxStatus.SENDING:
        return False
    return bool(row["mintfax_fax_id"] != fax_id)


def _orphan_alert(fax_id: int, mintfax_fax_id: str, row: Mapping[str, Any]) -> Alert:
    return Alert(
        kind="orphan_submission",
        dedupe_key=f"orphan_submission:fax:{fax_id}:{mintfax_fax_id}",
        message=(
            f"fax {fax_id} was accepted by mintfax as {mintfax_fax_id} after its worker lost "
            f"the lease, but the row is now {row['status']}: check mintfax (cancel it there?)"
        ),
        severity="critical",
        detail={"mintfax_fax_id": mintfax_fax_id, "row_status": str(row["status"])},
        fax_id=fax_id,
    )


def _log_outcome(claimed: ClaimedFax, plan: _Plan, duration_ms: int) -> None:
    # Successes are routine (Celery logs each task's tally); everything else is worth a line.
    level = logging.INFO
    if plan.outcome in (Outcome.SUBMITTED, Outcome.REPLAYED):
        level = logging.DEBUG
    if log.isEnabledFor(level):
        log.log(
            level,
            "fax %s to %s: %s (attempt %s, %d ms)",
            claimed.id,
            mask_number(claimed.to_number),
            plan.outcome,
            claimed.attempts + 1,
            duration_ms,
            extra={
                "action": f"submit.{plan.outcome}",
                "fax_id": claimed.id,
                "mintfax_fax_id": plan.values.get("mintfax_fax_id"),
                "attempt": claimed.attempts + 1,
                "duration_ms": duration_ms,
                "http_status": plan.http_status,
                "request_id": plan.request_id,
            },
        )
