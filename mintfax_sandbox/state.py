"""The sandbox's in-memory world: faxes, idempotency keys, money, webhook endpoints, counters.

Everything runs on the server's one event loop, so state changes between two `await`s are atomic
and need no locks. Time has two sources: the simulated clock (`SimClock`, real time plus an offset
the control API can advance) drives record timestamps and the 24 h idempotency window; the real
monotonic clock drives the rate limit and carrier delays.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from mintfax_sandbox import carrier
from mintfax_sandbox.faults import FaultConfig, FaultPlan
from mintfax_sandbox.ratelimit import SlidingWindowLimiter
from mintfax_sandbox.webhooks import (
    DeliveryPolicy,
    Signing,
    Target,
    WebhookDispatcher,
    new_secret,
)

IDEMPOTENCY_TTL = timedelta(hours=24)
EVENTS = (
    "fax.queued",
    "fax.sending",
    "fax.retry_scheduled",
    "fax.delivered",
    "fax.failed",
    "balance.low",
    "balance.topup",
)
LOW_BALANCE_FRACTION = 0.2
REQUEST_LOG_SIZE = 100_000


@dataclass(frozen=True)
class SandboxConfig:
    """How the simulator behaves; everything but `initial_balance` can change at runtime."""

    rate_limit_per_minute: int = 60
    # mintfax's window is 60 s; a shorter one only shortens rate-limit tests (set at start).
    rate_limit_window_seconds: float = 60.0
    time_scale: float = 1.0
    webhook_signing: Signing = "a"
    price_per_page: int = 10
    initial_balance: int = 1_000_000
    step_seconds: float = 0.05
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 6
    faults: FaultConfig = field(default_factory=FaultConfig)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a `Z`, as mintfax writes timestamps."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def new_event_id() -> str:
    """`evt_` + a ULID-like id (time-ordered prefix, random tail)."""
    return f"evt_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class SimClock:
    """Real UTC time plus an offset that only moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> datetime:
        self.offset += timedelta(seconds=seconds)
        return self.now()


@dataclass(slots=True)
class Fax:
    """One fax record, as `GET /v1/fax/{id}` shows it (plus what the simulator needs)."""

    id: str
    to: str
    idempotency_key: str | None
    retries: int
    webhook_url: str | None
    file_type: str
    file_size: int
    created_at: datetime
    hold: int
    submissions: int = 1
    status: str = "queued"
    retries_remaining: int = 0
    pages: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    charged: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def as_api(self) -> dict[str, Any]:
        """The generation-A fax resource."""
        return {
            "id": self.id,
            "status": self.status,
            "to": self.to,
            "retries_remaining": self.retries_remaining,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at or self.created_at),
            "pages": self.pages,
            "carrier": "sandbox",
            "carrier_id": f"sbx_{self.id[:8]}" if self.submitted_at else None,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "webhook_url": self.webhook_url,
            "idempotency_key": self.idempotency_key,
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.completed_at),
            "attempts": list(self.attempts),
        }

    def event_data(self) -> dict[str, Any]:
        """`data` of a `fax.*` webhook event."""
        return {
            "id": self.id,
            "status": self.status,
            "to": self.to,
            "pages": self.pages,
            "retries_remaining": self.retries_remaining,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.completed_at),
        }

    def as_inspection(self) -> dict[str, Any]:
        """What `GET /sandbox/faxes` shows: enough to assert exactly-once from outside."""
        return {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "to": self.to,
            "status": self.status,
            "pages": self.pages,
            "submissions": self.submissions,
            "retries": self.retries,
            "attempts": len(self.attempts),
            "error_code": self.error_code,
            "charged": self.charged,
            "created_at": iso(self.created_at),
            "completed_at": iso(self.completed_at),
        }


@dataclass(slots=True)
class IdempotencyEntry:
    """A key's stored outcome; `response` is None while the first request is still running."""

    fingerprint: bytes
    created_at: datetime
    fax_id: str | None = None
    response: bytes | None = None


@dataclass(slots=True)
class WebhookEndpoint:
    """A registered endpoint (`POST /v1/account/webhooks`)."""

    id: str
    url: str
    events: list[str] | None
    description: str | None
    secret: str = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    is_active: bool = True

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.created_at),
            "events": self.events,
            "description": self.description,
        }

    def wants(self, event: str) -> bool:
        return self.is_active and (self.events is None or event in self.events)


@dataclass(slots=True)
class Account:
    """The sandbox balance: available and held cents, and the `balance.low` cycle."""

    available: int
    held: int = 0
    last_topup: int = 0
    low_fired: bool = False


@dataclass(slots=True)
class Stats:
    """Counters for `GET /sandbox/stats`."""

    requests_by_status: Counter[str] = field(default_factory=Counter)
    requests_by_path: Counter[str] = field(default_factory=Counter)
    faxes_created: int = 0
    duplicate_creations: int = 0
    same_content_creations: int = 0
    idempotent_replays: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests_total": sum(self.requests_by_status.values()),
            "requests_by_status": dict(self.requests_by_status),
            "requests_by_path": dict(self.requests_by_path),
            "faxes_created": self.faxes_created,
            "duplicate_creations": self.duplicate_creations,
            "same_content_creations": self.same_content_creations,
            "idempotent_replays": self.idempotent_replays,
            "webhooks_delivered": self.webhooks_delivered,
            "webhooks_failed": self.webhooks_failed,
        }


class Sandbox:
    """All simulator state and behaviour behind the HTTP layer."""

    def __init__(self, config: SandboxConfig, account_secret: str | None = None) -> None:
        self.initial_config = config
        self.account_secret = account_secret or new_secret()
        self.limiter = SlidingWindowLimiter(
            config.rate_limit_per_minute, config.rate_limit_window_seconds
        )
        self._client: httpx.AsyncClient | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self._runs: set[carrier.FaxRun] = set()
        # Open connections by client address, filled by the server's protocol class, so a
        # fault can reset the very connection a request arrived on.
        self.transports: dict[Any, asyncio.Transport] = {}
        self._init_state(config)

    def _init_state(self, config: SandboxConfig) -> None:
        self.config = config
        self.limiter.set_limit(config.rate_limit_per_minute)
        self.limiter.clear()
        self.faults = FaultPlan(config.faults)
        self.clock = SimClock()
        self.account = Account(available=config.initial_balance, last_topup=config.initial_balance)
        self.faxes: dict[str, Fax] = {}
        self.fax_order: list[str] = []
        self.idempotency: dict[str, IdempotencyEntry] = {}
        self.keys_with_fax: set[str] = set()
        self.content_seen: set[bytes] = set()
        self.pending_submissions: Counter[str] = Counter()
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self.stats = Stats()
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._request_seq = 0

    # lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the webhook HTTP client (inside the server's loop)."""
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        self._dispatcher = WebhookDispatcher(
            self._client, self._delivery_policy, self.faults_chance, self._count_webhook
        )

    async def stop(self) -> None:
        """Cancel carrier runs and deliveries, close the client."""
        await self._cancel_background()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def reset(self) -> None:
        """Back to the state and configuration the server started with."""
        await self._cancel_background()
        if self._dispatcher is not None:
            self._dispatcher.log.clear()
        self._init_state(self.initial_config)

    async def _cancel_background(self) -> None:
        for run in self._runs:
            run.cancel()
        self._runs.clear()
        if self._dispatcher is not None:
            await self._dispatcher.close()

    def reconfigure(self, **changes: Any) -> None:
        """Apply runtime configuration changes (already validated by the caller)."""
        self.config = replace(self.config, **changes)
        self.limiter.set_limit(self.config.rate_limit_per_minute)
        if "faults" in changes:
            self.faults = FaultPlan(self.config.faults)

    # requests ------------------------------------------------------------------------------

    def log_arrival(self, idempotency_key: str | None) -> dict[str, Any]:
        """Record a `POST /v1/fax` arrival (for "nothing reached the API while paused" tests)."""
        self._request_seq += 1
        entry: dict[str, Any] = {
            "seq": self._request_seq,
            "received_at": time.time(),
            "monotonic": time.monotonic(),
            "idempotency_key": idempotency_key,
            "status": None,
        }
        self.requests.append(entry)
        return entry

    def note_submission(self, key: str | None) -> None:
        """Count a POST that carried `key` against the fax it names (or will name)."""
        if key is None:
            return
        entry = self.live_entry(key)
        if entry is not None and entry.fax_id is not None:
            self.faxes[entry.fax_id].submissions += 1
        else:
            self.pending_submissions[key] += 1

    def live_entry(self, key: str) -> IdempotencyEntry | None:
        """The key's entry unless its 24 h (simulated) window has passed."""
        entry = self.idempotency.get(key)
        if entry is not None and self.clock.now() - entry.created_at >= IDEMPOTENCY_TTL:
            del self.idempotency[key]
            return None
        return entry

    # money -----------------------------------------------------------------------------------

    def place_hold(self, amount: int) -> bool:
        """Move `amount` from available to held; False when it cannot be covered."""
        if self.account.available < amount:
            return False
        self.account.available -= amount
        self.account.held += amount
        self._check_low_balance()
        return True

    def set_balance(self, available: int) -> None:
        """Set available cents; starts a new `balance.low` cycle measured against it."""
        self.account.available = available
        self.account.last_topup = available
        self.account.low_fired = False

    def top_up(self, amount: int) -> None:
        """Add credits and fire `balance.topup` (a new `balance.low` cycle begins)."""
        self.account.available += amount
        self.account.last_topup = amount
        self.account.low_fired = False
        self.emit("balance.topup", {**self.balance_data(), "amount": amount})

    def balance_data(self) -> dict[str, Any]:
        return {"available": self.account.available, "held": self.account.held, "currency": "USD"}

    def _check_low_balance(self) -> None:
        a = self.account
        if not a.low_fired and a.available < LOW_BALANCE_FRACTION * a.last_topup:
            a.low_fired = True
            threshold = int(LOW_BALANCE_FRACTION * a.last_topup)
            self.emit("balance.low", {**self.balance_data(), "threshold": threshold})

    # faxes -------------------------------------------------------------------------------------

    def create_fax(
        self,
        *,
        to: str,
        key: str | None,
        retries: int,
        webhook_url: str | None,
        file_type: str,
        file_size: int,
        fingerprint: bytes,
        hold: int,
        scenario: carrier.Scenario,
    ) -> Fax:
        """Record an accepted fax (hold already placed), start its carrier run, fire queued."""
        fax = Fax(
            id=str(uuid.uuid4()),
            to=to,
            idempotency_key=key,
            retries=retries,
            retries_remaining=retries,
            webhook_url=webhook_url,
            file_type=file_type,
            file_size=file_size,
            created_at=self.clock.now(),
            hold=hold,
        )
        self.faxes[fax.id] = fax
        self.fax_order.append(fax.id)
        self.stats.faxes_created += 1
        if key is not None:
            fax.submissions = self.pending_submissions.pop(key, 0) or 1
            if key in self.keys_with_fax:
                self.stats.duplicate_creations += 1
            self.keys_with_fax.add(key)
        if fingerprint in self.content_seen:
            self.stats.same_content_creations += 1
        self.content_seen.add(fingerprint)
        run = carrier.FaxRun(self, fax, scenario, on_done=self._runs.discard)
        self._runs.add(run)
        run.start()
        self.emit_fax("fax.queued", fax)
        return fax

    def set_status(self, fax: Fax, status: str) -> None:
        fax.status = status
        fax.updated_at = self.clock.now()
        if status == "submitted":
            fax.submitted_at = fax.updated_at

    def start_attempt(self, fax: Fax, number: int) -> None:
        self.set_status(fax, "in_progress")
        fax.attempts.append(
            {
                "attempt_number": number,
                "started_at": iso(fax.updated_at),
                "completed_at": None,
                "error_code": None,
                "error_message": None,
            }
        )
        self.emit_fax("fax.sending", fax)

    def _finish_attempt(self, fax: Fax, code: str | None, message: str | None) -> None:
        attempt = fax.attempts[-1]
        attempt["completed_at"] = iso(self.clock.now())
        attempt["error_code"] = code
        attempt["error_message"] = message

    def schedule_retry(self, fax: Fax, code: str, message: str) -> None:
        self._finish_attempt(fax, code, message)
        fax.retries_remaining -= 1
        fax.updated_at = self.clock.now()
        if self.endpoints or fax.webhook_url:
            data = {**fax.event_data(), "error_code": code, "error_message": message}
            self.emit("fax.retry_scheduled", data, fax.webhook_url)

    def deliver(self, fax: Fax, pages: int) -> None:
        """Terminal success: capture the actual cost and give back what the estimate overheld."""
        self._finish_attempt(fax, None, None)
        cost = pages * self.config.price_per_page
        self.account.held -= fax.hold
        self.account.available += fax.hold - cost
        fax.charged = cost
        fax.pages = pages
        self.set_status(fax, "delivered")
        fax.completed_at = fax.updated_at
        if cost > fax.hold:
            self._check_low_balance()
        self.emit_fax("fax.delivered", fax)

    def fail(self, fax: Fax, code: str, message: str) -> None:
        """Terminal failure: release the hold; failures are never charged."""
        self._finish_attempt(fax, code, message)
        self.account.held -= fax.hold
        self.account.available += fax.hold
        fax.error_code = code
        fax.error_message = message
        self.set_status(fax, "failed")
        fax.completed_at = fax.updated_at
        self.emit_fax("fax.failed", fax)

    # webhooks ----------------------------------------------------------------------------------

    def register_endpoint(
        self, url: str, events: list[str] | None, description: str | None
    ) -> WebhookEndpoint:
        endpoint = WebhookEndpoint(
            id=str(uuid.uuid4()),
            url=url,
            events=events,
            description=description,
            secret=new_secret(),
        )
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    def emit_fax(self, event: str, fax: Fax) -> None:
        if self.endpoints or fax.webhook_url:  # building the payload costs; skip it unheard
            self.emit(event, fax.event_data(), fax.webhook_url)

    def emit(self, event: str, data: dict[str, Any], fax_url: str | None = None) -> None:
        """Send one event to every subscribed endpoint and the fax's own `webhook_url`."""
        targets = [Target(e.url, e.secret) for e in self.endpoints.values() if e.wants(event)]
        if fax_url is not None and all(t.url != fax_url for t in targets):
            targets.append(Target(fax_url, self.account_secret))
        if not targets or self._dispatcher is None:
            return
        envelope = {
            "event_id": new_event_id(),
            "event": event,
            "timestamp": iso(datetime.now(UTC)),
            "data": data,
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        self._dispatcher.send(envelope, body, targets)

    def webhook_log(self) -> list[dict[str, Any]]:
        return [] if self._dispatcher is None else [r.as_json() for r in self._dispatcher.log]

    def faults_chance(self, rate: float) -> bool:
        return self.faults.chance(rate)

    def _delivery_policy(self) -> DeliveryPolicy:
        c = self.config
        return DeliveryPolicy(
            signing=c.webhook_signing,
            timeout_seconds=c.webhook_timeout_seconds,
            max_attempts=c.webhook_max_attempts,
            time_scale=c.time_scale,
            duplicate_rate=c.faults.webhook_duplicate,
            reorder_rate=c.faults.webhook_reorder,
        )

    def _count_webhook(self, delivered: bool) -> None:
        if delivered:
            self.stats.webhooks_delivered += 1
        else:
            self.stats.webhooks_failed += 1
