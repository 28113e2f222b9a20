"""`faxout relay`: wakes on every outbox insert and publishes due rows to the workers.

LISTENs on the insert trigger's channel, so a new row is dispatched within milliseconds of
its commit; between notifications it sleeps only until the next retry comes due (at most
`poll_interval`). Several relays can run at once; each row goes to one of them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

import kombu.exceptions
import psycopg
import redis

from outbox import repository
from outbox.dispatch import Dispatcher
from outbox.errors import FaxOutboxError
from outbox.liveness import process_identity
from outbox.models import NOTIFY_CHANNEL
from outbox.outage import DATABASE, REDIS, OutageLog, as_database_unavailable
from outbox.settings import Settings, libpq_url
from workers.app import QUEUE, SUBMIT_TASK, app, configure
from workers.heartbeat import HeartbeatThread, Pulse
from workers.runtime import Runtime

log = logging.getLogger("faxout.relay")

# When the broker queue is full, look again this soon.
BACKPRESSURE_SLEEP = 0.05
# While Postgres or Redis is away, try again this often: a restart takes seconds, and sending
# must resume within seconds of it (a doubling backoff once slept 10 s past the return).
OUTAGE_RETRY = 1.0


def _outage(exc: BaseException) -> tuple[str, BaseException] | None:
    """Which service `exc` says is away (and the error to tell), or None for anything else."""
    lost = as_database_unavailable(exc)
    if lost is not None:
        return DATABASE, lost
    if isinstance(
        exc, (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)
    ):
        return REDIS, exc
    if isinstance(exc, FaxOutboxError) and exc.retryable:  # FleetStateUnavailable
        return REDIS, exc
    return None


def run_relay(settings: Settings, stop: threading.Event, *, poll_interval: float = 0.5) -> None:
    """Dispatch due rows until `stop` is set; reconnects to Postgres after failures."""
    configure(settings)  # the app publishes with these settings, not the environment's
    runtime = Runtime(settings)

    def publish(fax_ids: Sequence[int]) -> None:
        app.send_task(SUBMIT_TASK, args=[list(fax_ids)], queue=QUEUE)

    dispatcher = runtime.dispatcher(publish, QUEUE)
    outages = OutageLog(log)
    url = libpq_url(settings.require_database_url())
    backoff = 0.5
    # On a thread of its own, so it beats on time however long the loop waits for
    # notifications, but only while the loop completes passes (a relay stuck on a hung
    # broker is as dead as a killed one); it also checks that the fleet has a beat.
    hostname, pid = process_identity()
    pulse = Pulse()
    heart = HeartbeatThread(
        settings,
        "relay",
        f"relay@{hostname}:{pid}",
        pulse=pulse,
        stall_after=settings.liveness_alert_seconds / 2,
    ).start()
    try:
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as listener:
                    listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    log.info(
                        "relay listening on %s", NOTIFY_CHANNEL, extra={"action": "relay.listening"}
                    )
                    backoff = 0.5
                    _loop(dispatcher, listener, stop, poll_interval, pulse, outages)
            except Exception as exc:
                outage = _outage(exc)
                if outage is not None:
                    # One warning per outage, and no growing backoff: a restart takes
                    # seconds, and sending must resume within seconds of its end.
                    outages.lost(outage[0], outage[1], f"retrying every {OUTAGE_RETRY:.0f} s")
                    stop.wait(OUTAGE_RETRY)
                    continue
                # Anything else: rows already marked are republished after the redispatch
                # delay, so the relay only has to stay alive and try again.
                log.exception(
                    "relay error; retrying in %.1fs", backoff, extra={"action": "relay.error"}
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
    finally:
        heart.stop()
        runtime.dispose()


def _loop(
    dispatcher: Dispatcher,
    listener: psycopg.Connection,
    stop: threading.Event,
    poll: float,
    pulse: Pulse,
    outages: OutageLog,
) -> None:
    while not stop.is_set():
        dispatched = dispatcher.run_once()
        pulse.touch()
        outages.back(DATABASE)
        if outages.is_down(REDIS):
            # Redis may have come back empty (a restart without persistence): the messages
            # of rows already dispatched are gone, so they are made due now rather than after
            # the redispatch delay (a duplicate message is harmless: claims are fenced).
            with dispatcher.engine.begin() as conn:
                again = repository.redispatch_waiting(conn, now=None)
            outages.back(REDIS, f"{again} dispatched row(s) made due again")
            continue
        if not dispatcher.needs_rows(dispatcher.queue_depth()):
            timeout = BACKPRESSURE_SLEEP
        else:
            timeout = dispatcher.seconds_until_due(poll)
            if timeout == 0 and not dispatched:
                # Rows are due but none could be dispatched: the fleet is paused. A resume
                # NOTIFYs, so there is no need to look more often than `poll`.
                timeout = poll
        # Wake on the first notification or when the next retry comes due.
        for _ in listener.notifies(timeout=max(timeout, 0.001), stop_after=1):
            pass


def main(settings: Settings, *, poll_interval: float = 0.5) -> None:
    """Run the relay in the foreground until SIGTERM or SIGINT."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("relay stopping (signal %d)", signum, extra={"action": "relay.stopping"})
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    run_relay(settings, stop, poll_interval=poll_interval)
    log.info(
        "relay stopped after %.0fs", time.monotonic() - started, extra={"action": "relay.stopped"}
    )
