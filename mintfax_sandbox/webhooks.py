"""Outgoing webhooks: signing (both mintfax generations) and asynchronous, retried delivery.

Generation A (default): `X-Mintfax-Timestamp: <unix seconds>` and `X-Mintfax-Signature: <hex
HMAC-SHA256 of "{timestamp}.{raw body}">`, keyed with the secret string exactly as issued (UTF-8,
`whsec_` prefix included). Generation B (`webhook_signing="b"`): Standard Webhooks, `webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64>` over `"{id}.{timestamp}.{body}"`, keyed
with the base64-decoded part after `whsec_`. Issued secrets are `whsec_` + base64 of 24 random
bytes, so the same secret works for both.

Delivery never blocks the API: each (event, endpoint) is one task that POSTs the same raw body,
re-signed with a fresh timestamp on every attempt, and retries with exponential backoff on
non-2xx, network errors and answers slower than the timeout (5 s), up to `max_attempts`.
At most `MAX_IN_FLIGHT` (32) POSTs are under way at once; the other tasks wait their turn. Without
that bound, thousands of queued deliveries (a busy run) all waited inside the HTTP client's
connection pool, whose scheduling is quadratic in its queue: the simulator's one event loop
spent its time there and stopped answering the API (found by the chaos run, issue 12).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

log = logging.getLogger("mintfax_sandbox.webhooks")

Signing = Literal["a", "b"]
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# Deliveries POSTing at once: within the client's kept-alive connections (state.py: 50), so
# none queues in its pool and no connection is closed after its request only to be reopened.
MAX_IN_FLIGHT = 32


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks shape (valid for both generations)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def sign_a(secret: str, timestamp: int, body: bytes) -> str:
    """Generation A signature: hex HMAC-SHA256 of `{timestamp}.{body}`, key = the secret as is."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_b(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Generation B (Standard Webhooks) signature value `v1,<base64>`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    signing: Signing, secret: str, event_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The headers of one delivery attempt."""
    headers = {"content-type": "application/json", "user-agent": "mintfax-sandbox"}
    if signing == "b":
        headers["webhook-id"] = event_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_b(secret, event_id, timestamp, body)
    else:
        headers["x-mintfax-timestamp"] = str(timestamp)
        headers["x-mintfax-signature"] = sign_a(secret, timestamp, body)
    return headers


@dataclass(slots=True)
class Target:
    """Where one event goes, and the secret that signs it there."""

    url: str
    secret: str = field(repr=False)


@dataclass(slots=True)
class DeliveryRecord:
    """One (event, endpoint) delivery as the control API shows it."""

    event_id: str
    event: str
    url: str
    duplicate: bool
    status: str = "pending"
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event": self.event,
            "url": self.url,
            "duplicate": self.duplicate,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class DeliveryPolicy:
    """How hard to try. Backoff delays are multiplied by the sandbox time scale."""

    signing: Signing = "a"
    timeout_seconds: float = 5.0
    max_attempts: int = 6
    first_backoff_seconds: float = 0.1
    time_scale: float = 1.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0


class WebhookDispatcher:
    """Delivers signed events in the background; counts successes and give-ups."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: Callable[[], DeliveryPolicy],
        chance: Callable[[float], bool],
        on_result: Callable[[bool], None],
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(max_in_flight)
        self._policy = policy
        self._chance = chance
        self._on_result = on_result
        self._tasks: set[asyncio.Task[None]] = set()
        self.log: list[DeliveryRecord] = []

    def send(self, envelope: dict[str, Any], body: bytes, targets: list[Target]) -> None:
        """Schedule delivery of one event to every target (returns at once)."""
        policy = self._policy()
        for target in targets:
            copies = 2 if self._chance(policy.duplicate_rate) else 1
            for copy in range(copies):
                record = DeliveryRecord(
                    envelope["event_id"], envelope["event"], target.url, duplicate=copy > 0
                )
                self.log.append(record)
                # A held-back event lands after the ones emitted in the next few carrier steps.
                hold = 0.0
                if self._chance(policy.reorder_rate):
                    hold = 0.3 * policy.time_scale
                task = asyncio.get_running_loop().create_task(
                    self._deliver(record, target, body, hold)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, record: DeliveryRecord, target: Target, body: bytes, hold: float
    ) -> None:
        if hold:
            await asyncio.sleep(hold)
        while True:
            policy = self._policy()
            record.attempts += 1
            headers = signed_headers(
                policy.signing, target.secret, record.event_id, body, int(time.time())
            )
            try:
                async with self._slots:
                    response = await self._client.post(
                        target.url, content=body, headers=headers, timeout=policy.timeout_seconds
                    )
                record.last_status_code = response.status_code
                record.last_error = None
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError as exc:
                record.last_status_code = None
                record.last_error = type(exc).__name__
                ok = False
            if ok:
                record.status = "delivered"
                self._on_result(True)
                return
            if record.attempts >= policy.max_attempts:
                record.status = "failed"
                self._on_result(False)
                log.info("webhook %s to %s gave up", record.event_id, record.url)
                return
            backoff = policy.first_backoff_seconds * 2 ** (record.attempts - 1)
            await asyncio.sleep(backoff * policy.time_scale)

    async def close(self) -> None:
        """Cancel every pending delivery (shutdown or reset)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
