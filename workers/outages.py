"""How a worker process lives through a Postgres or Redis restart (outbox/outage.py has the
library's side): quietly, and ready again within a second or two of the service's return.

- `OutageAwareTask`, every task's base class: a task that meets an outage ends with one
  warning for the process (`outbox.outage.process_log`), not a traceback per task; the rows
  are safe in Postgres and the relay and beat hand them out again.
- `settle_soon`: a thread that writes what the submit path kept during a database outage
  (`outbox.submit.settle_kept`) as soon as the database answers, even if no task arrives.
- `QuickReconnectConsumer`: Celery's consumer, reconnecting to the broker every second
  instead of after 2, 4, 6 ... up to 30 s, and saying so once per outage.
- `OutageAwareScheduler`: beat's scheduler, skipping what it cannot send while Redis is away
  with one warning, where Celery's logs an error with two tracebacks per scheduled task.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kombu.exceptions
import redis
from celery import Task
from celery.beat import PersistentScheduler
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown

from outbox.errors import DatabaseUnavailable, FleetStateUnavailable
from outbox.outage import DATABASE, REDIS, as_database_unavailable, process_log
from outbox.submit import SubmitContext, settle_kept
from workers.app import SUBMIT_TASK

log = logging.getLogger("faxout.outage")

# How often a process retries the database (kept work) or the broker while it is away.
RETRY_SECONDS = 1.0


def outage_of(exc: BaseException) -> tuple[str, BaseException] | None:
    """Which service `exc` (or what it was raised from: beat wraps the broker's error in a
    SchedulingError) says is away, with the error to tell; None for anything else."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 5:
        found = _outage_itself(cause)
        if found is not None:
            return found
        # Celery's `reraise` leaves the broker's error as the context, not the cause.
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _outage_itself(exc: BaseException) -> tuple[str, BaseException] | None:
    if isinstance(exc, DatabaseUnavailable):
        return DATABASE, exc
    lost = as_database_unavailable(exc)
    if lost is not None:
        return DATABASE, lost
    if isinstance(exc, FleetStateUnavailable | redis.ConnectionError | redis.TimeoutError):
        return REDIS, exc
    if isinstance(exc, kombu.exceptions.OperationalError):
        return REDIS, exc
    return None


class OutageAwareTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """A task that meets a Postgres or Redis outage ends quietly (its result says so)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().__call__(*args, **kwargs)
        except Exception as exc:
            outage = outage_of(exc)
            if outage is None:
                raise
            service, error = outage
            process_log().lost(
                service, error, "its tasks end without their work, which waits in Postgres"
            )
            return f"skipped: {service} unavailable"
        if self.name != SUBMIT_TASK:
            # Every maintenance task reads or writes Postgres, so its success ends an outage;
            # the submit task ends quietly through one, and tells its end itself.
            process_log().back(DATABASE)
        return result


_settler: threading.Thread | None = None
_settler_lock = threading.Lock()


def settle_soon(ctx: SubmitContext) -> None:
    """Write what `ctx` kept as soon as the database answers, on a thread of this process
    (one at most), retrying every `RETRY_SECONDS`: a claim must be given back, and a 201
    recorded, without waiting for the next task, which may not come to this process."""
    global _settler
    if not ctx.kept:
        return
    with _settler_lock:
        if _settler is not None and _settler.is_alive():
            return
        _settler = threading.Thread(target=_settle, args=(ctx,), name="faxout-settle", daemon=True)
        _settler.start()


def _settle(ctx: SubmitContext) -> None:
    stop = threading.Event()
    while ctx.kept:
        try:
            settle_kept(ctx)
        except DatabaseUnavailable:
            pass  # told once already; try again shortly
        except Exception:
            # A bug must not leave the work kept for ever unseen; the lease still covers it.
            log.exception("writing the work kept during an outage failed")
            return
        stop.wait(RETRY_SECONDS)


class QuickReconnectConsumer(Consumer):  # type: ignore[misc]  # Celery's Consumer is untyped
    """Celery's consumer with a broker reconnection of every second, for as long as it takes.

    Celery's own waits 2, 4, 6 ... up to 30 s between tries (kombu's defaults, which its
    consumer does not let settings change), so a worker could idle half a minute after Redis
    was back; and it gives up after `broker_connection_max_retries` (100 tries), which at one
    per second would stop workers during a long outage: they wait instead.
    """

    def ensure_connected(self, conn: Any) -> Any:
        def errback(exc: BaseException, interval: float) -> None:
            process_log().lost(REDIS, exc, "reconnecting to the broker every second")

        conn = conn.ensure_connection(
            errback,
            None,
            interval_start=RETRY_SECONDS,
            interval_step=0,
            interval_max=RETRY_SECONDS,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        process_log().back(REDIS)
        return conn


class OutageAwareScheduler(PersistentScheduler):  # type: ignore[misc]  # Celery's is untyped
    """Beat's scheduler, telling a broker outage once; a missed run is only late (each
    maintenance task catches up on its next run)."""

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:
            outage = outage_of(exc)
            if outage is None:
                log.exception("beat could not send %s", entry.name)
                return
            process_log().lost(outage[0], outage[1], "scheduled tasks wait until it answers")
            return
        process_log().back(REDIS)
