"""`faxout webhooks register|list|serve` as real processes against the simulator.

The end-to-end test runs the whole path: the fleet sends faxes to the simulator (a real
process), the simulator sends signed webhooks to `faxout webhooks serve` (a real process on a
real database), and every row ends in the simulator's final state for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mintfax_sandbox.webhooks import signed_headers
from outbox.models import FaxStatus, fax_outbox
from tests.acceptance.fleet import Fleet
from tests.sandbox_fixtures import SandboxHandle
from workers.single_host.embedded import free_port

FAXOUT = Path(sys.executable).with_name("faxout")
SECRET_LINE = re.compile(r"^signing secret \(shown only this once\): (whsec_\S+)$", re.M)


def faxout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(FAXOUT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert "Traceback" not in done.stdout + done.stderr
    return done


def sandbox_env(sandbox: SandboxHandle) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAXOUT_", "MINTFAX_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**env, "MINTFAX_API_KEY": sandbox.api_key, "MINTFAX_BASE_URL": sandbox.base_url}


def registered(sandbox: SandboxHandle) -> list[dict[str, object]]:
    with sandbox.client() as client:
        data: list[dict[str, object]] = client.get("/account/webhooks").json()["data"]
    return data


def test_register_prints_the_secret_once_and_list_never_shows_it(sandbox: SandboxHandle) -> None:
    env = sandbox_env(sandbox)
    done = faxout(
        "webhooks", "register", "--url", "https://hooks.example.com/webhooks/mintfax",
        "--events", "fax.delivered,fax.failed,balance.low,balance.topup", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = SECRET_LINE.search(done.stdout)
    assert match is not None, done.stdout
    secret = match.group(1)
    assert "MINTFAX_WEBHOOK_SECRET" in done.stdout
    assert "events: fax.delivered, fax.failed, balance.low, balance.topup" in done.stdout
    [endpoint] = registered(sandbox)
    assert endpoint["url"] == "https://hooks.example.com/webhooks/mintfax"
    assert endpoint["events"] == ["fax.delivered", "fax.failed", "balance.low", "balance.topup"]

    listing = faxout("webhooks", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert f"{endpoint['id']} https://hooks.example.com/webhooks/mintfax active" in listing.stdout
    assert "events=fax.delivered,fax.failed,balance.low,balance.topup" in listing.stdout
    assert secret not in listing.stdout and "whsec_" not in listing.stdout


def test_register_without_events_subscribes_everything(sandbox: SandboxHandle) -> None:
    done = faxout(
        "webhooks", "register", "--url", "https://h.example.com/x", env=sandbox_env(sandbox)
    )
    assert done.returncode == 0, done.stderr
    assert "events: all" in done.stdout
    assert [e["events"] for e in registered(sandbox)] == [None]
    assert "events=all" in faxout("webhooks", "list", env=sandbox_env(sandbox)).stdout


def test_register_refuses_a_list_missing_a_required_event_unless_forced(
    sandbox: SandboxHandle,
) -> None:
    env = sandbox_env(sandbox)
    args = ("webhooks", "register", "--url", "https://h.example.com/x", "--events")
    done = faxout(*args, "fax.delivered,fax.queued", env=env)
    assert done.returncode == 2
    assert "leaves out fax.failed, balance.low" in " ".join(done.stderr.split())
    assert registered(sandbox) == []
    assert faxout(*args, " , ", env=env).returncode == 2
    forced = faxout(*args, "fax.delivered", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert [e["events"] for e in registered(sandbox)] == [["fax.delivered"]]


def test_register_and_list_say_what_is_wrong_in_one_line(sandbox: SandboxHandle) -> None:
    env = sandbox_env(sandbox)
    no_key = {k: v for k, v in env.items() if k != "MINTFAX_API_KEY"}
    done = faxout("webhooks", "list", env=no_key)
    assert done.returncode == 2
    assert "MINTFAX_API_KEY" in done.stderr
    no_version = {**env, "MINTFAX_BASE_URL": sandbox.url}  # without /v1: a bare 404
    refused = faxout("webhooks", "register", "--url", "https://h.example.com/x", env=no_version)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: mintfax refused the registration")
    assert registered(sandbox) == []
    listing = faxout("webhooks", "list", env=env)
    assert listing.stdout.strip() == "no webhook endpoints registered"


def test_serve_refuses_to_start_without_a_webhook_secret(database_url: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAXOUT_", "MINTFAX_"))} | {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
    }
    done = faxout("webhooks", "serve", "--port", str(free_port()), env=env)
    assert done.returncode == 2
    assert "MINTFAX_WEBHOOK_SECRET is not set" in done.stderr


def test_serve_follows_a_rotated_secret_file_without_a_restart(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # MINTFAX_WEBHOOK_SECRET_FILE (a secrets mount): the receiver reads the file again when it
    # changes, so a rotation (new,old; then new) needs no restart; while the file cannot be
    # read it keeps verifying with the last secrets it read, and says so once.
    old, new = "whsec_rotation_old_0123456789abcdef", "whsec_rotation_new_fedcba9876543210"
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(old + "\n")
    secret_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAXOUT_", "MINTFAX_"))} | {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "MINTFAX_WEBHOOK_SECRET_FILE": str(secret_file),
        "FAXOUT_LOG_LEVEL": "debug",
    }
    port = free_port()
    log_path = tmp_path / "webhooks.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(FAXOUT), "webhooks", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    sent = 0

    def post(secret: str) -> int:
        nonlocal sent
        sent += 1
        body = json.dumps(
            {
                "event_id": f"evt_rotation_{sent}",
                "event": "fax.delivered",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"id": f"fax_rotation_{sent}", "status": "delivered"},
            }
        ).encode()
        headers = signed_headers("a", secret, f"evt_rotation_{sent}", body, int(time.time()))
        return httpx.post(f"{url}/webhooks/mintfax", content=body, headers=headers).status_code

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert post(old) == 200 and post(new) == 401

        secret_file.write_text(f"{new},{old}\n")  # the overlap: both verify
        assert post(new) == 200 and post(old) == 200

        secret_file.write_text(new + "\n")  # the old one retired
        assert post(old) == 401 and post(new) == 200

        secret_file.unlink()  # a mount briefly gone: the last secrets read still verify
        assert post(new) == 200 and post(new) == 200 and post(old) == 401
        secret_file.write_text(new + "\n")
        assert post(new) == 200
    finally:
        server.terminate()
        server.wait(20)
    text = log_path.read_text()
    assert text.count("webhook secrets could not be read") == 1
    assert "webhook secrets can be read again" in text
    assert old not in text and new not in text


# What the simulator decides for each magic number (mintfax_sandbox/__init__.py).
NUMBERS = ("+15005550001", "+15005550002", "+15005550007", "+15005550008", "+15005550004")


@pytest.mark.parametrize("signing", ["a", "b"])
def test_the_receiver_learns_every_final_state_from_the_simulator(
    fleet: Fleet, signing: str
) -> None:
    fleet.start_sandbox("--webhook-signing", signing)
    env = fleet.stack.env
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    done = faxout("webhooks", "register", "--url", f"{receiver}/webhooks/mintfax", env=env)
    assert done.returncode == 0, done.stderr
    match = SECRET_LINE.search(done.stdout)
    assert match is not None
    secret = match.group(1)
    fleet.stack._spawn(
        "webhooks",
        [str(FAXOUT), "webhooks", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"MINTFAX_WEBHOOK_SECRET": f"whsec_retired0000000000000000000000,{secret}"},
    )
    fleet.stack._wait_http(f"{receiver}/healthz", "webhooks")
    fleet.start(workers=1, concurrency=2, beat=False)
    ids = fleet.enqueue(15, NUMBERS)

    final = (FaxStatus.DELIVERED, FaxStatus.FAILED)

    def settled() -> bool:
        counts = fleet.counts()
        return sum(counts[s] for s in final) == len(ids)

    fleet.wait_until(settled, timeout=90, what="every row's final state from webhooks")

    truth = {f["id"]: f["status"] for f in fleet.sandbox("faxes")["data"]}
    with fleet.engine.connect() as conn:
        rows = conn.execute(select(fax_outbox.c.mintfax_fax_id, fax_outbox.c.status)).all()
    assert {fax_id: str(status) for fax_id, status in rows} == truth
    assert set(truth.values()) == {"delivered", "failed"}
    deliveries = fleet.sandbox("webhooks")["data"]
    assert deliveries and all(d["status"] == "delivered" for d in deliveries), deliveries

    # A forgery is refused, and SIGTERM stops the receiver cleanly.
    forged = httpx.post(f"{receiver}/webhooks/mintfax", json={"event": "fax.delivered"})
    assert forged.status_code == 401
    assert fleet.stack.stop("webhooks", grace=15) == 0
    log = fleet.stack.log_text("webhooks")
    assert secret not in log and "whsec_retired" not in log
    assert "webhook refused (401)" in log
