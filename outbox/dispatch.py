"""Dispatch: turn due outbox rows into submit messages, with backpressure.

The relay process (`faxout relay`) calls `Dispatcher.run_once` whenever Postgres NOTIFYs an
insert, and on a short timer for retries that have come due. Several relays may run at once:
`FOR UPDATE SKIP LOCKED` hands each row to one of them. Messages carry only the row id; the
submit task claims the row again, so a lost or duplicated message is harmless (invariant 1).

A message carries a short list of row ids, not one: Celery's fixed cost per message (broker
round trips, ack bookkeeping, the pool's task wrapper) was most of the CPU a fax cost
(bench/drain.py). Small dispatches are spread over several messages so that every worker
gets work; a large backlog goes out `ids_per_message` rows at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from outbox import repository
from outbox.clock import Clock, sql_now
from outbox.settings import DEFAULT_REDISPATCH_SECONDS

# The most row ids one message carries (bench/drain.py: 10 -> 25 took CPU per fax 1.77x ->
# 1.64x of a bare loop); a rate-limited fleet carries fewer, see `ids_per_message_for`.
MAX_IDS_PER_MESSAGE = 25


@dataclass
class Dispatcher:
    """Claims due rows in batches and publishes their ids.

    `queue_depth` reports how many messages wait in the broker; the dispatcher keeps it under
    `max_queued` so that rows stay in Postgres (where their order and state are visible)
    rather than piling up in Redis, and so a message never waits long enough in the queue to
    be redispatched.
    """

    engine: Engine
    publish: Callable[[Sequence[int]], None]
    queue_depth: Callable[[], int]
    clock: Clock
    # Rows per dispatch transaction; a full batch splits into ids_per_message-sized messages.
    batch_size: int = 200
    max_queued: int = 40  # messages
    # A dispatched row whose message was lost becomes due again after this long (seconds).
    redispatch_after: float = DEFAULT_REDISPATCH_SECONDS
    ids_per_message: int = MAX_IDS_PER_MESSAGE
    # A dispatch of few rows is split over at least this many messages (one row each at most).
    spread: int = 8

    def chunks(self, ids: Sequence[int]) -> list[Sequence[int]]:
        """Split one dispatch into messages: spread small ones, cap large ones."""
        if not ids:
            return []
        size = max(1, min(self.ids_per_message, math.ceil(len(ids) / self.spread)))
        return [ids[i : i + size] for i in range(0, len(ids), size)]

    @property
    def refill_at(self) -> int:
        """Messages of room the queue must have before it is topped up (a full batch)."""
        return max(1, min(math.ceil(self.batch_size / self.ids_per_message), self.max_queued))

    def needs_rows(self, depth: int) -> bool:
        """Whether a queue holding `depth` messages should be topped up now.

        Only once a whole batch fits: topping up a nearly full queue a few rows at a time
        costs a transaction and a loop per few rows (bench/drain.py measured the relay
        spending more CPU per fax than the workers' main processes that way), while the
        messages still queued keep the workers busy in the meantime.
        """
        return self.max_queued - depth >= self.refill_at

    def run_once(self) -> int:
        """Dispatch as many due rows as the queue has room for; returns how many."""
        depth = self.queue_depth()
        if not self.needs_rows(depth):
            return 0
        room = self.max_queued - depth  # in messages
        total = 0
        while room > 0:
            with self.engine.begin() as conn:
                ids = repository.dispatch_due(
                    conn,
                    now=sql_now(self.clock),
                    limit=min(room * self.ids_per_message, self.batch_size),
                    redispatch_after=self.redispatch_after,
                )
            # Published after commit: a message never names a row that is not yet dispatched.
            messages = self.chunks(ids)
            for n, chunk in enumerate(messages):
                try:
                    self.publish(chunk)
                except Exception:
                    # The broker is away: the rows not published are given back at once, so
                    # that they go as soon as it returns, not after the redispatch delay.
                    self._give_back([i for rest in messages[n:] for i in rest])
                    raise
            total += len(ids)
            room -= len(messages)
            if len(ids) < self.batch_size:
                break
        return total

    def _give_back(self, ids: Sequence[int]) -> None:
        # The publish's error is the one to tell; if this fails too, the delay applies.
        with contextlib.suppress(Exception), self.engine.begin() as conn:
            repository.redispatch_now(conn, ids, now=sql_now(self.clock))

    def seconds_until_due(self, ceiling: float) -> float:
        """How long until the next pending row comes due, at most `ceiling`."""
        with self.engine.connect() as conn:
            earliest = repository.next_due_at(conn)
        if earliest is None:
            return ceiling
        return max(0.0, min(ceiling, (earliest - self.clock.now()).total_seconds()))


def ids_per_message_for(rate_limit_per_minute: int, ceiling: int = MAX_IDS_PER_MESSAGE) -> int:
    """Ids per message for a fleet limited to `rate_limit_per_minute`.

    A message's rows are sent one after the other, each waiting for the fleet's throttle, so
    a message holds at most about half a second of the whole fleet's rate: at 60/min one row,
    at 600/min five. Otherwise a slow task would sit on rows that idle workers could send,
    and its last rows would outlive the redispatch delay.
    """
    return max(1, min(ceiling, rate_limit_per_minute // 120))
