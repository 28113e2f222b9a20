"""Retention: the document bytes of final faxes go after a while, whole rows later if asked.

A fax's document is what the outbox needs to send it; once the fax is final (`delivered`,
`failed`, `rejected`, `cancelled`: sticky, never sent again) the bytes are only a liability
(often health data). A pass (beat runs one on the maintenance queue,
`workers.tasks.apply_retention`) takes three steps, in this order:

1. **Rows** (`FAXOUT_PURGE_DAYS`): rows final for that long are deleted with their attempts,
   events and alerts (after mintfax's copy, when 3. is on: such a row waits for it).
2. **Documents** (`FAXOUT_RETENTION_DAYS`, or `FAXOUT_ZERO_FOOTPRINT` for "as soon as final"):
   the bytes of rows final for that long become NULL (`document_purged_at` says when). The
   row, its idempotency key and fingerprint, its status and history stay, so the application
   still reads the outcome and a re-enqueue of the same intent is still the same row.
3. **mintfax's copy** (`FAXOUT_DELETE_AT_MINTFAX`): `DELETE /v1/fax/{id}` for rows whose bytes
   are gone; 2xx, 404 and 410 record `mintfax_deleted_at` (a 404 or 410 only once mintfax's
   API has answered this pass: a base URL without /v1 answers 404 for every fax); a 409 (not
   final there yet) or any other refusal sends the row to the back of the queue; an error
   about every request (429, 401/403, 5xx, no connection) ends the step until the next pass.
   Calls take fleet-throttle tokens like polls (never while sends are due, never waiting).

Every step works in batches of one short transaction each (`FOR UPDATE SKIP LOCKED` along a
partial index that holds only the rows due), so a pass never waits for another pass and never
holds a lock a send needs (sends only ever take non-final rows); a killed pass loses at most
its open batch, which rolls back whole. A pass stops at `time_budget` seconds and the next one
carries on. Ages are counted on the database's clock from `final_at`, which a trigger sets when
the row becomes final.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.clock import Clock, sql_now
from outbox.errors import (
    AuthenticationFailed,
    InsufficientBalance,
    MintfaxError,
    RateLimited,
    RequestRejected,
    UnexpectedResponse,
)
from outbox.settings import Settings
from outbox.throttle import FleetThrottle

log = logging.getLogger("faxout.retention")

DAY_SECONDS = 86_400.0
# mintfax's answers that mean "no copy here any more".
_GONE = (404, 410)
# Errors that would answer every deletion the same way: the step ends until the next pass.
_EVERY_REQUEST = (RateLimited, AuthenticationFailed, InsufficientBalance, UnexpectedResponse)


class FaxDeleter(Protocol):
    """What retention needs of `outbox.fax_client.MintfaxClient`."""

    def delete_fax(self, fax_id: str) -> None: ...

    def get_balance(self) -> object: ...


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to remove and when, in seconds after a row became final (None: never)."""

    document_age: float | None = None
    row_age: float | None = None
    delete_at_mintfax: bool = False

    @classmethod
    def from_days(
        cls,
        *,
        retention_days: float | None,
        purge_days: float | None,
        zero_footprint: bool,
        delete_at_mintfax: bool,
    ) -> RetentionPolicy:
        """The policy of the settings `FAXOUT_RETENTION_DAYS`, `FAXOUT_PURGE_DAYS`,
        `FAXOUT_ZERO_FOOTPRINT` and `FAXOUT_DELETE_AT_MINTFAX`."""
        document_age = 0.0 if zero_footprint else None
        if document_age is None and retention_days is not None:
            document_age = retention_days * DAY_SECONDS
        return cls(
            document_age=document_age,
            row_age=None if purge_days is None else purge_days * DAY_SECONDS,
            delete_at_mintfax=delete_at_mintfax and document_age is not None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        """The policy `settings` configure."""
        return cls.from_days(
            retention_days=settings.retention_days,
            purge_days=settings.purge_days,
            zero_footprint=settings.zero_footprint,
            delete_at_mintfax=settings.delete_at_mintfax,
        )

    @property
    def active(self) -> bool:
        """Whether a pass has anything to do at all."""
        return self.document_age is not None or self.row_age is not None

    @property
    def interval(self) -> float:
        """Seconds between beat's passes: "as soon as final" means within seconds."""
        return 5.0 if self.document_age == 0 else 60.0


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass did (for logs, the task's return value and tests)."""

    documents_removed: int = 0
    mintfax_deleted: int = 0
    mintfax_refused: int = 0
    rows_deleted: int = 0
    # False when the pass stopped at its time budget with work left for the next one.
    complete: bool = True

    @property
    def total(self) -> int:
        """Everything removed: documents, copies at mintfax and rows."""
        return self.documents_removed + self.mintfax_deleted + self.rows_deleted


class RetentionService:
    """Runs one retention pass per `run_once`; beat calls it every `policy.interval` seconds."""

    document_batch = 500  # rows per transaction: a few ms of locks on rows nobody else wants
    document_batch_bytes = 64 * 1024 * 1024  # and no more document bytes than this (TOAST)
    row_batch = 200  # rows per transaction, each with its attempts, events and alerts
    mintfax_batch = 20  # deletions asked of mintfax per pass
    time_budget = 45.0  # seconds per pass; passes that overlap share the work (SKIP LOCKED)

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        policy: RetentionPolicy,
        *,
        client: FaxDeleter | None = None,
        throttle: FleetThrottle | None = None,
        sends_horizon: float = 20.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy.delete_at_mintfax and client is None:
            raise ValueError("delete_at_mintfax needs a mintfax client")
        self._engine = engine
        self._clock = clock
        self.policy = policy
        self._client = client
        self._throttle = throttle
        self._sends_horizon = sends_horizon
        self._monotonic = monotonic

    def run_once(self) -> RetentionReport:
        """One pass: rows, then documents, then mintfax's copies; all within the budget."""
        if not self.policy.active:
            return RetentionReport()
        deadline = self._monotonic() + self.time_budget
        documents = deleted = refused = rows = 0
        complete = True
        # Rows first: bytes of a row about to go need no pass of their own.
        if self.policy.row_age is not None:
            row_age = self.policy.row_age
            after_mintfax = self.policy.delete_at_mintfax

            def purge_rows(conn: Connection, now: datetime | None) -> tuple[list[int], bool]:
                ids = repository.purge_rows(
                    conn, now=now, age=row_age, limit=self.row_batch, after_mintfax=after_mintfax
                )
                return ids, len(ids) == self.row_batch

            rows, done = self._batches(deadline, purge_rows)
            complete = complete and done
        if self.policy.document_age is not None:
            document_age = self.policy.document_age

            def purge_documents(conn: Connection, now: datetime | None) -> tuple[list[int], bool]:
                return repository.purge_documents(
                    conn,
                    now=now,
                    age=document_age,
                    limit=self.document_batch,
                    max_bytes=self.document_batch_bytes,
                )

            documents, done = self._batches(deadline, purge_documents)
            complete = complete and done
        if self.policy.delete_at_mintfax:
            deleted, refused = self._delete_at_mintfax(deadline)
        report = RetentionReport(documents, deleted, refused, rows, complete)
        if report.total or refused:
            log.info(
                "retention pass: %d document(s) removed, %d deleted at mintfax (%d refused), "
                "%d row(s) deleted%s",
                documents,
                deleted,
                refused,
                rows,
                "" if complete else "; more left for the next pass",
                extra={
                    "action": "retention.pass",
                    "documents_removed": documents,
                    "mintfax_deleted": deleted,
                    "rows_deleted": rows,
                },
            )
        return report

    # -- internals ---------------------------------------------------------------------------

    def _batches(
        self,
        deadline: float,
        step: Callable[[Connection, datetime | None], tuple[list[int], bool]],
    ) -> tuple[int, bool]:
        """Run `step` (ids done, whether rows may be left) in its own short transaction until
        nothing is left (done) or the deadline passes (not done). Returns (rows, done)."""
        total = 0
        while True:
            with self._engine.begin() as conn:
                ids, more = step(conn, sql_now(self._clock))
            total += len(ids)
            if not more:
                return total, True
            if self._monotonic() >= deadline:
                return total, False

    def _delete_at_mintfax(self, deadline: float) -> tuple[int, int]:
        # Autocommit: the lock is the session's, and no transaction stays open during HTTP.
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not repository.try_lock_mintfax_deletions(conn):
                return 0, 0  # another pass is at it
            try:
                return self._delete_due(deadline)
            finally:
                repository.unlock_mintfax_deletions(conn)

    def _delete_due(self, deadline: float) -> tuple[int, int]:
        assert self._client is not None
        now = sql_now(self._clock)
        with self._engine.begin() as tx:
            if repository.sends_waiting(tx, now=now, horizon=self._sends_horizon):
                return 0, 0  # sends first: they share the rate limit
            due = repository.mintfax_deletions_due(tx, limit=self.mintfax_batch)
        deleted = refused = 0
        # A 404 is believed only from a client shown to reach mintfax's API in this pass: a
        # base URL without /v1 (or a proxy) answers 404 for every fax, which must never be
        # taken for "deleted".
        reached_api = False
        for row_id, fax_id in due:
            if self._monotonic() >= deadline or not self._token():
                break
            outcome = "deleted"
            try:
                self._client.delete_fax(fax_id)
                reached_api = True
            except MintfaxError as exc:
                outcome, reached_api = self._after_refusal(row_id, fax_id, exc, reached_api)
            if outcome == "stop":
                break
            if outcome == "refused":
                refused += 1
                continue
            with self._engine.begin() as tx:
                deleted += repository.mark_mintfax_deleted(tx, row_id, now=sql_now(self._clock))
        return deleted, refused

    def _after_refusal(
        self, row_id: int, fax_id: str, exc: MintfaxError, reached_api: bool
    ) -> tuple[str, bool]:
        """What a refused deletion means: ("deleted" | "refused" | "stop", reached_api)."""
        assert self._client is not None
        if isinstance(exc, RequestRejected) and exc.status_code in _GONE:
            if reached_api:
                return "deleted", True  # nothing left there: as good as deleted
            try:
                if not self._token():
                    return "stop", False
                self._client.get_balance()  # a known endpoint: is this mintfax's API at all?
            except MintfaxError as check:
                self._stop(row_id, fax_id, check)
                return "stop", False
            return "deleted", True
        if _about_this_fax(exc):
            self._postpone(row_id, fax_id, exc)
            return "refused", reached_api
        self._stop(row_id, fax_id, exc)
        return "stop", reached_api

    def _stop(self, row_id: int, fax_id: str, exc: MintfaxError) -> None:
        # Wrong for every request (429, 401/403, 5xx, no connection, a wrong base URL).
        if isinstance(exc, RateLimited) and self._throttle is not None:
            self._throttle.cooldown(exc.retry_after)
        log.warning(
            "retention: deletions at mintfax stopped until the next pass: %s",
            exc,
            extra={"action": "retention.mintfax_stopped", "fax_id": row_id,
                   "mintfax_fax_id": fax_id},
        )  # fmt: skip

    def _postpone(self, row_id: int, fax_id: str, exc: MintfaxError) -> None:
        log.warning(
            "retention: mintfax refused to delete fax %d: %s",
            row_id,
            exc,
            extra={"action": "retention.mintfax_refused", "fax_id": row_id,
                   "mintfax_fax_id": fax_id},
        )  # fmt: skip
        with self._engine.begin() as tx:
            repository.postpone_mintfax_deletion(tx, row_id)

    def _token(self) -> bool:
        return self._throttle is None or self._throttle.try_acquire().granted


def _about_this_fax(exc: MintfaxError) -> bool:
    """A refusal about one fax (409 not final yet, 400/422...), not about every request."""
    if isinstance(exc, _EVERY_REQUEST) or exc.status_code is None:
        return False
    return 400 <= exc.status_code < 500
