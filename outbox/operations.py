"""What an operator sees of faxes and does to them: the plain functions behind `faxout list`,
`show`, `retry` and `cancel` (core install: no Celery, Redis or HTTP client).

Seeing: `list_faxes` (filters by status, reference, creation time; numbers masked: a list is
read over shoulders and pasted into tickets) and `show_fax` (one fax whole: the row with its
number in full, which an operator needs to check a wrong number, every attempt with
mintfax's `error`, `action` and `request_id`, every webhook event, every operator action, every
alert naming it).

Acting, each in the caller's transaction, under the row's lock (`SELECT ... FOR UPDATE`: a
worker's claim of the row waits, then finds it changed; a row a worker already claimed is
`sending` and is refused, never changed under its feet), each recorded in the row's history
(`fax_actions`) with who did it; a refusal raises `OperationRefused` with the reason and
changes nothing:

    retry   needs_review -> pending, same key, fresh attempts; pending -> due now. Refused while
            a worker sends it, once mintfax accepted it, for a final row, and when an attempt
            may have created the fax at mintfax and mintfax's 24 h key window has passed (a
            resend with the same key could be a second fax).
    retry --new-key
            the fax is sent again as a NEW fax (a new row, a new key derived from the old one;
            the old row, if still open, is cancelled): if an earlier attempt did create the fax
            at mintfax, the recipient gets it twice. Once per fax: a second resend of the same
            fax is refused (act on the new one), so a repeated or concurrent command never makes
            a third fax.
    cancel  pending | needs_review -> cancelled, only while mintfax has not accepted it
            (mintfax cannot cancel a fax); refused while a worker sends it.

`retry_all` and `cancel_all` apply one of them to every row in a status, each row in its own
transaction, and report what was done and what was refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.errors import FieldError, OperationRefused, ValidationFailed
from outbox.keys import IDEMPOTENCY_SAFETY_MARGIN, IDEMPOTENCY_WINDOW, resend_idempotency_key
from outbox.models import TERMINAL_STATUSES, FaxStatus
from outbox.redaction import mask_number

__all__ = [
    "ActionResult",
    "BulkResult",
    "FaxDetail",
    "bulk_status",
    "cancel_all",
    "cancel_fax",
    "count_in_status",
    "jsonable",
    "list_faxes",
    "parse_since",
    "retry_all",
    "retry_fax",
    "show_fax",
]

CANCELLABLE = (FaxStatus.PENDING, FaxStatus.NEEDS_REVIEW)
# What `retry --new-key` may send again as a new fax: a row that will not be sent otherwise.
RESENDABLE = (FaxStatus.NEEDS_REVIEW, FaxStatus.FAILED, FaxStatus.REJECTED, FaxStatus.CANCELLED)
MAX_ACTOR_CHARS = 255
# A bulk action touches at most this many rows per command (run it again for more).
BULK_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action did to one fax (`new_fax_id`: the fax a resend created)."""

    fax_id: int
    action: str
    from_status: FaxStatus
    to_status: FaxStatus
    message: str
    new_fax_id: int | None = None
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did: one result per changed fax, one refusal per refused fax."""

    done: list[ActionResult] = field(default_factory=list)
    refused: list[OperationRefused] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FaxDetail:
    """One fax whole: the row (no document; the number in full) and its history."""

    row: dict[str, Any]
    attempts: list[dict[str, Any]]
    events: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    alerts: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """The same as JSON-ready values (times as ISO 8601 strings)."""
        return {
            "fax": jsonable(self.row),
            "attempts": jsonable(self.attempts),
            "events": jsonable(self.events),
            "actions": jsonable(self.actions),
            "alerts": jsonable(self.alerts),
        }


# --- seeing ------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str) -> datetime | timedelta:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), or an age such as
    `90m`, `2h`, `3d` (counted back from the database's clock when the list is read)."""
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValidationFailed(
                [FieldError("since", "must be an ISO 8601 date or time, or an age like 2h or 3d")]
            ) from None
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_faxes(
    conn: Connection,
    *,
    status: FaxStatus | str | Sequence[FaxStatus | str] | None = None,
    reference: str | None = None,
    since: datetime | timedelta | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Faxes newest first, each a dict of its state and codes (no document); the recipient as
    `to` masked (`+1212*****23`). `since` is a moment or an age; `before_id` pages on."""
    statuses = _statuses(status)
    if limit < 1:
        raise ValidationFailed([FieldError("limit", "must be at least 1")])
    if isinstance(since, timedelta):
        since = repository.database_now(conn) - since
    rows = repository.list_faxes(
        conn,
        statuses=[s.value for s in statuses],
        reference=reference,
        since=since,
        before_id=before_id,
        limit=limit,
    )
    for row in rows:
        row["status"] = FaxStatus(row["status"])
        row["to"] = mask_number(row.pop("to_number"))
    return rows


def show_fax(
    conn: Connection, fax_id: int | None = None, *, reference: str | None = None
) -> list[FaxDetail]:
    """Fax `fax_id`, or every fax of `reference` (newest first), whole; empty if none."""
    if (fax_id is None) == (reference is None):
        raise ValidationFailed([FieldError("fax", "give a fax id or a reference, not both")])
    ids = [fax_id] if fax_id is not None else repository.fax_ids_by_reference(conn, reference or "")
    details = []
    for one in ids:
        row = repository.fax_row(conn, one)
        if row is None:
            continue
        row = {k: v for k, v in row.items() if k != "lease_token"}
        row["status"] = FaxStatus(row["status"])
        history = repository.fax_history(conn, one)
        for attempt in history["attempts"]:
            error = attempt.get("error") or {}
            # mintfax's envelope, as the attempt stored it: what to quote to its support.
            attempt["error_code"] = error.get("error")
            attempt["action"] = error.get("action")
            attempt["message"] = error.get("message")
            attempt["request_id"] = attempt.get("request_id") or error.get("request_id")
        details.append(FaxDetail(row=row, **history))
    return details


# --- acting ------------------------------------------------------------------------------------


def retry_fax(
    conn: Connection,
    fax_id: int,
    *,
    actor: str,
    new_key: bool = False,
    now: datetime | None = None,
) -> ActionResult:
    """Send fax `fax_id` again: with its own key (a replay at worst), or with `new_key` as a new
    fax (a possible second fax). Raises `OperationRefused` when that is unsafe or void.
    `now`: the database's clock unless a test gives its own."""
    _check_actor(actor)
    fax = _locked(conn, fax_id, now)
    if new_key:
        return _resend(conn, fax, actor=actor, now=now)
    _refuse_if_in_flight_or_accepted(fax)
    if fax.status in TERMINAL_STATUSES:
        raise OperationRefused(
            fax.id,
            "final",
            f"it is {fax.status.value}"
            + (f" ({fax.status_reason})" if fax.status_reason else "")
            + ", which is final: its key is not sent again. `--new-key` sends it again as a "
            "new fax with a new key",
        )
    unsafe = _window_passed(fax)
    if unsafe is not None:
        raise OperationRefused(
            fax.id,
            "window_passed",
            "an earlier attempt may have created this fax at mintfax (its outcome is unknown) "
            f"and mintfax's 24 h idempotency window for its key closed at {_when(unsafe)}: "
            "a resend with the same key could be a second fax. Look it up at "
            "mintfax by its idempotency key first; `--new-key` sends it as a new fax, and the "
            "recipient may then get it twice",
        )
    before = fax.status
    repository.requeue_fax(conn, fax.id, now=now)
    detail: dict[str, Any] = {"attempts_before": fax.attempts}
    if fax.status_reason:
        detail["reason_before"] = fax.status_reason
    repository.record_action(
        conn,
        fax.id,
        action="retry",
        actor=actor,
        from_status=before.value,
        to_status=FaxStatus.PENDING.value,
        detail=detail,
        now=now,
    )
    message = (
        "pending again with its key, due now"
        if before is FaxStatus.NEEDS_REVIEW
        else "was pending; due now"
    )
    return ActionResult(fax.id, "retry", before, FaxStatus.PENDING, message)


def cancel_fax(
    conn: Connection, fax_id: int, *, actor: str, now: datetime | None = None
) -> ActionResult:
    """Withdraw fax `fax_id` (pending or needs_review, not accepted by mintfax): `cancelled`,
    final. Raises `OperationRefused` otherwise."""
    _check_actor(actor)
    fax = _locked(conn, fax_id, now)
    _refuse_if_in_flight_or_accepted(fax)
    if fax.status not in CANCELLABLE:
        raise OperationRefused(fax.id, "final", f"it is already {fax.status.value}")
    repository.cancel_fax(conn, fax.id, now=now, reason="cancelled_by_operator")
    warning = None
    if fax.outcome_unknown:
        warning = (
            "an earlier attempt's outcome is unknown: if mintfax created the fax it will still "
            "be delivered (mintfax cannot cancel a fax), and an acceptance that comes back "
            "later raises an orphan_submission alert"
        )
    repository.record_action(
        conn,
        fax.id,
        action="cancel",
        actor=actor,
        from_status=fax.status.value,
        to_status=FaxStatus.CANCELLED.value,
        detail={"outcome_unknown": fax.outcome_unknown},
        now=now,
    )
    return ActionResult(
        fax.id, "cancel", fax.status, FaxStatus.CANCELLED, "cancelled", warning=warning
    )


def bulk_status(action: str, status: FaxStatus | str, *, new_key: bool = False) -> FaxStatus:
    """The status a bulk `action` ("retry" or "cancel") may act on, or `ValidationFailed`:
    retry takes pending and needs_review (with --new-key: needs_review, failed, rejected,
    cancelled), cancel takes pending and needs_review."""
    wanted = _statuses(status)[0]
    allowed: tuple[FaxStatus, ...]
    if action == "cancel":
        allowed, verb = CANCELLABLE, "cancel"
    else:
        allowed = RESENDABLE if new_key else (FaxStatus.PENDING, FaxStatus.NEEDS_REVIEW)
        verb = "retry --new-key" if new_key else "retry"
    if wanted not in allowed:
        raise ValidationFailed(
            [
                FieldError(
                    "status",
                    f"{verb} applies to {', '.join(s.value for s in allowed)}, not {wanted.value}",
                )
            ]
        )
    return wanted


def retry_all(
    engine: Engine,
    status: FaxStatus | str,
    *,
    actor: str,
    new_key: bool = False,
    limit: int = BULK_LIMIT,
) -> BulkResult:
    """`retry_fax` for every fax in `status` (oldest first, up to `limit`), each in its own
    transaction."""
    wanted = bulk_status("retry", status, new_key=new_key)
    return _bulk(
        engine,
        wanted,
        limit,
        lambda conn, one: retry_fax(conn, one, actor=actor, new_key=new_key),
    )


def cancel_all(
    engine: Engine, status: FaxStatus | str, *, actor: str, limit: int = BULK_LIMIT
) -> BulkResult:
    """`cancel_fax` for every fax in `status` (pending or needs_review), oldest first."""
    wanted = bulk_status("cancel", status)
    return _bulk(engine, wanted, limit, lambda conn, one: cancel_fax(conn, one, actor=actor))


def count_in_status(conn: Connection, status: FaxStatus | str) -> int:
    """How many faxes are in `status` (what a bulk action's confirmation names)."""
    wanted = _statuses(status)[0]
    return repository.count_by_status(conn)[wanted]


# --- internals ---------------------------------------------------------------------------------


def _bulk(engine: Engine, status: FaxStatus, limit: int, act: Any) -> BulkResult:
    with engine.connect() as conn:
        ids = repository.fax_ids_in_status(conn, status, limit=limit)
    result = BulkResult()
    for one in ids:
        try:
            with engine.begin() as conn:
                result.done.append(act(conn, one))
        except OperationRefused as refusal:
            result.refused.append(refusal)
    return result


def _resend(
    conn: Connection, fax: repository.LockedFax, *, actor: str, now: datetime | None
) -> ActionResult:
    """The fax sent again as a new row with a new key; the old row, if open, cancelled."""
    _refuse_if_in_flight_or_accepted(fax)
    if fax.status is FaxStatus.PENDING:
        raise OperationRefused(
            fax.id,
            "pending",
            "it is pending and will be sent with its own key: `faxout retry` without "
            "--new-key makes it due now (cancel it first to send a new fax instead)",
        )
    earlier = repository.resends_of(conn, fax.id)
    if earlier:
        raise OperationRefused(
            fax.id,
            "already_resent",
            f"it was already sent again as fax {earlier[-1]}: act on that one",
        )
    if not fax.has_document:
        raise OperationRefused(
            fax.id, "purged", "its document was removed by retention: enqueue it anew"
        )
    key = resend_idempotency_key(fax.idempotency_key, len(earlier) + 1)
    new_id, _ = repository.insert_resend(conn, fax.id, idempotency_key=key)
    after = fax.status
    if fax.status is FaxStatus.NEEDS_REVIEW:
        repository.cancel_fax(conn, fax.id, now=now, reason="resent_with_new_key")
        after = FaxStatus.CANCELLED
    repository.record_action(
        conn,
        fax.id,
        action="resend",
        actor=actor,
        from_status=fax.status.value,
        to_status=after.value,
        detail={"new_fax_id": new_id, "outcome_unknown": fax.outcome_unknown},
        now=now,
    )
    repository.record_action(
        conn,
        new_id,
        action="resent_from",
        actor=actor,
        from_status=FaxStatus.PENDING.value,
        to_status=FaxStatus.PENDING.value,
        detail={"resent_from": fax.id},
        now=now,
    )
    warning = None
    if fax.outcome_unknown:
        warning = (
            f"an earlier attempt of fax {fax.id} may have created it at mintfax: if it did, "
            "the recipient gets this fax twice"
        )
    return ActionResult(
        fax.id,
        "resend",
        fax.status,
        after,
        f"sent again as a NEW fax {new_id} with a new idempotency key",
        new_fax_id=new_id,
        warning=warning,
    )


def _locked(conn: Connection, fax_id: int, now: datetime | None) -> repository.LockedFax:
    fax = repository.lock_fax_for_action(conn, fax_id, now=now)
    if fax is None:
        raise OperationRefused(fax_id, "not_found", "there is no such fax")
    return fax


def _refuse_if_in_flight_or_accepted(fax: repository.LockedFax) -> None:
    if fax.status is FaxStatus.SENDING:
        if fax.lease_expires_at is not None and fax.lease_expires_at < fax.now:
            # A worker that died mid-send: its POST may have reached mintfax, so the row is
            # not touched until the rescuer has recorded that (an unknown outcome).
            raise OperationRefused(
                fax.id,
                "in_flight",
                f"its worker ({fax.lease_owner}) stopped answering; its lease ran out at "
                f"{_when(fax.lease_expires_at)} and the lease rescuer gives it back to "
                "pending shortly: look again then",
            )
        until = f" (lease until {_when(fax.lease_expires_at)})" if fax.lease_expires_at else ""
        raise OperationRefused(
            fax.id,
            "in_flight",
            f"a worker ({fax.lease_owner}) is sending it right now{until}: wait for the "
            "outcome, then look again",
        )
    # A failed fax mintfax had accepted is final: its outcome is known, a new fax is no copy.
    open_with_fax_id = fax.mintfax_fax_id is not None and fax.status not in TERMINAL_STATUSES
    if open_with_fax_id or fax.status in (FaxStatus.SUBMITTED, FaxStatus.DELIVERED):
        raise OperationRefused(
            fax.id,
            "accepted",
            f"mintfax accepted it as fax {fax.mintfax_fax_id} ({fax.status.value}): it cannot "
            "be cancelled or retried here (mintfax has no cancel; a resend would be a second "
            "fax)",
        )


def _window_passed(fax: repository.LockedFax) -> datetime | None:
    """When mintfax's key window closed, if an unknown outcome makes a same-key resend unsafe
    (the worker's guard in outbox/submit.py judges the same way, on the same clock)."""
    if not fax.outcome_unknown or fax.first_attempt_at is None:
        return None
    closes = fax.first_attempt_at + IDEMPOTENCY_WINDOW - IDEMPOTENCY_SAFETY_MARGIN
    return closes if fax.now > closes else None


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _check_actor(actor: str) -> None:
    if not actor or not actor.strip() or len(actor) > MAX_ACTOR_CHARS:
        raise ValidationFailed(
            [FieldError("actor", f"must name who acts, 1 to {MAX_ACTOR_CHARS} characters")]
        )


def _statuses(
    status: FaxStatus | str | Sequence[FaxStatus | str] | None,
) -> list[FaxStatus]:
    if status is None:
        return []
    given = [status] if isinstance(status, str) else list(status)
    found: list[FaxStatus] = []
    for value in given:
        try:
            found.append(FaxStatus(value))
        except ValueError:
            names = ", ".join(s.value for s in FaxStatus)
            raise ValidationFailed(
                [FieldError("status", f"{value!r} is not a status (one of {names})")]
            ) from None
    return found


def jsonable(value: Any) -> Any:
    """`value` with times, statuses and ids as JSON-ready values (bytes dropped)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return None
    return value
