"""Delivery end to end: real relay, Celery workers and beat, the sandbox over HTTP."""

from __future__ import annotations

import time

import pytest

from tests.acceptance.fleet import Fleet

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
