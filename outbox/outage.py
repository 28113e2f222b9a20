"""Outages of Postgres or Redis as one process meets them: told once, and made good after.

A restart of either is routine (a failover, an upgrade), so it must cost seconds, not leases,
and not a traceback per task:

- `database_boundary` translates the driver's "cannot reach the database" into
  `DatabaseUnavailable`, once, where the submit path and the relay call the database; a
  statement that fails on its own (a constraint, a deadlock) is not an outage and passes.
- `OutageLog` writes one warning when a process loses a service and one line when it has it
  back, however many tasks met the outage in between.
- `KeptWork` holds what a worker could not write while the database was away: the outcome of
  a POST it made (a 201 must never be lost, nor the row sent again), the claim of a row it
  did not send (given back at once, not after its lease), and the ids of a message it could
  not even claim (made due again at once, not after the redispatch delay). Bounded: past
  `limit`, the oldest claim is left to its lease, as if this process had died.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import psycopg
import sqlalchemy.exc

from outbox.errors import DatabaseUnavailable

DATABASE = "database"
REDIS = "redis"

# SQLSTATEs of a server going away or not there yet: class 08 (connection exception),
# admin_shutdown (a fast stop or restart), crash_shutdown, cannot_connect_now (starting up).
_GONE = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: BaseException) -> bool:
    """Whether a driver error means the database cannot be reached (not a failed statement)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sqlalchemy.exc.InterfaceError):
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        # No SQLSTATE: the client's own failure (refused, reset, "the connection is closed").
        return state is None or state.startswith("08") or state in _GONE
    return False


def as_database_unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """`exc` as the `DatabaseUnavailable` it means, or None if it is not an outage."""
    if not connection_lost(exc):
        return None
    # Only the error's type and first line: psycopg's messages name host and port, never the
    # password, but a server's message may run long.
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return DatabaseUnavailable(f"{type(cause).__name__}: {first_line}"[:300])


@contextmanager
def database_boundary() -> Iterator[None]:
    """Raise `DatabaseUnavailable` for a lost database inside the block; nothing else changes."""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, psycopg.Error) as exc:
        translated = as_database_unavailable(exc)
        if translated is None:
            raise
        raise translated from exc


class OutageLog:
    """One warning per service and outage, one line when it is back: per process."""

    def __init__(
        self, logger: logging.Logger, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def is_down(self, service: str) -> bool:
        """Whether this process has met an outage of `service` that has not ended."""
        return service in self._since

    def lost(self, service: str, error: BaseException, doing: str) -> bool:
        """Record that `service` failed; the first failure of an outage logs one warning
        saying what the process does meanwhile (`doing`). True if this was that first one."""
        with self._lock:
            if service in self._since:
                return False
            self._since[service] = self._monotonic()
        self._log.warning(
            "%s unavailable (%s); %s",
            service,
            error,
            doing,
            extra={"action": f"outage.{service}_lost", "service": service},
        )
        return True

    def back(self, service: str, detail: str = "") -> None:
        """Record that `service` answered again; ends an outage with one line."""
        with self._lock:
            since = self._since.pop(service, None)
        if since is None:
            return
        seconds = self._monotonic() - since
        self._log.warning(
            "%s back after %.1f s%s",
            service,
            seconds,
            f"; {detail}" if detail else "",
            extra={
                "action": f"outage.{service}_back",
                "service": service,
                "duration_ms": int(seconds * 1000),
            },
        )


T = TypeVar("T")


class KeptWork(Generic[T]):
    """What a worker kept while the database was away, until it is written (thread-safe).

    `claims` are keyed by lease token, oldest first; `waiting` are row ids of messages that
    were never claimed.
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._claims: OrderedDict[uuid.UUID, T] = OrderedDict()
        self._waiting: dict[int, None] = {}
        # Held by whoever writes the kept work or submits, so that they never overlap.
        self.busy = threading.RLock()

    def __bool__(self) -> bool:
        return bool(self._claims or self._waiting)

    def keep(self, token: uuid.UUID, item: T) -> T | None:
        """Keep a claim's work; returns the oldest one dropped to stay within `limit`."""
        with self._lock:
            self._claims[token] = item
            if len(self._claims) > self.limit:
                return self._claims.popitem(last=False)[1]
        return None

    def keep_waiting(self, fax_ids: Iterable[int]) -> None:
        """Keep ids of rows this process was handed but could not claim."""
        with self._lock:
            for fax_id in fax_ids:
                if len(self._waiting) >= self.limit * 10:
                    return  # the rest come due after the redispatch delay
                self._waiting[fax_id] = None

    def claims(self) -> list[tuple[uuid.UUID, T]]:
        """The kept claims, oldest first (still kept until `drop`)."""
        with self._lock:
            return list(self._claims.items())

    def drop(self, token: uuid.UUID) -> None:
        """Forget a claim whose work is written."""
        with self._lock:
            self._claims.pop(token, None)

    def waiting(self) -> list[int]:
        """The kept ids of unclaimed rows (still kept until `drop_waiting`)."""
        with self._lock:
            return list(self._waiting)

    def drop_waiting(self, fax_ids: Iterable[int]) -> None:
        """Forget ids that were given back."""
        with self._lock:
            for fax_id in fax_ids:
                self._waiting.pop(fax_id, None)


_PROCESS_LOG: OutageLog | None = None
_PROCESS_LOG_LOCK = threading.Lock()


def process_log() -> OutageLog:
    """This process's `OutageLog`, shared by everything in it that meets an outage (the
    submit path, maintenance tasks), so that the process says it once."""
    global _PROCESS_LOG
    with _PROCESS_LOG_LOCK:
        if _PROCESS_LOG is None:
            _PROCESS_LOG = OutageLog(logging.getLogger("faxout.outage"))
        return _PROCESS_LOG
