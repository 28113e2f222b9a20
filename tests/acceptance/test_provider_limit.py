"""mintfax's own limit is respected even when the fleet is misconfigured (issue 10, item 3): the
simulator allows 30 requests per sliding 60 s window and says so on every answer
(`X-RateLimit-Limit: 30`); the fleet is configured at 120/min. Real relay, workers and beat."""

from __future__ import annotations

import bisect

import pytest
from sqlalchemy import func, select

from outbox.models import alerts, fax_attempts
from outbox.provider_limit import ALERT_KIND
from tests.acceptance.fleet import Fleet

pytestmark = pytest.mark.timeout(240)

MINTFAX_LIMIT = 30
CONFIGURED = 120
# More than mintfax allows in one window: at the configured 120/min the 31st would be a 429
# about 15 s in; followed, the run has to stretch past the first 60 s.
FAXES = MINTFAX_LIMIT + 4


def test_a_fleet_configured_above_mintfax_s_limit_gets_no_429_and_one_alert(
    fleet: Fleet,
) -> None:
    fleet.stack.env["FAXOUT_RATE_LIMIT_PER_MINUTE"] = str(CONFIGURED)
    fleet.start_sandbox("--rate-limit-per-minute", str(MINTFAX_LIMIT))
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(FAXES)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 150, "every fax at mintfax's pace")
    fleet.assert_exactly_once(FAXES)

    stats = fleet.sandbox("stats")
    assert stats["requests_by_status"].get("429", 0) == 0, stats["requests_by_status"]
    with fleet.engine.connect() as conn:
        refused = conn.execute(
            select(func.count()).where(fax_attempts.c.http_status == 429)
        ).scalar_one()
        raised = conn.execute(
            select(alerts.c.message, alerts.c.detail).where(alerts.c.kind == ALERT_KIND)
        ).all()
    assert refused == 0
    [(message, detail)] = raised  # one alert for the whole fleet, naming both figures
    assert f"{MINTFAX_LIMIT} requests per minute" in message
    assert f"FAXOUT_RATE_LIMIT_PER_MINUTE is {CONFIGURED}" in message
    assert detail["provider_limit"] == MINTFAX_LIMIT
    assert detail["configured_limit"] == CONFIGURED

    # The test could fail: the run was long enough that 120/min would have overrun the window.
    accepted = sorted(a["monotonic"] for a in fleet.sandbox("requests")["data"])
    assert accepted[-1] - accepted[0] > 60
    busiest = max(bisect.bisect_right(accepted, t + 60.0) - i for i, t in enumerate(accepted))
    assert busiest <= MINTFAX_LIMIT
    assert (
        sum("ALERT provider_rate_limit" in fleet.stack.log_text(n) for n in fleet.stack.processes)
        == 1
    )
    fleet.assert_no_secret_in_logs()
