"""Celery tasks: each a thin adapter over one plain function of `outbox`."""

from __future__ import annotations

from outbox.errors import SubmitIncomplete
from outbox.submit import describe_reports, submit_reports
from workers.app import (
    APPLY_RETENTION_TASK,
    DELIVER_ALERTS_TASK,
    POLL_STATUS_TASK,
    RESCUE_TASK,
    RESOLVE_UNKNOWN_TASK,
    SUBMIT_TASK,
    SYNC_PAUSE_MIRROR_TASK,
    WATCH_BALANCE_TASK,
    app,
)
from workers.outages import settle_soon
from workers.runtime import Runtime


# The result is not stored (no result backend): the worker's `task-succeeded` event carries its
# repr, which Flower shows; Celery cuts that repr at `resultrepr_maxsize` (1024 by default),
# too short for a full message of MAX_IDS_PER_MESSAGE faxes. `throws`: SubmitIncomplete marks
# the task failed (Flower) but is logged in one line, not as a crash with a traceback: the submit
# path has already logged the cause, and the rows go on by themselves.
@app.task(name=SUBMIT_TASK, ignore_result=True, resultrepr_maxsize=8192, throws=(SubmitIncomplete,))
def submit_fax(fax_ids: list[int] | int) -> str:
    """Submit outbox rows (a list of ids, or one id) to mintfax, one after the other.

    Each row is claimed on its own, so a row already taken, finished or rescheduled is
    skipped; a redelivered message redoes only what is still claimable. Returns each fax and
    what became of it (`1234: submitted; 1235: retry in 7 s (503)`); raises `SubmitIncomplete`
    with the same text, after every row was handled, when a fault of ours or of the setup kept
    a fax from being tried, so that the task shows as failed.
    """
    ids = [fax_ids] if isinstance(fax_ids, int) else [int(fax_id) for fax_id in fax_ids]
    ctx = Runtime.get().submit_context
    reports = submit_reports(ctx, ids)
    settle_soon(ctx)  # what a database outage kept, written as soon as it is back
    summary = describe_reports(reports)
    if any(report.fault for report in reports):
        raise SubmitIncomplete(summary)
    return summary


@app.task(name=RESCUE_TASK, ignore_result=True)
def rescue_expired_leases() -> int:
    """Return rows of vanished workers to pending."""
    return Runtime.get().rescuer.run_once()


@app.task(name=SYNC_PAUSE_MIRROR_TASK, ignore_result=True)
def sync_pause_mirror() -> int:
    """Copy open fleet pauses (and mintfax's lower rate limit) from Postgres to Redis (heals a
    flushed Redis)."""
    runtime = Runtime.get()
    runtime.provider_limit.heal()
    return len(runtime.fleet.sync_mirror())


@app.task(name=DELIVER_ALERTS_TASK, ignore_result=True)
def deliver_pending_alerts() -> int:
    """Retry alert webhook deliveries that failed."""
    runtime = Runtime.get()
    return runtime.alerter.deliver_pending(runtime.engine)


@app.task(name=POLL_STATUS_TASK, ignore_result=True)
def poll_fax_status() -> int:
    """Read accepted faxes without a final state at mintfax; returns how many were polled."""
    return Runtime.get().poller.run_once().polled


@app.task(name=WATCH_BALANCE_TASK, ignore_result=True)
def watch_balance() -> int | None:
    """Read mintfax's balance: low-balance alert, automatic end of a balance pause."""
    snapshot = Runtime.get().balance_watch.run_once().snapshot
    return None if snapshot is None else snapshot.available


@app.task(name=RESOLVE_UNKNOWN_TASK, ignore_result=True)
def resolve_unknown_outcomes() -> int:
    """Look up at mintfax the parked rows whose outcome is unknown; returns how many."""
    return Runtime.get().resolver.run_once().looked_up


@app.task(name=APPLY_RETENTION_TASK, ignore_result=True)
def apply_retention() -> int:
    """Remove document bytes, mintfax's copies and old rows as retention says; how many."""
    return Runtime.get().retention.run_once().total
