"""The Celery app: `celery -A workers.app worker` and `celery -A workers.app beat`.

Configured for "Postgres is the truth": messages carry only row ids, JSON only, acknowledged
after the task ran (`acks_late`) and requeued when a worker process dies mid-task
(`task_reject_on_worker_lost`), one message prefetched at a time. The Redis visibility timeout
is far longer than any task, and no task ever uses a countdown or ETA (the retry schedule lives
on the row), so Redis never redelivers a message that is still being worked on.
The app owns the queue and task names; `workers.runtime` builds the objects the tasks use and
never imports this module, so the two have no import circle. Settings are given to `configure`
by the process that owns the app (the relay passes its own); a `celery -A workers.app` process
reads them from its environment once, when Celery first configures the app.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from celery import Celery, signals

from outbox import redis_conn
from outbox.alerts import Alerter
from outbox.balance_watch import BalanceWatch
from outbox.errors import ConfigurationError
from outbox.logs import configure_logging
from outbox.pause import FleetControl
from outbox.poller import StatusPoller
from outbox.redis_conn import RedisTarget
from outbox.rescuer import LeaseRescuer
from outbox.resolver import UnknownOutcomeResolver
from outbox.retention import RetentionPolicy
from outbox.settings import Settings, log_settings_from_env
from workers import heartbeat
from workers.runtime import Runtime

QUEUE = "faxout"
# Beat's maintenance tasks have a queue of their own: behind a backlog of submit messages they
# would wait past their `expires` and be dropped unrun (no rescue, no pause sync, no alert
# retries) exactly when the fleet is busiest. Workers consume both (`-Q faxout,faxout.maintenance`).
MAINTENANCE_QUEUE = "faxout.maintenance"
SUBMIT_TASK = "faxout.submit_fax"
RESCUE_TASK = "faxout.rescue_expired_leases"
SYNC_PAUSE_MIRROR_TASK = "faxout.sync_pause_mirror"
DELIVER_ALERTS_TASK = "faxout.deliver_pending_alerts"
POLL_STATUS_TASK = "faxout.poll_fax_status"
WATCH_BALANCE_TASK = "faxout.watch_balance"
RESOLVE_UNKNOWN_TASK = "faxout.resolve_unknown_outcomes"
APPLY_RETENTION_TASK = "faxout.apply_retention"
MAINTENANCE_TASKS = (
    RESCUE_TASK,
    SYNC_PAUSE_MIRROR_TASK,
    DELIVER_ALERTS_TASK,
    POLL_STATUS_TASK,
    WATCH_BALANCE_TASK,
    RESOLVE_UNKNOWN_TASK,
    APPLY_RETENTION_TASK,
)

# Every task ends quietly on a Postgres or Redis outage, one warning per process
# (workers/outages.py).
app = Celery("faxout", include=["workers.tasks"], task_cls="workers.outages:OutageAwareTask")


def configure(settings: Settings) -> None:
    """Apply fax-outbox's Celery configuration for `settings` (and let the tasks use them)."""
    Runtime.configure(settings)
    retention_interval = RetentionPolicy.from_settings(settings).interval
    # httpx logs every request at INFO; submit already logs one masked line per fax, and a
    # second, unmasked one per request costs CPU on the hot path for nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A Sentinel-managed REDIS_URL becomes kombu's sentinel:// transport (outbox/redis_conn.py).
    broker_url, transport_options = redis_conn.broker_options(
        RedisTarget.from_settings(settings),
        {
            "visibility_timeout": settings.broker_visibility_timeout,
            # kombu sweeps for expired unacked messages every interval x throttle seconds
            # (default ~100 s); keep the sweep no slower than the timeout it enforces.
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 2)),
            "unacked_restore_throttle": 1 if settings.broker_visibility_timeout < 100 else 10,
            "socket_timeout": 10,
            "socket_connect_timeout": 10,
            "retry_on_timeout": True,
        },
    )
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # Back on the broker within a second of Redis's return, and one warning per outage
        # from workers and beat, not a traceback per task (workers/outages.py).
        worker_consumer="workers.outages:QuickReconnectConsumer",
        beat_scheduler="workers.outages:OutageAwareScheduler",
        task_default_queue=QUEUE,
        task_create_missing_queues=True,
        task_routes={name: {"queue": MAINTENANCE_QUEUE} for name in MAINTENANCE_TASKS},
        # Task events (sent, received, started, succeeded) feed Flower; FAXOUT_TASK_EVENTS=false
        # turns them off where nobody watches. One Redis PUBLISH each, per message.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "rescue-expired-leases": {
                "task": RESCUE_TASK,
                "schedule": LeaseRescuer.interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 30},
            },
            "sync-pause-mirror": {
                "task": SYNC_PAUSE_MIRROR_TASK,
                "schedule": FleetControl.sync_interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 30},
            },
            "deliver-pending-alerts": {
                "task": DELIVER_ALERTS_TASK,
                "schedule": Alerter.retry_interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 120},
            },
            "poll-fax-status": {
                "task": POLL_STATUS_TASK,
                "schedule": StatusPoller.interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": StatusPoller.interval},
            },
            "watch-balance": {
                "task": WATCH_BALANCE_TASK,
                "schedule": BalanceWatch.interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": BalanceWatch.interval},
            },
            "resolve-unknown-outcomes": {
                "task": RESOLVE_UNKNOWN_TASK,
                "schedule": UnknownOutcomeResolver.interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": UnknownOutcomeResolver.interval},
            },
            "apply-retention": {
                "task": APPLY_RETENTION_TASK,
                "schedule": retention_interval,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": retention_interval},
            },
        },
    )


# True while `_configure_on_first_use` runs: the `app.conf.update` in `configure` can read the
# still-pending configuration again (once `app.amqp` watches it, e.g. the relay's first
# publish), which fires `on_configure` again; without this guard that recursed until Python's
# limit (a RecursionError in every relay's log) and probed the sentinels at every level.
_configuring = False


@app.on_configure.connect
def _configure_on_first_use(sender: Celery, **_: Any) -> None:
    # Fires once, on the first use of `app.conf`: in `celery -A workers.app` processes, or in a
    # process that called `configure` (whose settings are then already given to the runtime).
    global _configuring
    if _configuring:
        return
    _configuring = True
    try:
        _configure_from_settings()
    finally:
        _configuring = False


def _configure_from_settings() -> None:
    try:
        given = Runtime.configured_settings()
        settings = given or Settings.from_env()
        if given is None:
            # A `celery -A workers.app` process (one that configured itself checked at its
            # start): a Sentinel-managed REDIS_URL with a wrong master name or password never
            # starts to work, so it stops here; sentinels that do not answer are one warning.
            redis_conn.warn_at_startup(RedisTarget.from_settings(settings))
    except ConfigurationError as exc:
        # Celery logs and swallows a receiver's exception, then carries on with its defaults
        # (an AMQP broker on localhost): a misconfigured worker must stop instead, in one line.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(settings)


# One send at a time per process: a worker process's submit context (the claim in progress,
# the work an outage kept, and the lock that keeps them apart) is its own. The prefork pool
# gives each concurrent send a process; solo has one. A threads or greenlet pool would share
# one context among its sends and, under that lock, send one fax at a time whatever
# --concurrency says.
PROCESS_POOLS = frozenset({"celery.concurrency.prefork", "celery.concurrency.solo"})


def pool_is_supported(pool: object) -> bool:
    """Whether Celery's `--pool` (an alias such as "threads", or a class) gives each send a
    process of its own."""
    from celery import concurrency

    try:
        implementation = concurrency.get_implementation(pool)
    except (ImportError, AttributeError, KeyError, TypeError):
        return True  # Celery itself says what is wrong with it
    return getattr(implementation, "__module__", "") in PROCESS_POOLS


@signals.worker_init.connect
def _require_a_process_pool(sender: Any, **_: Any) -> None:
    pool = getattr(sender, "pool_cls", None)
    if pool is not None and not pool_is_supported(pool):
        print(
            f"error: the {pool if isinstance(pool, str) else pool.__module__} pool is not "
            "supported: fax-outbox workers send one fax at a time per process; use the "
            "prefork pool (the default) and --concurrency for more at once",
            file=sys.stderr,
        )
        raise SystemExit(2)


@signals.worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    Runtime.close()


# Logs (outbox/logs.py): a receiver of `setup_logging` replaces Celery's own setup, so workers
# and beat write the same lines as every other process. Celery's `-l` sets the level of its
# own and the libraries' lines; FAXOUT_LOG_LEVEL that of fax-outbox's.
@signals.setup_logging.connect
def _configure_logging(loglevel: int | None = None, **_: Any) -> None:
    settings = Runtime.configured_settings()
    try:
        log_format, level = (
            (settings.log_format, settings.log_level)
            if settings is not None
            else log_settings_from_env()
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    role = "beat" if "beat" in sys.argv[1:] else "worker"
    configure_logging(log_format, level, role=role, root_level=loglevel or logging.WARNING)


# Liveness (outbox/liveness.py): the worker node's parent process and beat publish heartbeats
# on a thread of their own and check that the fleet has a relay and a beat.
@signals.worker_ready.connect
def _start_worker_heartbeat(sender: Any, **_: Any) -> None:
    settings = Runtime.configured_settings()
    if settings is not None:
        heartbeat.start(settings, "worker", str(sender.hostname))


@signals.worker_shutdown.connect
def _stop_worker_heartbeat(**_: Any) -> None:
    heartbeat.stop()


@signals.beat_init.connect
def _start_beat_heartbeat(**_: Any) -> None:
    # Beat has no shutdown signal: `heartbeat.start` records the clean exit at interpreter exit.
    settings = Runtime.configured_settings() or Settings.from_env()
    heartbeat.start(settings, "beat", f"beat@{socket.gethostname()}")
