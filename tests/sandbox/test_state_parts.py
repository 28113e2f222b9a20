"""The simulator's state-side parts without a server: idempotency keys, the ledger, a carrier run
driven through its `Switchboard` protocol, and the package's lazy public names."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mintfax_sandbox import carrier
from mintfax_sandbox.idempotency import KeyInProgress, KeyReused, KeyStore
from mintfax_sandbox.ledger import InsufficientBalance, Ledger
from mintfax_sandbox.records import Fax, FaxRequest

# --- idempotency keys ----------------------------------------------------------------------------


class Now:
    def __init__(self) -> None:
        self.value = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value


def test_a_key_is_free_then_in_progress_then_replays_its_fax() -> None:
    keys = KeyStore(Now())
    assert keys.replay("k", b"body") is None
    entry = keys.reserve("k", b"body")
    with pytest.raises(KeyInProgress):
        keys.replay("k", b"body")
    entry.fax_id = "fax-1"
    assert keys.replay("k", b"body") == "fax-1"


def test_another_body_with_the_key_is_reuse_even_while_in_progress() -> None:
    keys = KeyStore(Now())
    keys.reserve("intent-8812", b"body")
    with pytest.raises(KeyReused) as caught:
        keys.replay("intent-8812", b"other body")
    assert caught.value.key == "intent-8812"
    assert "8812" not in str(caught.value)  # the key stays out of messages


def test_a_released_key_is_free_again_but_only_its_own_reservation_is_released() -> None:
    keys = KeyStore(Now())
    first = keys.reserve("k", b"body")
    keys.release("k", first)
    assert keys.replay("k", b"other body") is None
    second = keys.reserve("k", b"other body")
    keys.release("k", first)  # a stale release does not free the newer reservation
    assert keys.live("k") is second


def test_keys_are_forgotten_after_24_hours() -> None:
    now = Now()
    keys = KeyStore(now)
    keys.reserve("k", b"body").fax_id = "fax-1"
    now.value += timedelta(hours=23, minutes=59)
    assert keys.replay("k", b"body") == "fax-1"
    now.value += timedelta(minutes=1)
    assert keys.replay("k", b"another body") is None
    assert keys.live("k") is None


def test_the_fingerprint_covers_every_field_of_the_body_but_not_the_key() -> None:
    base = FaxRequest("+15005550001", 3, None, "k", b"%PDF-1.4", "pdf")
    same = FaxRequest("+15005550001", 3, None, "other key", b"%PDF-1.4", "pdf")
    assert base.fingerprint() == same.fingerprint()
    for changed in (
        FaxRequest("+15005550007", 3, None, "k", b"%PDF-1.4", "pdf"),
        FaxRequest("+15005550001", 4, None, "k", b"%PDF-1.4", "pdf"),
        FaxRequest("+15005550001", 3, "http://x/h", "k", b"%PDF-1.4", "pdf"),
        FaxRequest("+15005550001", 3, None, "k", b"%PDF-1.5", "pdf"),
    ):
        assert changed.fingerprint() != base.fingerprint()
    assert "PDF" not in repr(base)  # the document stays out of reprs


# --- the ledger ----------------------------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.seen.append((event, data))


def test_hold_capture_and_release_move_money_as_documented() -> None:
    ledger = Ledger(1000, Events())
    ledger.hold(30)
    assert ledger.balance() == {"available": 970, "held": 30}
    ledger.capture(30, 10)  # delivered 1 page of an estimated 3: the rest comes back
    assert ledger.balance() == {"available": 990, "held": 0}
    ledger.hold(20)
    ledger.release(20)  # failures are never charged
    assert ledger.balance() == {"available": 990, "held": 0}


def test_a_hold_that_cannot_be_covered_changes_nothing() -> None:
    ledger = Ledger(15, Events())
    with pytest.raises(InsufficientBalance) as caught:
        ledger.hold(20)
    assert (caught.value.available, caught.value.required) == (15, 20)
    assert ledger.balance() == {"available": 15, "held": 0}


def test_balance_low_fires_once_per_cycle_and_a_top_up_starts_a_new_one() -> None:
    events = Events()
    ledger = Ledger(100, events)
    ledger.hold(79)  # 21 left: not below 20 % of 100
    assert events.seen == []
    ledger.hold(2)  # 19 left
    ledger.hold(1)
    assert [e for e, _ in events.seen] == ["balance.low"]
    assert events.seen[0][1] == {"available": 19, "held": 81, "currency": "USD", "threshold": 20}
    ledger.top_up(50)  # 68 available; the next cycle is measured against 50 (threshold 10)
    assert events.seen[-1] == (
        "balance.topup",
        {"available": 68, "held": 82, "currency": "USD", "amount": 50},
    )
    ledger.hold(58)  # 10 left: not below 10
    assert [e for e, _ in events.seen] == ["balance.low", "balance.topup"]
    ledger.hold(1)
    assert [e for e, _ in events.seen] == ["balance.low", "balance.topup", "balance.low"]


def test_setting_the_balance_starts_a_cycle_without_an_event() -> None:
    events = Events()
    ledger = Ledger(100, events)
    ledger.set_available(10)
    assert events.seen == []
    ledger.hold(9)  # 1 < 20 % of 10
    assert [e for e, _ in events.seen] == ["balance.low"]


# --- a carrier run through the Switchboard protocol ----------------------------------------------


class Board:
    """A `carrier.Switchboard` that records what the run reports, with no delays."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def step_seconds(self) -> float:
        return 0.0

    def set_status(self, fax: Fax, status: str) -> None:
        self.calls.append(("status", status))

    def start_attempt(self, fax: Fax, number: int) -> None:
        self.calls.append(("attempt", number))

    def schedule_retry(self, fax: Fax, code: str, message: str) -> None:
        fax.retries_remaining -= 1
        self.calls.append(("retry", code))

    def deliver(self, fax: Fax, pages: int) -> None:
        self.calls.append(("delivered", pages))

    def fail(self, fax: Fax, code: str, message: str) -> None:
        self.calls.append(("failed", code))


def _run(number: str, retries: int) -> list[tuple[Any, ...]]:
    board = Board()
    fax = Fax(
        id="f",
        to=number,
        idempotency_key=None,
        retries=retries,
        retries_remaining=retries,
        webhook_url=None,
        file_type="pdf",
        file_size=1,
        created_at=datetime.now(UTC),
        hold=10,
    )

    async def drive() -> None:
        done = asyncio.Event()
        run = carrier.FaxRun(board, fax, carrier.scenario_for(number), lambda _: done.set())
        run.start()
        await asyncio.wait_for(done.wait(), 5)

    asyncio.run(drive())
    return board.calls


def test_a_delayed_delivery_retries_once_then_delivers() -> None:
    assert _run("+15005550004", retries=3) == [
        ("status", "submitted"),
        ("attempt", 1),
        ("retry", "busy"),
        ("attempt", 2),
        ("delivered", 1),
    ]


def test_busy_fails_when_the_retries_run_out_and_invalid_number_at_once() -> None:
    busy = _run("+15005550002", retries=1)
    assert [c for c in busy if c[0] in ("attempt", "retry", "failed")] == [
        ("attempt", 1),
        ("retry", "busy"),
        ("attempt", 2),
        ("failed", "busy"),
    ]
    assert _run("+15005550008", retries=5)[-2:] == [("attempt", 1), ("failed", "invalid_number")]


# --- the package's public names ------------------------------------------------------------------


def test_importing_the_package_loads_no_web_stack_and_the_names_load_on_use() -> None:
    probe = (
        "import sys, json, mintfax_sandbox\n"
        "web = {'starlette', 'uvicorn', 'httpx'}\n"
        "before = sorted({n.split('.')[0] for n in sys.modules} & web)\n"
        "from mintfax_sandbox import Sandbox, SandboxConfig, ThreadedServer, create_app\n"
        "from mintfax_sandbox import FaultConfig, parse_fault_spec\n"
        "same = parse_fault_spec('seed=1') == FaultConfig(seed=1)\n"
        "modules = [Sandbox.__module__, create_app.__module__, ThreadedServer.__module__]\n"
        "print(json.dumps([before, *modules, same]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, sandbox_module, app_module, server_module, parsed = json.loads(done.stdout)
    assert before == []
    assert (sandbox_module, app_module, server_module) == (
        "mintfax_sandbox.state",
        "mintfax_sandbox.app",
        "mintfax_sandbox.server",
    )
    assert parsed is True
    import mintfax_sandbox

    with pytest.raises(AttributeError, match="no_such_name"):
        mintfax_sandbox.no_such_name  # noqa: B018
