"""Flower as the task view (issue 11, item 5): real workers, the sandbox over HTTP, and Flower
behind basic auth on the test broker. Each `faxout.submit_fax` task's result names its faxes
and what became of each; a task whose fax met a fault of the setup shows as failed; nothing
Flower serves holds a secret or a phone number."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from outbox.models import FaxStatus
from tests.acceptance.fleet import API_KEY, Fleet

pytestmark = pytest.mark.timeout(240)

LOGIN = ("ops", "flower-login-secret-7c1e")
WEBHOOK_SECRET = "whsec_test_flower_acceptance_5b2d9f"
OK, REJECTED, BALANCE = "+15005550001", "+15005550099", "+15005550006"


def _tasks(flower: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(
        f"{flower}/api/tasks", params={"taskname": "faxout.submit_fax"}, auth=LOGIN, timeout=10
    )
    response.raise_for_status()
    tasks: dict[str, dict[str, Any]] = response.json()
    return tasks


def _told(tasks: dict[str, dict[str, Any]], fax_id: int) -> list[tuple[str, str]]:
    """(state, what the task said of fax `fax_id`) for every task that names it."""
    found = []
    pattern = re.compile(rf"(?:^|; |'){fax_id}: ([^;']*)")
    for task in tasks.values():
        said = task.get("result") or task.get("exception") or ""
        for match in pattern.finditer(said):
            found.append((task["state"], match.group(1)))
    return found


def test_flower_shows_each_fax_of_each_task_and_no_secret(fleet: Fleet) -> None:
    fleet.stack.env["MINTFAX_WEBHOOK_SECRET"] = WEBHOOK_SECRET  # held by every worker
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.start(workers=1, concurrency=2, beat=False)
    flower = fleet.stack.start_flower(basic_auth=":".join(LOGIN))
    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/tasks", timeout=10).status_code == 401

    # A fax that meets a 503 first (then goes through), two that go through, one mintfax
    # refuses, and last one whose 402 pauses the fleet.
    fleet.sandbox("faults", error_503=1.0)
    [flaky] = fleet.enqueue(1, [OK], prefix="flaky")
    fleet.wait_until(lambda: _attempts(fleet, flaky) >= 1, 30, "the 503")
    fleet.sandbox("faults", error_503=0.0)
    good = fleet.enqueue(2, [OK], prefix="good")
    [refused] = fleet.enqueue(1, [REJECTED], prefix="refused")
    fleet.wait_until(
        lambda: (
            fleet.counts()[FaxStatus.SUBMITTED] == 3 and fleet.counts()[FaxStatus.REJECTED] == 1
        ),
        60,
        "the faxes to be decided",
    )
    [broke] = fleet.enqueue(1, [BALANCE], prefix="broke")
    fleet.wait_until(lambda: _attempts(fleet, broke) >= 1, 30, "the 402")

    def everything_told() -> bool:
        tasks = _tasks(flower)
        return all(_told(tasks, fax) for fax in [flaky, *good, refused, broke])

    fleet.wait_until(everything_told, 30, "Flower to hear of every task")
    tasks = _tasks(flower)
    assert {t["name"] for t in tasks.values()} == {"faxout.submit_fax"}

    flaky_told = _told(tasks, flaky)
    assert any(
        state == "SUCCESS" and re.fullmatch(r"retry in \d+(\.\d)? s \(503( [a-z_]+)?\)", said)
        for state, said in flaky_told
    ), flaky_told
    assert ("SUCCESS", "submitted") in flaky_told, flaky_told
    for fax in good:
        assert _told(tasks, fax) == [("SUCCESS", "submitted")]
    assert _told(tasks, refused) == [
        ("SUCCESS", "rejected: validation_failed (422 validation_failed)")
    ]
    # The task that could not do its job, because the setup is wrong for every fax, failed.
    assert (
        "FAILURE",
        "not sent, paused the fleet: insufficient_balance (402 insufficient_balance)",
    ) in _told(tasks, broke), _told(tasks, broke)

    # Nothing Flower serves holds a secret or a number: its API (tasks, each task, workers
    # as Flower inspects them) and its pages.
    pages = [
        "/api/tasks",
        "/api/workers?refresh=1",
        "/",
        "/tasks",
        "/metrics",
        "/broker",
        "/workers",
        *(f"/api/task/info/{task_id}" for task_id in tasks),
        *(f"/task/{task_id}" for task_id in tasks),
    ]
    workers = httpx.get(f"{flower}/api/workers", auth=LOGIN, timeout=30).json()
    pages += [f"/worker/{name}" for name in workers]
    with fleet.engine.connect() as conn:
        numbers = conn.execute(text("SELECT DISTINCT to_number FROM fax_outbox")).scalars().all()
    assert len(numbers) == 3
    for page in pages:
        response = httpx.get(f"{flower}{page}", auth=LOGIN, timeout=30)
        assert response.status_code == 200, (page, response.status_code)
        served = response.text
        for secret in (API_KEY, API_KEY[8:], WEBHOOK_SECRET, WEBHOOK_SECRET[12:]):
            assert secret not in served, f"a secret in Flower's {page}"
        for number in numbers:
            assert number[1:] not in served, f"a phone number in Flower's {page}"
    fleet.assert_no_secret_in_logs()
    # A failed submit task is an expected failure: logged at INFO in one line, not as a crash.
    worker_log = fleet.stack.log_text("worker0")
    assert "raised expected: SubmitIncomplete" in worker_log
    assert "raised unexpected" not in worker_log


def _attempts(fleet: Fleet, fax_id: int) -> int:
    with fleet.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM fax_attempts WHERE fax_id = :id"), {"id": fax_id}
            ).scalar_one()
        )
