"""Credentials (issue 10, item 4): the API key and the webhook secret rotated in the middle of a
run, with real workers, beat, the real webhook receiver and the simulator over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from mintfax_sandbox.webhooks import signed_headers
from outbox.fax_client import MintfaxClient
from outbox.models import FaxStatus, fax_attempts, fleet_pauses
from tests.acceptance.fleet import API_KEY, Fleet
from workers.single_host.embedded import free_port

pytestmark = pytest.mark.timeout(300)


def write_key(path: Path, key: str) -> None:
    """Deploy a key as a secrets manager does: a new file renamed into place, owner-only."""
    fresh = path.with_suffix(".new")
    fresh.write_text(key + "\n")
    fresh.chmod(0o600)
    os.replace(fresh, path)


def key_file_fleet(fleet: Fleet, tmp_path: Path, key: str = API_KEY) -> Path:
    path = tmp_path / "mintfax.key"
    write_key(path, key)
    del fleet.stack.env["MINTFAX_API_KEY"]
    fleet.stack.env["MINTFAX_API_KEY_FILE"] = str(path)
    return path


def usage(fleet: Fleet, key: str) -> dict[str, int]:
    """The simulator's count of requests made (and refused) with `key`."""
    for entry in fleet.sandbox("keys")["data"]:
        if entry["last4"] == key[-4:]:
            return {"requests": entry["requests"], "refused": entry["refused"]}
    return {"requests": 0, "refused": 0}


def test_api_key_rotation_mid_run_fails_no_submission(fleet: Fleet, tmp_path: Path) -> None:
    """Generate the new key, deploy it (the file), see it in use, revoke the old one."""
    key_file = key_file_fleet(fleet, tmp_path)
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=20-40")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(400)
    fleet.wait_until(lambda: fleet.submitted_count() >= 80, 60, "the run to be under way")

    new_key = httpx.post(f"{fleet.control}/keys", json={}, timeout=10).json()["key"]
    write_key(key_file, new_key)
    # Deployed: every process reads the file before each request. Revoke the old key once it
    # has stopped being used (what an operator reads on mintfax's dashboard).
    settled_at, last = time.monotonic(), usage(fleet, API_KEY)["requests"]
    while time.monotonic() - settled_at < 1.5:
        time.sleep(0.3)
        now = usage(fleet, API_KEY)["requests"]
        if now != last:
            settled_at, last = time.monotonic(), now
    assert fleet.unfinished() > 0, "the run ended before the rotation: the test proves nothing"
    fleet.sandbox("keys/revoke", key=API_KEY)

    fleet.wait_until(lambda: fleet.unfinished() == 0, 120, "the rest with the new key")
    fleet.assert_exactly_once(400)
    with fleet.engine.connect() as conn:
        failed = conn.execute(
            select(func.count()).where(fax_attempts.c.http_status.in_([401, 403]))
        ).scalar_one()
        pauses = conn.execute(select(func.count()).select_from(fleet_pauses)).scalar_one()
    assert failed == 0 and pauses == 0
    old, new = usage(fleet, API_KEY), usage(fleet, new_key)
    assert old["requests"] >= 80 and old["refused"] == 0  # nobody used it once revoked
    assert new["requests"] > 0 and new["refused"] == 0
    for name in fleet.stack.processes:
        assert new_key not in fleet.stack.log_text(name)
    fleet.assert_no_secret_in_logs()


def test_a_key_revoked_before_the_new_one_is_deployed_pauses_and_loses_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The wrong order (revoke, then deploy): the fleet pauses on the 401 with one alert and
    the rows stay pending; the new key and `faxout resume` finish them, each sent once."""
    key_file = key_file_fleet(fleet, tmp_path)
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=20-40")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(200)
    fleet.wait_until(lambda: fleet.submitted_count() >= 30, 60, "the run to be under way")
    fleet.sandbox("keys/revoke", key=API_KEY)
    fleet.wait_until(
        lambda: fleet.counts()[FaxStatus.SENDING] == 0 and _paused(fleet), 30, "the pause"
    )
    assert fleet.counts()[FaxStatus.PENDING] > 0

    new_key = httpx.post(f"{fleet.control}/keys", json={}, timeout=10).json()["key"]
    write_key(key_file, new_key)
    assert _resume(fleet) == 0
    fleet.wait_until(lambda: fleet.unfinished() == 0, 120, "the rest after the resume")
    fleet.assert_exactly_once(200)
    with fleet.engine.connect() as conn:
        rejected = conn.execute(
            select(func.count()).where(fax_attempts.c.outcome == "rejected")
        ).scalar_one()
    assert rejected == 0


def _paused(fleet: Fleet) -> bool:
    with fleet.engine.connect() as conn:
        return bool(
            conn.execute(select(func.count()).where(fleet_pauses.c.ended_at.is_(None))).scalar_one()
        )


def _resume(fleet: Fleet) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "resume"],
        env=fleet.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode


def _deliveries(fleet: Fleet) -> list[dict[str, object]]:
    data = fleet.sandbox("webhooks")
    rows: list[dict[str, object]] = data["data"] if isinstance(data, dict) else data
    return rows


def _post_signed(url: str, secret: str, event_id: str) -> int:
    body = json.dumps(
        {
            "event_id": event_id,
            "event": "balance.low",
            "timestamp": "2026-12-01T00:00:00Z",
            "data": {"available": 100, "held": 0},
        }
    ).encode()
    headers = signed_headers("a", secret, event_id, body, int(time.time()))
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_webhook_secret_rotation_has_an_overlap_in_which_both_verify(fleet: Fleet) -> None:
    """Register a second endpoint (its new secret) for the same receiver, run the receiver with
    both secrets (new first), remove the old endpoint, then drop the old secret."""
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/mintfax"
    with MintfaxClient(fleet.sandbox_url, SecretStr(API_KEY), timeout=10) as client:
        old_endpoint, old = client.create_webhook(url)
        fleet.stack.start_webhooks(port, secret=old.get_secret_value())
        fleet.start(workers=1, concurrency=2)
        fleet.enqueue(20, prefix="before")
        fleet.wait_until(lambda: _delivered(fleet) == 20, 60, "the first faxes delivered")

        _, new = client.create_webhook(url)
        _restart_receiver(fleet, port, f"{new.get_secret_value()},{old.get_secret_value()}")
        fleet.enqueue(20, prefix="overlap")
        fleet.wait_until(lambda: _delivered(fleet) == 40, 60, "faxes delivered in the overlap")
        # In the overlap each event came twice, once per endpoint and secret: both verified.
        per_event = Counter(str(d["event_id"]) for d in _deliveries(fleet))
        assert sum(1 for n in per_event.values() if n == 2) >= 20, per_event
        assert _post_signed(url, old.get_secret_value(), "evt_manual_old") == 200
        assert _post_signed(url, new.get_secret_value(), "evt_manual_new") == 200

        client.delete_webhook(str(old_endpoint["id"]))
        _restart_receiver(fleet, port, new.get_secret_value())
        fleet.enqueue(20, prefix="after")
        fleet.wait_until(lambda: _delivered(fleet) == 60, 60, "faxes delivered after it")
    assert _post_signed(url, old.get_secret_value(), "evt_manual_old_2") == 401
    assert _post_signed(url, new.get_secret_value(), "evt_manual_new_2") == 200
    refused = [d for d in _deliveries(fleet) if d["last_status_code"] != 200]
    assert refused == []
    log = fleet.stack.log_text("webhooks")
    assert old.get_secret_value() not in log and new.get_secret_value() not in log


def _delivered(fleet: Fleet) -> int:
    return fleet.counts()[FaxStatus.DELIVERED]


def _restart_receiver(fleet: Fleet, port: int, secrets: str) -> None:
    assert fleet.stack.stop("webhooks", grace=15) == 0
    fleet.stack.start_webhooks(port, secret=secrets)
