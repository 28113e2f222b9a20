"""The sandbox carrier: mintfax's magic numbers and the status transitions they produce.

Each accepted fax runs as a chain of timer callbacks on the server's loop (thousands in flight
cost no threads and no tasks): `queued -> submitted -> in_progress -> delivered | failed`, with
`fax.sending` at the start of every attempt, `fax.retry_scheduled` after a failed attempt that
has retries left, and exactly one of `fax.delivered` (hold captured) / `fax.failed` (hold
released). Delays are `step_seconds * time_scale` per step, so the default run takes tens to
hundreds of milliseconds and a time scale of a few hundred gives the seconds-to-minutes of real
fax delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mintfax_sandbox.records import Fax

MAGIC_PREFIX = "+1500555"

ERROR_MESSAGES = {
    "busy": "The line was busy.",
    "no_answer": "The line rang out without answering.",
    "line_quality": "The call connected but the transmission failed (poor line quality).",
    "invalid_number": "The number is well-formed but is not a fax line.",
}
# Codes after which mintfax skips the remaining attempts.
TERMINAL_CODES = frozenset({"invalid_number", "bad_destination", "no_route"})


@dataclass(frozen=True, slots=True)
class Scenario:
    """One magic number's behaviour.

    `failures` lists the error code of attempts 1, 2, ...; the last entry repeats for every later
    attempt, None meaning "delivered". `rejection` is an HTTP status returned at submit time
    instead of creating a fax.
    """

    number: str
    name: str
    pages: int
    failures: tuple[str | None, ...] = (None,)
    rejection: int | None = None

    def outcome(self, attempt: int) -> str | None:
        """The error code of attempt `attempt` (1-based), or None when it delivers."""
        return self.failures[min(attempt, len(self.failures)) - 1]


SCENARIOS: dict[str, Scenario] = {
    s.number: s
    for s in (
        Scenario("+15005550001", "delivered", 1),
        Scenario("+15005550002", "busy", 1, ("busy",)),
        Scenario("+15005550003", "no_answer", 1, ("no_answer",)),
        Scenario("+15005550004", "delayed_delivery", 1, ("busy", None)),
        Scenario("+15005550005", "line_quality", 1, ("line_quality",)),
        Scenario("+15005550006", "insufficient_balance", 1, rejection=402),
        Scenario("+15005550007", "delivered_multi_page", 3),
        Scenario("+15005550008", "invalid_number", 1, ("invalid_number",)),
        Scenario("+15005550099", "validation_failure", 1, rejection=422),
    )
}
# A magic number without a scenario of its own delivers like 0001.
_DEFAULT = Scenario("", "delivered", 1)


def is_magic(number: str) -> bool:
    """Whether `number` is one of the sandbox's `+1 (500) 555-XXXX` numbers."""
    return len(number) == 12 and number.startswith(MAGIC_PREFIX) and number[8:].isdigit()


def scenario_for(number: str) -> Scenario:
    """The scenario of a magic number (callers check `is_magic` first)."""
    return SCENARIOS.get(number, _DEFAULT)


class Switchboard(Protocol):
    """Where a fax run reports its steps: the simulator's state (`state.Sandbox`)."""

    def step_seconds(self) -> float:
        """How long one carrier step takes now (the time scale applied)."""
        ...

    def set_status(self, fax: Fax, status: str) -> None: ...

    def start_attempt(self, fax: Fax, number: int) -> None: ...

    def schedule_retry(self, fax: Fax, code: str, message: str) -> None: ...

    def deliver(self, fax: Fax, pages: int) -> None: ...

    def fail(self, fax: Fax, code: str, message: str) -> None: ...


class FaxRun:
    """One fax's trip through the sandbox carrier, driven by timer callbacks.

    Timers instead of a task per fax: no coroutine, future or task wake-up per step, so thousands
    of faxes in flight cost little and the simulator stays out of the way of the benchmarks.
    """

    __slots__ = ("_attempt", "_board", "_fax", "_handle", "_loop", "_on_done", "_scenario")

    def __init__(
        self,
        board: Switchboard,
        fax: Fax,
        scenario: Scenario,
        on_done: Callable[[FaxRun], None],
    ) -> None:
        self._board = board
        self._fax = fax
        self._scenario = scenario
        self._on_done = on_done
        self._attempt = 0
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._after(1, self._submit)

    def cancel(self) -> None:
        """Stop where it is (sandbox reset or shutdown)."""
        if self._handle is not None:
            self._handle.cancel()

    def _after(self, steps: float, callback: Callable[[], None]) -> None:
        self._handle = self._loop.call_later(steps * self._board.step_seconds(), callback)

    def _submit(self) -> None:
        self._board.set_status(self._fax, "submitted")
        self._after(1, self._begin_attempt)

    def _begin_attempt(self) -> None:
        self._attempt += 1
        self._board.start_attempt(self._fax, self._attempt)
        self._after(1 + self._scenario.pages, self._end_attempt)

    def _end_attempt(self) -> None:
        code = self._scenario.outcome(self._attempt)
        if code is None:
            self._board.deliver(self._fax, self._scenario.pages)
            self._on_done(self)
            return
        message = ERROR_MESSAGES.get(code, code)
        if code in TERMINAL_CODES or self._fax.retries_remaining <= 0:
            self._board.fail(self._fax, code, message)
            self._on_done(self)
            return
        self._board.schedule_retry(self._fax, code, message)
        self._after(2, self._begin_attempt)
