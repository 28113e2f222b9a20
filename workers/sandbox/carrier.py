"""The sandbox carrier: mintfax's magic numbers and the status transitions they produce.

Each accepted fax runs as one asyncio task on the server's loop (thousands in flight cost no
threads): `queued -> submitted -> in_progress -> delivered | failed`, with `fax.sending` at the
start of every attempt, `fax.retry_scheduled` after a failed attempt that has retries left, and
exactly one of `fax.delivered` (hold captured) / `fax.failed` (hold released). Delays are
`step_seconds * time_scale` per step, so the default run takes tens to hundreds of milliseconds and
a time scale of a few hundred gives the seconds-to-minutes of real fax delivery.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.sandbox.state import Fax, Sandbox

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


async def run_fax(sandbox: Sandbox, fax: Fax, scenario: Scenario) -> None:
    """Carry one fax to its terminal state, emitting the events mintfax emits on the way."""
    step = sandbox.config.step_seconds

    async def pause(steps: float) -> None:
        await asyncio.sleep(steps * step * sandbox.config.time_scale)

    await pause(1)
    sandbox.set_status(fax, "submitted")
    attempt = 0
    while True:
        attempt += 1
        await pause(1)
        sandbox.start_attempt(fax, attempt)
        await pause(1 + scenario.pages)
        code = scenario.outcome(attempt)
        if code is None:
            sandbox.deliver(fax, scenario.pages)
            return
        message = ERROR_MESSAGES.get(code, code)
        if code in TERMINAL_CODES or fax.retries_remaining <= 0:
            sandbox.fail(fax, code, message)
            return
        sandbox.schedule_retry(fax, code, message)
        await pause(2)
