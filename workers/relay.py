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

import psycopg

from outbox.dispatch import Dispatcher
from outbox.liveness import process_identity
from outbox.models import NOTIFY_CHANNEL
from outbox.settings import Settings, libpq_url
from workers.app import QUEUE, SUBMIT_TASK, app, configure
from workers.heartbeat import HeartbeatThread, Pulse
from workers.runtime import Runtime

log = logging.getLogger("faxout.relay")

# When the broker queue is full, look again this soon.
BACKPRESSURE_SLEEP = 0.05


def run_relay(settings: Settings, stop: threading.Event, *, poll_interval: float = 0.5) -> None:
    """Dispatch due rows until `stop` is set; reconnects to Postgres after failures."""
    configure(settings)  # the app publishes with these settings, not the environment's
    runtime = Runtime(settings)

    def publish(fax_ids: Sequence[int]) -> None:
        app.send_task(SUBMIT_TASK, args=[list(fax_ids)], queue=QUEUE)

    dispatcher = runtime.dispatcher(publish, QUEUE)
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
                    _loop(dispatcher, listener, stop, poll_interval, pulse)
            except (psycopg.OperationalError, OSError) as exc:
                log.warning(
                    "relay lost the database (%s); retrying in %.1fs",
                    exc,
                    backoff,
                    extra={"action": "relay.database_lost"},
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                # Broker or anything else: rows already marked are republished after the
                # redispatch delay, so the relay only has to stay alive and try again.
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
) -> None:
    while not stop.is_set():
        dispatched = dispatcher.run_once()
        pulse.touch()
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
