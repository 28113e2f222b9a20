"""`workers.webhooks.GroupCommit` on its own loop: which events share a write, and what each
waiting request gets when another one goes away (mintfax hangs up) or a write fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from outbox.events import FaxEvent
from workers.webhooks import GroupCommit

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def ev(event_id: str) -> FaxEvent:
    return FaxEvent(event_id, "fax.delivered", T0, {}, {"event_id": event_id})


class SlowWrites:
    """A `handle_many` on the loop whose writes finish only when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(self, events: Sequence[FaxEvent]) -> list[object]:
        self.batches.append([e.event_id for e in events])
        await self.release.wait()
        return [f"applied:{e.event_id}" for e in events]


async def _settle() -> None:
    for _ in range(5):  # let the tasks just created run up to their first wait
        await asyncio.sleep(0)


def test_a_request_that_goes_away_mid_batch_leaves_the_others_their_results() -> None:
    async def scenario() -> None:
        writes = SlowWrites()
        group = GroupCommit(writes, writers=1)
        first = asyncio.create_task(group.submit(ev("a")))
        await _settle()  # [a] is being written; the next arrivals wait for the next batch
        waiting = {n: asyncio.create_task(group.submit(ev(n))) for n in ("b", "c", "d")}
        await _settle()
        waiting["c"].cancel()  # its sender hung up before its batch was written
        writes.release.set()
        assert await first == "applied:a"
        assert await waiting["b"] == "applied:b"
        assert await waiting["d"] == "applied:d"
        with pytest.raises(asyncio.CancelledError):
            await waiting["c"]
        # The event of the request that went away was still written (mintfax resends it, and
        # then it is a duplicate): one write for it, no error for the others.
        assert writes.batches == [["a"], ["b", "c", "d"]]

    asyncio.run(scenario())


def test_a_request_cancelled_while_its_own_batch_is_written_does_not_stop_the_write() -> None:
    async def scenario() -> None:
        writes = SlowWrites()
        group = GroupCommit(writes, writers=1)
        tasks = [asyncio.create_task(group.submit(ev(n))) for n in ("a", "b")]
        await _settle()
        tasks[0].cancel()  # the write is its own task, not the request's: it goes on
        await _settle()
        writes.release.set()
        assert await tasks[1] == "applied:b"
        assert writes.batches == [["a", "b"]]
        # The writer is free again: a later event is written at once, alone.
        assert await group.submit(ev("e")) == "applied:e"

    asyncio.run(scenario())


def test_a_failed_write_is_every_waiting_requests_error_and_the_next_batch_still_runs() -> None:
    calls: list[list[str]] = []

    async def flaky(events: Sequence[FaxEvent]) -> list[object]:
        calls.append([e.event_id for e in events])
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return [f"applied:{e.event_id}" for e in events]

    async def scenario() -> None:
        group = GroupCommit(flaky, writers=1)
        results = await asyncio.gather(
            group.submit(ev("a")), group.submit(ev("b")), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results)
        assert await group.submit(ev("c")) == "applied:c"

    asyncio.run(scenario())


def test_a_handle_many_that_answers_wrongly_fails_its_requests_instead_of_hanging_them() -> None:
    def too_few(events: Sequence[FaxEvent]) -> list[object]:
        answers: list[object] = ["applied"] * len(events)
        return answers[1:]  # one short

    async def scenario() -> None:
        group = GroupCommit(too_few, writers=1)
        results = await asyncio.wait_for(
            asyncio.gather(group.submit(ev("a")), group.submit(ev("b")), return_exceptions=True),
            timeout=10,
        )
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(scenario())
