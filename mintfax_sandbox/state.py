"""The sandbox's in-memory world and everything it does behind the HTTP layer.

`Sandbox` accepts fax requests (idempotency keys in `idempotency`, money in `ledger`), runs each
fax through the carrier (`carrier.FaxRun`), emits webhook events (`webhooks`) and keeps the
counters and logs the control plane shows. The HTTP layer (`app`) only parses requests and
serialises what these methods return or raise.

Everything runs on the server's one event loop, so state changes between two `await`s are atomic
and need no locks. Record timestamps and the 24 h idempotency window follow the simulated clock
(`clock.SimClock`); the rate limit and carrier delays follow the real monotonic clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from mintfax_sandbox import carrier
from mintfax_sandbox.api_keys import ApiKeys
from mintfax_sandbox.clock import SimClock, iso
from mintfax_sandbox.faults import Fault, FaultConfig, FaultPlan
from mintfax_sandbox.idempotency import KeyStore
from mintfax_sandbox.ledger import InsufficientBalance, Ledger
from mintfax_sandbox.ratelimit import RateDecision, SlidingWindowLimiter
from mintfax_sandbox.records import Fax, FaxRequest, Stats, WebhookEndpoint
from mintfax_sandbox.webhooks import (
    DeliveryPolicy,
    Signing,
    Target,
    WebhookDispatcher,
    new_secret,
)

REQUEST_LOG_SIZE = 100_000
FINAL_STATUSES = ("delivered", "failed")


class FaxNotFinal(Exception):
    """A deletion asked of a fax that is still in progress."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


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


@dataclass(frozen=True, slots=True)
class Submitted:
    """The outcome of an accepted `POST /v1/fax`: its fax, and whether it was a replay."""

    fax: Fax
    replayed: bool


def new_event_id() -> str:
    """`evt_` + a ULID-like id (time-ordered prefix, random tail)."""
    return f"evt_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class Sandbox:
    """All simulator state and behaviour behind the HTTP layer."""

    def __init__(self, config: SandboxConfig, account_secret: str | None = None) -> None:
        self.initial_config = config
        # Signs deliveries to per-fax `webhook_url`s; kept across resets.
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
        self.ledger = Ledger(config.initial_balance, self.emit)
        self.keys = KeyStore(self.clock.now)
        self.api_keys = ApiKeys()
        self.faxes: dict[str, Fax] = {}
        self.fax_order: list[str] = []
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

    def admit(self, api_key: str) -> RateDecision | None:
        """The rate limiter's verdict on one `/v1` request (None: no limit configured)."""
        return self.limiter.acquire(api_key)

    def rate_limit_burst(self, faulted: bool) -> RateDecision | None:
        """The 429 of a burst (`burst_429` fault) for a request faults may strike; None when it
        is not refused by one. Its `Retry-After` is the rest of the burst, whole seconds."""
        if not faulted or not self.faults.config.burst_429:
            return None
        before = self.faults.burst_until
        remaining = self.faults.burst_remaining(time.monotonic())
        if not remaining:
            return None
        if self.faults.burst_until != before:
            self.stats.rate_limit_bursts += 1
        self.stats.rate_limit_bursts_refused += 1
        wait = max(1, math.ceil(remaining))
        return RateDecision(False, self.config.rate_limit_per_minute, 0, wait, wait)

    def count_request(self, route: str) -> None:
        self.stats.requests_by_path[route] += 1

    def count_outcome(self, outcome: str, arrival: dict[str, Any] | None) -> None:
        """How a `/v1` request ended: its status code, `reset`, `dropped` or `no_response`."""
        self.stats.requests_by_status[outcome] += 1
        if arrival is not None:
            arrival["status"] = outcome

    def faults_hit_every_endpoint(self) -> bool:
        return self.faults.config.all_endpoints

    def draw_fault(self) -> tuple[Fault, float]:
        """The next request's fault and added latency in seconds (drawn in this order, so a
        seeded run replays the same faults for the same requests)."""
        fault = self.faults.draw()
        return fault, self.faults.latency()

    def receive_submission(self, key: str | None) -> dict[str, Any]:
        """Note a `POST /v1/fax` arrival before anything can fail; returns its log entry."""
        self._note_submission(key)
        return self._log_arrival(key)

    def _log_arrival(self, idempotency_key: str | None) -> dict[str, Any]:
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

    def _note_submission(self, key: str | None) -> None:
        """Count a POST that carried `key` against the fax it names (or will name)."""
        if key is None:
            return
        entry = self.keys.live(key)
        if entry is not None and entry.fax_id is not None:
            self.faxes[entry.fax_id].submissions += 1
        else:
            self.pending_submissions[key] += 1

    async def submit(self, request: FaxRequest, processing_seconds: float = 0.0) -> Submitted:
        """Accept a valid fax request: replay its key's fax, or hold the money and create one.

        Raises `idempotency.KeyReused` / `KeyInProgress` (409) and `ledger.InsufficientBalance`
        (402); nothing is created and the key stays free when it raises. `processing_seconds`
        (injected latency) passes while the key is held "in progress".
        """
        fingerprint = request.fingerprint()
        key = request.key
        if key is not None:
            replayed = self.keys.replay(key, fingerprint)
            if replayed is not None:
                self.stats.idempotent_replays += 1
                return Submitted(self.faxes[replayed], replayed=True)
        scenario = carrier.scenario_for(request.to)
        hold = scenario.pages * self.config.price_per_page
        if scenario.rejection == 402:
            raise InsufficientBalance(self.ledger.available, hold)
        reservation = self.keys.reserve(key, fingerprint) if key is not None else None
        try:
            if processing_seconds:
                await asyncio.sleep(processing_seconds)
            self.ledger.hold(hold)
            fax = self._create_fax(request, fingerprint, hold, scenario)
        except BaseException:
            if key is not None and reservation is not None:
                self.keys.release(key, reservation)
            raise
        if reservation is not None:
            reservation.fax_id = fax.id
        return Submitted(fax, replayed=False)

    # reads ---------------------------------------------------------------------------------

    def fax(self, fax_id: str) -> Fax | None:
        return self.faxes.get(fax_id)

    def fax_page(
        self,
        page: int,
        per_page: int,
        *,
        idempotency_key: str | None = None,
        to: str | None = None,
    ) -> tuple[list[Fax], int]:
        """Page `page` (1-based) of the faxes, newest first, and how many there are in all;
        only those with this `idempotency_key` and sent `to` this number, when given."""
        order = self.fax_order
        if idempotency_key is not None or to is not None:
            order = [
                i
                for i in order
                if (idempotency_key is None or self.faxes[i].idempotency_key == idempotency_key)
                and (to is None or self.faxes[i].to == to)
            ]
        newest_first = order[::-1][(page - 1) * per_page : page * per_page]
        return [self.faxes[i] for i in newest_first], len(order)

    def delete_fax_data(self, fax_id: str) -> Fax | None:
        """Delete a final fax's data early (`DELETE /v1/fax/{id}`); None for an unknown id.

        Raises `FaxNotFinal` while the fax can still change (generation B allows deletion
        only of terminal faxes). A second deletion answers like the first.
        """
        fax = self.faxes.get(fax_id)
        if fax is None:
            return None
        if fax.status not in FINAL_STATUSES:
            raise FaxNotFinal(fax.status)
        if fax.deleted_at is None:
            fax.deleted_at = self.clock.now()
            self.stats.faxes_deleted += 1
        return fax

    def inspect_faxes(self) -> list[dict[str, Any]]:
        """Every fax, oldest first, as `GET /sandbox/faxes` shows it."""
        return [self.faxes[i].as_inspection() for i in self.fax_order]

    def balance(self) -> dict[str, int]:
        return self.ledger.balance()

    # money -----------------------------------------------------------------------------------

    def set_balance(self, available: int) -> None:
        """Set available cents; starts a new `balance.low` cycle measured against it."""
        self.ledger.set_available(available)

    def top_up(self, amount: int) -> None:
        """Add credits and fire `balance.topup` (a new `balance.low` cycle begins)."""
        self.ledger.top_up(amount)

    # faxes -------------------------------------------------------------------------------------

    def _create_fax(
        self, request: FaxRequest, fingerprint: bytes, hold: int, scenario: carrier.Scenario
    ) -> Fax:
        """Record an accepted fax (hold already placed), start its carrier run, fire queued."""
        key = request.key
        fax = Fax(
            id=str(uuid.uuid4()),
            to=request.to,
            idempotency_key=key,
            retries=request.retries,
            retries_remaining=request.retries,
            webhook_url=request.webhook_url,
            file_type=request.file_type,
            file_size=len(request.document),
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

    # the carrier's switchboard (`carrier.Switchboard`) ---------------------------------------

    def step_seconds(self) -> float:
        return self.config.step_seconds * self.config.time_scale

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
        self.ledger.capture(fax.hold, cost)
        fax.charged = cost
        fax.pages = pages
        self.set_status(fax, "delivered")
        fax.completed_at = fax.updated_at
        self.emit_fax("fax.delivered", fax)

    def fail(self, fax: Fax, code: str, message: str) -> None:
        """Terminal failure: release the hold; failures are never charged."""
        self._finish_attempt(fax, code, message)
        self.ledger.release(fax.hold)
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

    def list_endpoints(self) -> list[WebhookEndpoint]:
        return list(self.endpoints.values())

    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Delete an endpoint; False when there is none with this id."""
        return self.endpoints.pop(endpoint_id, None) is not None

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
