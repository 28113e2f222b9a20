"""Magic numbers, status transitions, carrier retries and money (hold, capture, release)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox_fixtures import SandboxHandle, WebhookSink

PRICE = 10  # cents per page, the default


def _fax_events(sink: WebhookSink, fax_id: str) -> list[str]:
    return [
        e["event"]
        for e in sink.events()
        if e["event"].startswith("fax.") and e["data"]["id"] == fax_id
    ]


def _terminal(events: list[dict[str, Any]], fax_id: str) -> bool:
    return any(
        e["event"] in ("fax.delivered", "fax.failed") and e["data"]["id"] == fax_id for e in events
    )


@pytest.mark.parametrize(
    ("suffix", "retries", "status", "code", "pages", "attempts"),
    [
        ("0001", 3, "delivered", None, 1, 1),
        ("0002", 2, "failed", "busy", None, 3),
        ("0003", 1, "failed", "no_answer", None, 2),
        ("0004", 3, "delivered", None, 1, 2),
        ("0004", 0, "failed", "busy", None, 1),
        ("0005", 2, "failed", "line_quality", None, 3),
        ("0007", 3, "delivered", None, 3, 1),
        ("0008", 5, "failed", "invalid_number", None, 1),
    ],
)
def test_magic_numbers_reach_their_documented_outcome(
    sandbox: SandboxHandle,
    webhook_sink: WebhookSink,
    suffix: str,
    retries: int,
    status: str,
    code: str | None,
    pages: int | None,
    attempts: int,
) -> None:
    response = sandbox.send_fax(f"+1500555{suffix}", retries=retries, webhook_url=webhook_sink.url)
    fax_id = response.json()["id"]
    sandbox.wait_for_fax(fax_id)
    fax = sandbox.get_fax(fax_id)
    assert (fax["status"], fax["error_code"], fax["pages"]) == (status, code, pages)
    assert len(fax["attempts"]) == attempts
    assert fax["completed_at"] is not None
    assert fax["submitted_at"] is not None
    assert fax["retries_remaining"] == retries - (attempts - 1)
    if code:
        assert fax["error_message"]

    webhook_sink.wait_for(lambda events: _terminal(events, fax_id))
    terminal = "fax.delivered" if status == "delivered" else "fax.failed"
    expected = ["fax.queued"]
    for attempt in range(attempts):
        expected.append("fax.sending")
        if attempt < attempts - 1:
            expected.append("fax.retry_scheduled")
    expected.append(terminal)
    assert _fax_events(webhook_sink, fax_id) == expected


def test_statuses_move_forward_through_the_lifecycle(sandbox: SandboxHandle) -> None:
    sandbox.configure(time_scale=4, rate_limit_per_minute=0)  # it polls as fast as it can
    fax_id = sandbox.send_fax("+15005550001").json()["id"]
    seen = []
    while not seen or seen[-1] not in ("delivered", "failed"):
        status = sandbox.get_fax(fax_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
    assert seen == ["queued", "submitted", "in_progress", "delivered"]


def test_retry_scheduled_events_carry_the_attempt_error(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    fax_id = sandbox.send_fax("+15005550002", retries=1, webhook_url=webhook_sink.url).json()["id"]
    events = webhook_sink.wait_for(lambda events: _terminal(events, fax_id))
    [retry] = [e for e in events if e["event"] == "fax.retry_scheduled"]
    assert retry["data"]["error_code"] == "busy"
    assert retry["data"]["retries_remaining"] == 0
    [failed] = [e for e in events if e["event"] == "fax.failed"]
    assert failed["data"]["error_code"] == "busy"
    assert failed["data"]["status"] == "failed"


def test_delivery_captures_the_per_page_price(sandbox: SandboxHandle) -> None:
    sandbox.set_balance(1000)
    # Slow enough a carrier that the hold is still there when the balance is read on a busy
    # machine (at full speed the fax could be delivered before the test asks).
    sandbox.configure(time_scale=3)
    fax_id = sandbox.send_fax("+15005550007").json()["id"]
    assert sandbox.balance() == {"available": 1000 - 3 * PRICE, "held": 3 * PRICE}
    sandbox.wait_for_fax(fax_id)
    assert sandbox.balance() == {"available": 1000 - 3 * PRICE, "held": 0}
    assert sandbox.faxes()[0]["charged"] == 3 * PRICE


def test_failure_releases_the_hold_and_charges_nothing(sandbox: SandboxHandle) -> None:
    sandbox.set_balance(1000)
    fax_id = sandbox.send_fax("+15005550005", retries=1).json()["id"]
    assert sandbox.balance() == {"available": 1000 - PRICE, "held": PRICE}
    sandbox.wait_for_fax(fax_id)
    assert sandbox.balance() == {"available": 1000, "held": 0}


def test_hold_stays_through_carrier_retries(sandbox: SandboxHandle) -> None:
    sandbox.set_balance(1000)
    sandbox.configure(time_scale=3)
    fax_id = sandbox.send_fax("+15005550004").json()["id"]
    sandbox.wait_for_fax(fax_id, ("in_progress",))
    assert sandbox.balance()["held"] == PRICE
    sandbox.wait_for_fax(fax_id)
    assert sandbox.balance() == {"available": 1000 - PRICE, "held": 0}


def test_magic_0006_is_402_with_no_record_no_hold_no_event(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    response = sandbox.send_fax("+15005550006", webhook_url=webhook_sink.url, idempotency_key="i")
    assert response.status_code == 402
    assert response.headers["x-idempotency-key"] == "i"
    body = response.json()
    assert (body["error"], body["action"]) == ("insufficient_balance", "top_up_balance")
    assert sandbox.faxes() == []
    assert sandbox.balance() == {"available": 1_000_000, "held": 0}
    assert webhook_sink.events() == []


def test_402_when_the_hold_cannot_be_placed(sandbox: SandboxHandle) -> None:
    sandbox.set_balance(25)
    assert sandbox.send_fax("+15005550007").status_code == 402  # 30 cents needed
    assert sandbox.send_fax("+15005550001").status_code == 201
    assert sandbox.send_fax("+15005550001").status_code == 201
    refused = sandbox.send_fax("+15005550001")
    assert refused.status_code == 402
    assert refused.json()["context"] == {"available": 5, "required": 10}
    assert len(sandbox.faxes()) == 2


def test_balance_low_fires_once_per_top_up_cycle(
    sandbox: SandboxHandle, webhook_sink: WebhookSink
) -> None:
    with sandbox.client() as client:
        client.post(
            "/account/webhooks",
            json={"url": webhook_sink.url, "events": ["balance.low", "balance.topup"]},
        )
    sandbox.set_balance(100)  # threshold: 20 cents
    for _ in range(9):
        assert sandbox.send_fax("+15005550001").status_code == 201
    events = webhook_sink.wait_for(lambda ev: len(ev) >= 1)
    assert [e["event"] for e in events] == ["balance.low"]
    assert events[0]["data"]["available"] == 10
    sandbox.set_balance(None, top_up=50)  # new cycle, threshold 10 cents
    events = webhook_sink.wait_for(lambda ev: len(ev) >= 2)
    assert events[1]["event"] == "balance.topup"
    assert events[1]["data"]["amount"] == 50
    for _ in range(6):  # 60 available -> 0, below 20 % of the 50 top-up on the 6th
        assert sandbox.send_fax("+15005550001").status_code == 201
    events = webhook_sink.wait_for(lambda ev: len(ev) >= 3)
    assert [e["event"] for e in events] == ["balance.low", "balance.topup", "balance.low"]
    assert all(e["event"].startswith("balance.") for e in webhook_sink.events())
