"""What `submit_reports` tells of each row (the Celery task's result in Flower), on real
Postgres and Redis and the simulator over HTTP: answers about the fax, and what kept a fax from
being tried, in codes only."""

from __future__ import annotations

import re

import redis

from outbox.fax_client import MintfaxClient
from outbox.models import Outcome
from outbox.submit import describe_reports, submit_reports
from outbox.throttle import FleetThrottle
from tests.integration import parked
from tests.integration.test_submit import Harness, harness  # noqa: F401
from tests.sandbox_fixtures import SandboxHandle

mintfax = parked.mintfax  # the fixture, for this module's tests


def test_one_message_tells_each_fax_in_order(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    mintfax: MintfaxClient,
) -> None:
    good, refused = harness.enqueue(ref="g"), harness.enqueue(to="+15005550099", ref="r")
    harness.dispatch()
    reports = submit_reports(harness.ctx, [good, refused, good])
    said = describe_reports(reports)
    assert said == (
        f"{good}: submitted; "
        f"{refused}: rejected: validation_failed (422 validation_failed); "
        f"{good}: skipped (already taken, finished or not due)"
    )
    assert not any(r.fault for r in reports)
    assert "+1500" not in said

    sandbox.set_faults(error_503=1.0)
    flaky = harness.enqueue(ref="f")
    harness.dispatch()
    [report] = submit_reports(harness.ctx, [flaky])
    assert report.outcome is Outcome.RETRY_SCHEDULED and not report.fault
    assert re.fullmatch(rf"{flaky}: retry in \d+\.\d s \(503 [a-z_]+\)", report.describe())
    # The delay told is the one stored on the row.
    row = harness.row(flaky)
    assert report.retry_at == row["next_attempt_at"]


def test_unreachable_redis_is_told(harness: Harness) -> None:  # noqa: F811
    from workers.single_host.embedded import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    harness.ctx.throttle = FleetThrottle(dead, 60_000)
    fax = harness.enqueue()
    harness.dispatch()
    [report] = submit_reports(harness.ctx, [fax])
    # Whether that fails the task is outbox/outage.py's call (an outage is told once).
    assert report.describe() == f"{fax}: throttled, due again in 5.0 s (FleetStateUnavailable)"
