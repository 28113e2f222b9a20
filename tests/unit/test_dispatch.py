"""How one dispatch is split into messages (pure part of the dispatcher)."""

from __future__ import annotations

import pytest

from outbox.clock import FrozenClock
from outbox.dispatch import Dispatcher, ids_per_message_for


def _dispatcher(**kw: int) -> Dispatcher:
    return Dispatcher(
        engine=None,  # type: ignore[arg-type]  # chunks() touches no database
        publish=lambda ids: None,
        queue_depth=lambda: 0,
        clock=FrozenClock(),
        **kw,
    )


@pytest.mark.parametrize(
    ("rows", "sizes"),
    [
        (0, []),
        (1, [1]),  # idle system: one row, one message, no waiting for company
        (5, [1, 1, 1, 1, 1]),  # few rows: one each, so every worker gets one
        (20, [3, 3, 3, 3, 3, 3, 2]),
        (100, [10] * 10),  # backlog: capped at ids_per_message
        (95, [10] * 9 + [5]),
    ],
)
def test_chunks_spread_small_dispatches_and_cap_large_ones(rows: int, sizes: list[int]) -> None:
    ids = list(range(rows))
    chunks = _dispatcher(ids_per_message=10).chunks(ids)
    assert [len(c) for c in chunks] == sizes
    assert [i for c in chunks for i in c] == ids  # every id once, in order


def test_refill_waits_for_room_for_a_whole_batch() -> None:
    dispatcher = _dispatcher(batch_size=100, max_queued=40, ids_per_message=10)
    assert dispatcher.refill_at == 10
    assert dispatcher.needs_rows(30) and not dispatcher.needs_rows(31)


@pytest.mark.parametrize(
    ("limit", "ids"), [(60, 1), (600, 5), (1500, 12), (3000, 25), (100_000, 25)]
)
def test_a_message_holds_about_half_a_second_of_the_fleet_rate(limit: int, ids: int) -> None:
    assert ids_per_message_for(limit) == ids
