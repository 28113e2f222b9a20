"""The admin server: Prometheus metrics, a health check and a read-only dashboard page.

`create_admin_app(take, credentials)` answers `GET /metrics` (the Prometheus text format),
`GET /healthz` and `GET /` (the dashboard, `workers.dashboard`). Every answer is built from a
fresh `outbox.fleet_status` snapshot (Postgres and Redis), never from counters kept in this
process, so any number of admin servers show the same fleet-wide figures, and a restart loses
nothing: the collector (`FleetCollector`) turns one snapshot into metric families per scrape.

It is a server of its own (`faxout admin serve`), never the webhook receiver's: the receiver
faces mintfax on the internet, this faces operators. It binds to loopback unless basic-auth
credentials are configured (`FAXOUT_ADMIN_USER` and `FAXOUT_ADMIN_PASSWORD` or
`FAXOUT_ADMIN_PASSWORD_FILE`); with credentials every route but `/healthz` demands them,
wherever it is bound. Only GET: nothing here changes the outbox.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Protocol

import sqlalchemy.exc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from outbox.fleet_status import FleetSnapshot
from outbox.models import FaxStatus
from outbox.repository import LatencyCounts
from workers.dashboard import render_dashboard

log = logging.getLogger("workers.admin")

DEFAULT_PORT = 9180
SERIES_MINUTES = 60
# Headers of every answer: nothing cached, nothing framed, no script or remote resource.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}


class SnapshotSource(Protocol):
    """Takes a snapshot of the fleet (`outbox.fleet_status.take_snapshot` with the
    process's engine and Redis bound in)."""

    def __call__(self, *, series_minutes: int) -> FleetSnapshot: ...


def is_loopback(host: str) -> bool:
    """True when `host` is a loopback interface (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class FleetCollector(Collector):
    """Prometheus metrics built from one fleet snapshot per scrape (see the module docstring).

    Figures only Redis knows are left out while Redis is unknown (`faxout_redis_up` 0),
    rather than shown as zero.
    """

    def __init__(self, take: SnapshotSource) -> None:
        self._take = take

    def describe(self) -> Iterator[Metric]:
        # Nothing at registration: describing would take a snapshot.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        snap = self._take(series_minutes=0)
        yield from fleet_metrics(snap)
        yield GaugeMetricFamily(
            "faxout_scrape_duration_seconds",
            "How long this scrape's snapshot of Postgres and Redis took.",
            value=time.perf_counter() - started,
        )


def fleet_metrics(snap: FleetSnapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    faxes = GaugeMetricFamily("faxout_faxes", "Rows in fax_outbox by status.", labels=["status"])
    for status in FaxStatus:
        faxes.add_metric([status.value], snap.counts.get(status.value, 0))
    yield faxes
    yield GaugeMetricFamily(
        "faxout_in_flight", "Rows a worker holds right now (sending).", value=snap.in_flight
    )
    oldest = snap.oldest_pending
    yield GaugeMetricFamily(
        "faxout_oldest_pending_age_seconds",
        "Age of the oldest pending fax (0 when none is pending), on the database's clock.",
        value=0.0 if oldest is None else float(oldest["age_seconds"]),
    )
    yield GaugeMetricFamily(
        "faxout_fleet_paused", "1 while any fleet pause is open.", value=1 if snap.pauses else 0
    )
    pauses = GaugeMetricFamily(
        "faxout_fleet_pause_started_timestamp_seconds",
        "Start of each open pause episode, by reason.",
        labels=["reason"],
    )
    for pause in snap.pauses:
        pauses.add_metric([pause.reason], pause.started_at.timestamp())
    yield pauses
    if snap.balance is not None:
        yield GaugeMetricFamily(
            "faxout_balance_available_cents",
            "mintfax balance available, as the balance watch last read it.",
            value=snap.balance.available,
        )
        yield GaugeMetricFamily(
            "faxout_balance_held_cents",
            "mintfax balance held for faxes in progress, as last read.",
            value=snap.balance.held,
        )
        yield GaugeMetricFamily(
            "faxout_balance_observed_timestamp_seconds",
            "When the balance watch last read the balance.",
            value=snap.balance.observed_at.timestamp(),
        )
    yield from _counters(snap)
    yield _histogram(
        "faxout_insert_to_submit_seconds",
        "From insert to mintfax's acceptance, of the faxes accepted in the last hour.",
        snap.insert_to_submit,
    )
    yield _histogram(
        "faxout_submit_to_final_seconds",
        "From mintfax's acceptance to delivered or failed, of the faxes finished in the last hour.",
        snap.submit_to_final,
    )
    yield GaugeMetricFamily(
        "faxout_redis_up", "1 when Redis answered this scrape.", value=snap.redis is not None
    )
    if snap.redis is not None:
        throttle = snap.redis.throttle
        yield GaugeMetricFamily(
            "faxout_throttle_tokens",
            "Requests the fleet throttle would grant right now (cooldown aside).",
            value=throttle["tokens"],
        )
        yield GaugeMetricFamily(
            "faxout_throttle_cooldown_seconds",
            "Seconds left in the fleet-wide 429 cooldown.",
            value=throttle["cooldown_remaining"],
        )
        yield GaugeMetricFamily(
            "faxout_throttle_limit_per_minute",
            "The mintfax rate limit the fleet shares.",
            value=throttle["limit_per_minute"],
        )
        yield GaugeMetricFamily(
            "faxout_pause_mirror_paused",
            "1 while the Redis pause mirror (what workers read) says paused.",
            value=snap.redis.pause_mirror,
        )
        queues = GaugeMetricFamily(
            "faxout_broker_queue_messages", "Messages waiting in a Celery queue.", labels=["queue"]
        )
        for name, depth in snap.redis.queues.items():
            queues.add_metric([name], depth)
        yield queues
    if snap.heartbeats is not None:
        yield from _heartbeat_metrics(snap)


def _counters(snap: FleetSnapshot) -> Iterator[Metric]:
    attempts = snap.attempts
    finals = {
        "delivered": ("faxout_delivered", "Faxes mintfax delivered."),
        "failed": ("faxout_failed", "Faxes that failed (at mintfax, or every attempt refused)."),
        "rejected": ("faxout_rejected", "Faxes refused by mintfax or by our own checks."),
    }
    yield CounterMetricFamily(
        "faxout_submitted", "Faxes mintfax accepted (a 201, or its replay).", attempts.submitted
    )
    for status, (name, documentation) in finals.items():
        yield CounterMetricFamily(name, documentation, snap.finals[status])
    yield CounterMetricFamily(
        "faxout_retries", "Attempts that scheduled another one.", attempts.retries
    )
    yield CounterMetricFamily(
        "faxout_mintfax_429", "mintfax answers 429 (rate limited).", attempts.rate_limited
    )
    yield CounterMetricFamily(
        "faxout_mintfax_402",
        "mintfax answers 402 (insufficient balance).",
        attempts.insufficient_balance,
    )
    by_outcome = CounterMetricFamily(
        "faxout_attempts", "Submission attempts by outcome.", labels=["outcome"]
    )
    for outcome, n in sorted(attempts.by_outcome.items()):
        by_outcome.add_metric([outcome], n)
    yield by_outcome
    events = CounterMetricFamily(
        "faxout_webhook_events",
        "mintfax webhook events: accepted (recorded once), duplicate, refused.",
        labels=["result"],
    )
    events.add_metric(["accepted"], sum(snap.events.values()))
    if snap.redis is not None:
        events.add_metric(["duplicate"], snap.redis.webhook_duplicates)
        events.add_metric(["refused"], sum(snap.redis.webhook_refused.values()))
    yield events
    recorded = CounterMetricFamily(
        "faxout_webhook_events_recorded",
        "Recorded webhook events by what became of them.",
        labels=["outcome"],
    )
    for outcome, n in sorted(snap.events.items()):
        recorded.add_metric([outcome], n)
    yield recorded
    if snap.redis is not None:
        refused = CounterMetricFamily(
            "faxout_webhook_events_refused",
            "Webhook requests refused, by the HTTP status answered.",
            labels=["status"],
        )
        for status, n in snap.redis.webhook_refused.items():
            refused.add_metric([status], n)
        yield refused


def _histogram(name: str, documentation: str, counts: LatencyCounts) -> GaugeHistogramMetricFamily:
    # A gauge histogram: the distribution over a sliding window, which shrinks as well as
    # grows, so histogram_quantile() is taken of the buckets themselves, not of their rate().
    buckets: list[tuple[str, float]] = [(repr(bound), n) for bound, n in counts.buckets]
    buckets.append(("+Inf", counts.count))
    return GaugeHistogramMetricFamily(
        name, documentation, buckets=buckets, gsum_value=counts.total_seconds
    )


def _heartbeat_metrics(snap: FleetSnapshot) -> Iterator[Metric]:
    youngest: dict[str, float] = {}
    running: dict[str, int] = {}
    for beat in snap.heartbeats or []:
        if beat.get("stopped_at") is not None:
            continue
        role = str(beat["role"])
        age = float(beat["age_seconds"])
        youngest[role] = min(age, youngest.get(role, age))
        running[role] = running.get(role, 0) + 1
    ages = GaugeMetricFamily(
        "faxout_heartbeat_age_seconds",
        "Age of the youngest heartbeat of a running process, by role.",
        labels=["role"],
    )
    for role, age in sorted(youngest.items()):
        ages.add_metric([role], age)
    yield ages
    processes = GaugeMetricFamily(
        "faxout_processes",
        "Processes that have not stopped, by role (a silent one stays until forgotten).",
        labels=["role"],
    )
    for role, n in sorted(running.items()):
        processes.add_metric([role], n)
    yield processes


def create_admin_app(
    take: SnapshotSource, credentials: tuple[str, SecretStr] | None = None
) -> Starlette:
    """The admin app: `/metrics`, `/healthz`, `/` (see the module docstring).

    With `credentials` every route but `/healthz` demands HTTP basic auth with them.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(take))

    def authorized(request: Request) -> bool:
        if credentials is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both compared, in constant time, whatever the first comparison says.
        user_ok = hmac.compare_digest(user.encode(), credentials[0].encode())
        secret = credentials[1].get_secret_value().encode()
        password_ok = hmac.compare_digest(password.encode(), secret)
        return user_ok and password_ok

    def challenge() -> Response:
        return PlainTextResponse(
            "authentication required\n",
            status_code=401,
            headers={**_HEADERS, "WWW-Authenticate": 'Basic realm="faxout admin", charset="UTF-8"'},
        )

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return challenge()
        try:
            body = await run_in_threadpool(generate_latest, registry)
        except sqlalchemy.exc.DBAPIError as exc:
            return _unavailable(exc, PlainTextResponse)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers=_HEADERS)

    async def dashboard(request: Request) -> Response:
        if not authorized(request):
            return challenge()
        try:
            snap = await run_in_threadpool(lambda: take(series_minutes=SERIES_MINUTES))
        except sqlalchemy.exc.DBAPIError as exc:
            return _unavailable(exc, HTMLResponse)
        return HTMLResponse(render_dashboard(snap), headers=_HEADERS)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True}, headers=_HEADERS)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", dashboard, methods=["GET"]),
        ]
    )


def _unavailable(exc: sqlalchemy.exc.DBAPIError, kind: type[Response]) -> Response:
    # The type only: a driver's message can name the host, never shown to a browser.
    log.warning("snapshot failed: %s: %s", type(exc).__name__, exc.orig)
    return kind("database unavailable\n", status_code=503, headers=_HEADERS)
