"""Celery tasks: each a thin adapter over one plain function of `outbox`."""

from __future__ import annotations

from workers.app import app
from workers.runtime import SUBMIT_TASK, Runtime


@app.task(name=SUBMIT_TASK, ignore_result=True)
def submit_fax(fax_id: int) -> str:
    """Submit outbox row `fax_id` to mintfax (a no-op unless the row is claimable)."""
    from outbox.submit import submit_fax as submit

    return submit(Runtime.get().submit_context, int(fax_id)).value


@app.task(name="faxout.rescue_expired_leases", ignore_result=True)
def rescue_expired_leases() -> int:
    """Return rows of vanished workers to pending."""
    return Runtime.get().rescuer.run_once()


@app.task(name="faxout.sync_pause_mirror", ignore_result=True)
def sync_pause_mirror() -> int:
    """Copy open fleet pauses from Postgres to Redis (heals a flushed Redis)."""
    return len(Runtime.get().fleet.sync_mirror())


@app.task(name="faxout.deliver_pending_alerts", ignore_result=True)
def deliver_pending_alerts() -> int:
    """Retry alert webhook deliveries that failed."""
    runtime = Runtime.get()
    return runtime.alerter.deliver_pending(runtime.engine)
