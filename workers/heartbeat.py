"""The heartbeat thread of a long-running process (relay, beat, worker node, webhook receiver).

Every `FAXOUT_HEARTBEAT_SECONDS` it publishes the process's heartbeat (`outbox.liveness.Heart`)
and, in the relay, beat and workers, checks that the fleet has a relay and a beat
(`outbox.liveness.LivenessWatch`). It has its own small engine, handed to no one else: in a
Celery worker it lives in the parent process, whose pool children are forked (and re-forked)
after it started, so the engine forgets its connections in each child rather than share them.
A database that cannot be reached is one warning per outage, not a traceback per beat.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime

import sqlalchemy.exc
from sqlalchemy import Engine

from outbox import repository
from outbox.alerts import Alerter
from outbox.clock import DatabaseClock
from outbox.db import make_engine
from outbox.liveness import Heart, LivenessWatch
from outbox.settings import Settings

log = logging.getLogger("faxout.liveness")

# The roles whose processes also check the others (a webhook receiver may run on its own, in
# someone else's ASGI app: it only reports).
CHECKING_ROLES = frozenset({"relay", "beat", "worker"})


class Pulse:
    """When a process's main loop last completed a pass (the host's monotonic clock).

    A process whose loop is stuck (a hung connection, a bug) but whose heartbeat thread runs
    would look alive; with a pulse, the heartbeat is withheld once the loop has stalled.
    """

    def __init__(self) -> None:
        self._at = time.monotonic()

    def touch(self) -> None:
        """The loop completed a pass."""
        self._at = time.monotonic()

    def age(self) -> float:
        """Seconds since the last completed pass."""
        return time.monotonic() - self._at


class HeartbeatThread:
    """Publishes one process's heartbeat (and checks the fleet) on a daemon thread.

    With a `pulse`, no heartbeat is published while the process's loop has not completed a
    pass for `stall_after` seconds: a stuck relay is as dead as a killed one.
    """

    def __init__(
        self,
        settings: Settings,
        role: str,
        process: str,
        *,
        pulse: Pulse | None = None,
        stall_after: float = 60.0,
    ) -> None:
        self._settings = settings
        self._pulse = pulse
        self._stall_after = stall_after
        self._stalled = False
        self.engine = _heartbeat_engine(settings)
        clock = DatabaseClock(self._read_now)
        self.heart = Heart(self.engine, role, process, clock)
        self.watch = (
            LivenessWatch(
                self.engine,
                Alerter(clock, settings.alert_webhook_url),
                clock,
                checker=self.heart.instance,
                alert_after=settings.liveness_alert_seconds,
            )
            if role in CHECKING_ROLES
            else None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"faxout-heartbeat-{role}", daemon=True
        )
        self._unreachable = False

    def _read_now(self) -> datetime:
        with self.engine.connect() as conn:
            return repository.database_now(conn)

    def start(self) -> HeartbeatThread:
        """Start beating (the first heartbeat is published before this returns, if it can)."""
        self._tick()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and record a clean shutdown (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            # A beat in progress may take its statement's time; do not wait for ever.
            _sleep_until(lambda: not self._thread.is_alive(), 10.0)
        try:
            self.heart.stop()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning(
                "liveness: could not record the shutdown of %s (%s)",
                self.heart,
                exc,
                extra={"action": "liveness.shutdown_unrecorded"},
            )
        finally:
            self.engine.dispose()

    def _run(self) -> None:
        while not _sleep_until(self._stop.is_set, self._settings.heartbeat_seconds):
            self._tick()

    def _tick(self) -> None:
        if self._pulse is not None and self._pulse.age() > self._stall_after:
            if not self._stalled:
                self._stalled = True
                log.warning(
                    "liveness: the %s loop has completed no pass for %.0fs; its heartbeat is "
                    "withheld until it does",
                    self.heart.role,
                    self._pulse.age(),
                    extra={"action": "liveness.withheld"},
                )
            return
        if self._stalled:
            self._stalled = False
            log.warning(
                "liveness: the %s loop is running again",
                self.heart.role,
                extra={"action": "liveness.running_again"},
            )
        try:
            self.heart.beat()
            if self.watch is not None:
                self.watch.run_once()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # One warning per outage: the next successful beat says it is over.
            if not self._unreachable:
                self._unreachable = True
                reason = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
                log.warning(
                    "liveness: cannot publish the %s heartbeat (%s); retrying every %gs",
                    self.heart.role,
                    " ".join(str(reason).split())[:200],
                    self._settings.heartbeat_seconds,
                    extra={"action": "liveness.unreachable"},
                )
            return
        except Exception:
            # A bug must not kill the heartbeat: a silent process would be taken for dead.
            log.exception(
                "liveness: heartbeat of %s failed", self.heart, extra={"action": "liveness.failed"}
            )
            return
        if self._unreachable:
            self._unreachable = False
            log.warning(
                "liveness: %s heartbeat published again",
                self.heart.role,
                extra={"action": "liveness.published_again"},
            )


def _sleep_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Sleep up to `seconds`, waking early once `condition()` holds; whether it held.

    Plain `time.sleep` slices rather than `Event.wait` or `Thread.join` with a timeout: a
    timed lock wait hangs for good under libfaketime, on which the tests run hosts whose
    clocks are minutes off, and a heartbeat must be the last thing to stop on such a host.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.1))
    return True


def _heartbeat_engine(settings: Settings) -> Engine:
    engine = make_engine(
        settings.require_database_url(),
        pool_size=1,
        max_overflow=1,
        connect_args={"connect_timeout": 5},
    )
    # A forked child (a Celery pool process) must not use, nor close, the parent's connection.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


_current: HeartbeatThread | None = None
_current_lock = threading.Lock()


def start(settings: Settings, role: str, process: str) -> HeartbeatThread:
    """Start this process's heartbeat (once; a second call returns the running one)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = HeartbeatThread(settings, role, process).start()
            atexit.register(stop)
        return _current


def stop() -> None:
    """Stop this process's heartbeat, recording a clean shutdown."""
    global _current
    with _current_lock:
        current, _current = _current, None
    if current is not None:
        current.stop()
