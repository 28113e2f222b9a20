"""Beat's maintenance tasks run on their own queue: a backlog of submits cannot starve them."""

from __future__ import annotations

import re
import time

import pytest
from celery import Celery

from tests.acceptance.fleet import Fleet
from workers.app import QUEUE, SUBMIT_TASK

pytestmark = pytest.mark.timeout(180)

# Ids of no row: each claim is a no-op UPDATE, so a message costs its ids' round trips.
_MESSAGES = 6000
_IDS_PER_MESSAGE = 50


def _queue_submits(redis_url: str) -> None:
    """Put a backlog of submit messages on the broker, as relays under load would."""
    client = Celery("backlog", broker=redis_url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    with client.producer_or_acquire() as producer:
        for n in range(_MESSAGES):
            first = 1_000_000_000 + n * _IDS_PER_MESSAGE
            ids = list(range(first, first + _IDS_PER_MESSAGE))
            client.send_task(SUBMIT_TASK, args=[ids], queue=QUEUE, producer=producer)
    client.close()


def test_maintenance_runs_before_it_expires_behind_a_submit_backlog(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    _queue_submits(fleet.redis_url)
    broker = fleet.redis()
    assert broker.llen(QUEUE) == _MESSAGES
    fleet.stack.start_worker("worker0", concurrency=1)  # as an operator starts one
    fleet.stack.start_beat()
    fleet.stack.wait_for_worker_ready("worker0")
    started = time.monotonic()

    rescued = re.compile(r"Task faxout\.rescue_expired_leases\[[^\]]+\] succeeded")
    # Beat sends the rescue every 5 s with `expires` 30 s: it must run while submits wait.
    fleet.wait_until(
        lambda: bool(rescued.search(fleet.stack.log_text("worker0"))),
        45,
        "beat's lease rescue to run on the worker",
    )
    backlog = broker.llen(QUEUE)
    assert backlog > 0, "the backlog drained first: the test proved nothing"
    assert time.monotonic() - started < 30
    assert "Discarding revoked task" not in fleet.stack.log_text("worker0")  # none expired
