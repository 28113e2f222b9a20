"""Structured logs from real processes: with FAXOUT_LOG_FORMAT=json the relay, Celery workers
(and their pool children) and beat write one JSON object per log line, with an action and the
outbox and mintfax fax ids where known; no recipient number and no API key appears whole in
any of them, at DEBUG. Beat's retention pass runs on the maintenance queue and logs its line.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.acceptance.fleet import API_KEY, Fleet

pytestmark = pytest.mark.timeout(180)

DELIVERED = "+15005550001"
REFUSED = "+15005550099"  # the sandbox answers 422: a rejection logged with the fax's id
# Celery's own format ("[2026-12-01 00:00:00,000: INFO/MainProcess] ..."): must be gone.
_CELERY_FORMAT = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: (DEBUG|INFO|WARNING|ERROR)/")


def _json_lines(log: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The log's JSON lines, and every other line (Celery's startup banner on stdout)."""
    parsed, other = [], []
    for line in log.splitlines():
        if line.startswith("{"):
            parsed.append(json.loads(line))  # a line that starts like JSON must parse
        elif line.strip():
            other.append(line)
    return parsed, other


def test_every_process_writes_masked_json_lines(fleet: Fleet) -> None:
    fleet.stack.env.update(
        FAXOUT_LOG_FORMAT="json",
        FAXOUT_LOG_LEVEL="DEBUG",
        FAXOUT_ZERO_FOOTPRINT="true",  # retention's pass every 5 s, with something to do
    )
    fleet.start_sandbox()
    fleet.start(workers=1, concurrency=2, relays=1, beat=True)
    ids = fleet.enqueue(6, numbers=(DELIVERED, REFUSED))
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "every fax sent or refused")
    refused = set(ids[1::2])
    # The refused faxes are final at once: zero footprint drops their bytes on beat's next pass.
    with fleet.engine.connect() as conn:

        def purged() -> int:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM fax_outbox WHERE document IS NULL")
                ).scalar_one()
            )

        fleet.wait_until(lambda: purged() >= len(refused), 30, "retention to drop the bytes")
    fleet.wait_until(
        lambda: "retention.pass" in fleet.stack.log_text("worker0"), 20, "retention's log line"
    )

    by_action: dict[str, list[dict[str, Any]]] = {}
    for name in ("relay0", "worker0", "beat"):
        log = fleet.stack.log_text(name)
        assert DELIVERED not in log and REFUSED not in log, f"a number leaked into {name}'s log"
        assert API_KEY not in log and API_KEY[8:] not in log, f"the key leaked into {name}'s log"
        lines, other = _json_lines(log)
        assert lines, f"{name} wrote no JSON line"
        assert not [o for o in other if _CELERY_FORMAT.match(o)], f"{name}: Celery's own format"
        for line in lines:
            assert {"ts", "level", "logger", "action", "message", "fax_id", "mintfax_fax_id"} <= (
                set(line)
            )
            by_action.setdefault(line["action"], []).append(line)
    assert any(line["role"] == "relay" for line in by_action["relay.listening"])
    assert {line["role"] for line in by_action["retention.pass"]} == {"worker"}
    assert any(line["role"] == "beat" for lines in by_action.values() for line in lines)
    # One line per submission, with the row's id, mintfax's fax id once there is one, and the
    # number masked (DEBUG shows successes).
    submitted = by_action.get("submit.submitted", [])
    assert {line["fax_id"] for line in submitted} == set(ids) - refused
    assert all(line["mintfax_fax_id"] for line in submitted)
    assert all("+1500*****01" in line["message"] for line in submitted)
    rejected = by_action.get("submit.rejected", [])
    assert {line["fax_id"] for line in rejected} == refused
    assert all(line["mintfax_fax_id"] is None for line in rejected)
    assert any(line["http_status"] == 422 for line in by_action["mintfax.refused"])


def test_the_webhook_receiver_writes_json_lines_without_its_secret(fleet: Fleet) -> None:
    secret = "whsec_test_CANARYreceiver0123456789"
    fleet.stack.env.update(FAXOUT_LOG_FORMAT="json", FAXOUT_LOG_LEVEL="DEBUG")
    url = fleet.stack.start_webhooks(secret=secret)
    forged = httpx.post(
        url,
        content=b'{"event": "fax.delivered", "data": {"to": "+12125550123"}}',
        headers={"X-Mintfax-Signature": secret, "X-Mintfax-Timestamp": "0"},
        timeout=10,
    )
    assert forged.status_code == 401
    fleet.wait_until(
        lambda: "webhook.refused" in fleet.stack.log_text("webhooks"), 10, "the refusal's line"
    )
    log = fleet.stack.log_text("webhooks")
    assert "CANARYreceiver" not in log and "5550123" not in log
    lines, other = _json_lines(log)
    assert not other, other  # uvicorn's own lines are JSON too
    [refused] = [line for line in lines if line["action"] == "webhook.refused"]
    assert refused["role"] == "webhooks" and refused["http_status"] == 401
