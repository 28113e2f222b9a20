"""Delivery end to end: real relay, Celery workers and beat, the sandbox over HTTP."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.acceptance.fleet import API_KEY, Fleet

pytestmark = pytest.mark.timeout(240)


def test_faults_never_lose_or_duplicate_a_fax(fleet: Fleet) -> None:
    """1,000 faxes through 10 % 503, 5 % 500, 5 % commit-then-drop and 5 % resets."""
    fleet.stack.env["FAXOUT_MAX_SUBMIT_ATTEMPTS"] = "10"  # 0.25**10: no row runs out of tries
    fleet.start_sandbox(
        "--rate-limit-per-minute",
        "0",
        "--faults",
        "error_503=0.10,error_500=0.05,commit_then_drop=0.05,reset=0.05,seed=11",
    )
    fleet.start(workers=2, concurrency=3)
    fleet.enqueue(1000)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 180, "all 1,000 rows to leave pending")
    stats = fleet.assert_exactly_once(1000)
    by_status = stats["requests_by_status"]
    # The faults really happened: replays after dropped 201s, and every kind of failure.
    assert stats["idempotent_replays"] > 0
    for kind in ("500", "503", "reset", "dropped"):
        assert by_status.get(kind, 0) > 0, by_status
    fleet.assert_no_secret_in_logs()


def test_kill_9_of_a_worker_mid_run_loses_nothing(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=30-60")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(300)
    fleet.wait_until(lambda: fleet.submitted_count() >= 50, 60, "the run to be under way")
    fleet.kill("worker0")  # the whole worker, pool and all, mid-task
    fleet.wait_until(lambda: fleet.unfinished() == 0, 150, "the rescuer and worker1 to finish")
    fleet.assert_exactly_once(300)


def test_redis_flushall_mid_run_loses_nothing(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=20-40")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(300)
    fleet.wait_until(lambda: fleet.submitted_count() >= 50, 60, "the run to be under way")
    fleet.redis().flushdb()  # our Redis database index: broker queue, throttle, pause mirror
    fleet.wait_until(lambda: fleet.unfinished() == 0, 150, "redispatch after the flush")
    fleet.assert_exactly_once(300)


def test_sigterm_lets_a_worker_finish_what_it_holds(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=1500")
    fleet.start(workers=1, concurrency=2, beat=False)
    fleet.enqueue(2)
    fleet.wait_until(
        lambda: fleet.counts()["sending"] == 2, 30, "both rows to be in flight", interval=0.05
    )
    started = time.monotonic()
    assert fleet.stack.stop("worker0", grace=30) == 0
    assert time.monotonic() - started >= 0.5  # it waited for the in-flight requests
    assert fleet.counts()["submitted"] == 2, fleet.stack.log_text("worker0")[-4000:]
    assert "Warm shutdown" in fleet.stack.log_text("worker0")


def _arrivals(fleet: Fleet) -> list[dict]:  # type: ignore[type-arg]
    data = fleet.sandbox("requests")
    return data["data"] if isinstance(data, dict) else data


def test_402_pauses_the_fleet_until_resume_with_one_alert(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.sandbox("balance", available=100)  # ten 1-page faxes at 10 cents
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(40)

    def paused() -> bool:
        with fleet.engine.connect() as conn:
            return bool(
                conn.exec_driver_sql("SELECT 1 FROM fleet_pauses WHERE ended_at IS NULL").all()
            )

    fleet.wait_until(paused, 60, "a 402 to pause the fleet")
    with fleet.engine.connect() as conn:
        started_at = conn.exec_driver_sql(
            "SELECT extract(epoch FROM started_at) FROM fleet_pauses WHERE ended_at IS NULL"
        ).scalar_one()
    time.sleep(4)  # several rescue/sync/redispatch cycles while paused
    arrivals = _arrivals(fleet)
    # Requests already in flight when the pause began may land a moment later; none after.
    late = [a for a in arrivals if a["received_at"] > float(started_at) + 0.5]
    assert late == []
    refused = sum(1 for a in arrivals if a["status"] == "402")
    assert 1 <= refused <= 4  # at most one per worker process
    with fleet.engine.connect() as conn:
        kinds = conn.exec_driver_sql("SELECT kind FROM alerts").scalars().all()
    assert kinds == ["fleet_paused"]
    assert fleet.counts()["submitted"] == 10

    fleet.sandbox("balance", top_up=100_000)
    resumed = subprocess.run(
        [sys.executable, "-m", "workers.cli", "resume"],
        env=fleet.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "insufficient_balance" in resumed.stdout
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "the rest after resume")
    fleet.assert_exactly_once(40)
    fleet.assert_no_secret_in_logs()


def test_racing_relays_and_workers_claim_each_row_once(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=0-10")
    fleet.start(workers=3, concurrency=2, relays=2)
    fleet.enqueue(400)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 120, "all rows to be submitted")
    fleet.assert_exactly_once(400)
    faxes = fleet.sandbox("faxes")
    faxes = faxes["data"] if isinstance(faxes, dict) else faxes
    assert {f["submissions"] for f in faxes} == {1}  # no row was POSTed twice
    with fleet.engine.connect() as conn:
        per_row = (
            conn.exec_driver_sql("SELECT count(*) FROM fax_attempts GROUP BY fax_id")
            .scalars()
            .all()
        )
    assert set(per_row) == {1}
    for n in range(2):
        assert "relay listening" in fleet.stack.log_text(f"relay{n}")


def test_429_cools_down_every_worker(fleet: Fleet) -> None:
    """mintfax lowers its limit while its window (10 s here, to keep the test short) is full
    of our requests: from 1000 to 10. No header could have warned the fleet, so the sandbox's
    429 is what stops it (afterwards the fleet follows the new figure, test_provider_limit)."""
    fleet.start_sandbox("--rate-limit-per-minute", "1000", "--rate-limit-window-seconds", "10")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(14)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 30, "the first 14")
    fleet.sandbox("config", rate_limit_per_minute=10)
    fleet.enqueue(4, prefix="late")
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "the rest after the cooldown")
    fleet.assert_exactly_once(18)
    refused = fleet.sandbox("stats")["requests_by_status"].get("429", 0)
    assert 1 <= refused <= 4  # the first 429 stops the fleet; no storm of retries
    accepted = sorted(a["monotonic"] for a in _arrivals(fleet) if a["status"] == "201")
    gaps = [later - earlier for earlier, later in itertools.pairwise(accepted)]
    # The first 10 went at once; the rest only after the sliding window had room again.
    assert max(gaps) > 7


def test_long_task_past_the_visibility_timeout_is_not_sent_twice(fleet: Fleet) -> None:
    """Redis redelivers a message unacked for longer than the visibility timeout; the
    redelivered copy finds the row leased (or done) and does nothing."""
    fleet.stack.env["FAXOUT_BROKER_VISIBILITY_TIMEOUT"] = "1"
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=2500")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(6)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 90, "all rows to be submitted")
    time.sleep(3)  # let any redelivered copies run
    fleet.assert_exactly_once(6)
    faxes = fleet.sandbox("faxes")
    faxes = faxes["data"] if isinstance(faxes, dict) else faxes
    assert {f["submissions"] for f in faxes} == {1}
    logs = fleet.stack.log_text("worker0") + fleet.stack.log_text("worker1")
    # The redelivered message's task result names the row it found already done.
    redelivered = logs.count("skipped (already taken")
    assert redelivered >= 1, "no message was redelivered: the trap was not hit"


def test_operator_pause_holds_everything_until_resume(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.start(workers=1, concurrency=2)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.cli", *args],
            env=fleet.stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    paused = cli("pause", "--reason", "maintenance window")
    assert paused.returncode == 0 and "fleet paused" in paused.stdout
    fleet.enqueue(20)
    time.sleep(3)
    assert _arrivals(fleet) == []
    assert fleet.counts()["pending"] == 20
    resumed = cli("resume")
    assert resumed.returncode == 0 and "resumed: operator" in resumed.stdout
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "the held rows after resume")
    fleet.assert_exactly_once(20)
    assert cli("resume").stdout.strip() == "fleet was not paused"


def test_flower_shows_the_submit_tasks(fleet: Fleet) -> None:
    """Operators watch the fleet in Flower (task events are on by default)."""
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.start(workers=1, concurrency=2, beat=False)
    flower = fleet.stack.start_flower(api=True)

    def workers_listed() -> bool:
        response = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, timeout=10)
        return response.status_code == 200 and bool(response.json())

    fleet.wait_until(workers_listed, 30, "Flower to see the worker")
    time.sleep(2)  # Flower's periodic enable_events reaches the worker
    fleet.enqueue(30)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "the faxes to be submitted")

    def tasks_seen() -> list[dict]:  # type: ignore[type-arg]
        tasks = httpx.get(f"{flower}/api/tasks", timeout=10).json()
        return [t for t in tasks.values() if t.get("name") == "faxout.submit_fax"]

    fleet.wait_until(lambda: bool(tasks_seen()), 30, "Flower to record the submit tasks")
    seen = tasks_seen()
    assert all(t["state"] == "SUCCESS" for t in seen)
    # Each result names its faxes: "12: submitted; 13: submitted" (tests/acceptance/test_flower.py
    # covers the other outcomes).
    assert any(re.search(r"(^|'|; )\d+: submitted", t.get("result") or "") for t in seen)
    # Messages carry row ids only: nothing else is visible in Flower.
    assert all(API_KEY not in str(t) and "+1500555" not in str(t) for t in seen)
