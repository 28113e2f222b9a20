"""Webhook verification: raw bytes, headers, secrets and `now` in; a `FaxEvent` or a refusal out.

One pure function, `verify_webhook`, framework-neutral, so the Starlette receiver
(`workers.webhooks`), a Django view and a Flask route all judge a request the same way. It must
see the body exactly as it arrived: a signature covers the bytes, and JSON parsed and
re-serialised is different bytes.

Both of mintfax's signing generations are accepted, chosen by the headers present:

- A: `X-Mintfax-Timestamp` (Unix seconds) and `X-Mintfax-Signature`, the hex HMAC-SHA256 of
  `"{timestamp}.{raw body}"` keyed with the secret string exactly as issued (UTF-8).
- B: Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> ...`),
  signed by the `standardwebhooks` reference library's code (its key decoding and signed
  content), so we do not re-derive that by hand.

Every configured secret is tried (a rotation has an overlap where mintfax may sign with either),
each comparison in constant time. A timestamp more than `TOLERANCE` away from `now`, in either
direction, is refused: a captured request cannot be replayed later, and duplicates inside the
window are caught by the event id, which the reconciler records once.

Imports only the standard library and pydantic; `standardwebhooks` (the `[worker]` extra) is
imported when a generation B request arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from outbox.errors import WebhookRefused
from outbox.events import FaxEvent

MAX_BODY_BYTES = 1024 * 1024
TOLERANCE = timedelta(seconds=300)

UNAUTHORIZED = 401
TOO_LARGE = 413
BAD_REQUEST = 400

_A_HEADERS = ("x-mintfax-signature", "x-mintfax-timestamp")
_B_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_HEX_SHA256_LENGTH = 64
_MAX_TIMESTAMP_DIGITS = 12  # Unix seconds; far beyond any date mintfax will sign


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[SecretStr],
    now: datetime,
) -> FaxEvent:
    """The event in `body` if mintfax signed it for one of `secrets` within `TOLERANCE` of `now`.

    `body` is the raw request body, `headers` the request headers (any case). Raises
    `WebhookRefused` with the HTTP status to answer: 413 for a body over `MAX_BODY_BYTES`, 401
    for missing or malformed signature headers, a timestamp outside the tolerance or no secret
    that matches, 400 for a body that is not a JSON object holding a mintfax event envelope.
    The refusal's `reason` is for the log; answer with a generic body.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(body) > MAX_BODY_BYTES:
        _refuse(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", TOO_LARGE)
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id: str | None = None
    if any(name in lowered for name in _B_HEADERS):
        webhook_id = _verify_generation_b(body, lowered, secrets, now)
    elif any(name in lowered for name in _A_HEADERS):
        _verify_generation_a(body, lowered, secrets, now)
    else:
        _refuse("no signature headers (neither X-Mintfax-Signature nor webhook-signature)")
    return parse_event(body, webhook_id=webhook_id)


def parse_event(body: bytes, *, webhook_id: str | None = None) -> FaxEvent:
    """Read either envelope into a `FaxEvent` (only after the signature was verified).

    A: `{event_id, event, timestamp (ISO 8601), data}`. B: `{id, type, created (Unix seconds),
    data: {object}}`, whose event id is `webhook-id` (equal to `id` by mintfax's rules).
    """
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        _refuse("body is not JSON", BAD_REQUEST)
    if not isinstance(payload, dict):
        _refuse(f"body is a JSON {type(payload).__name__}, not an object", BAD_REQUEST)
    try:
        if "event" in payload:
            a = _EnvelopeA.model_validate(payload)
            return FaxEvent(a.event_id, a.event, a.timestamp, a.data, payload)
        if "type" in payload:
            b = _EnvelopeB.model_validate(payload)
            event_id = webhook_id or b.id
            if not event_id:
                _refuse("generation B envelope without id or webhook-id", BAD_REQUEST)
            occurred_at = datetime.fromtimestamp(b.created, UTC)
            return FaxEvent(event_id, b.type, occurred_at, b.data.object, payload)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        _refuse(f"not a mintfax event envelope ({fields})", BAD_REQUEST)
    except (OverflowError, OSError, ValueError):
        _refuse("created is not a usable Unix time", BAD_REQUEST)
    _refuse("JSON object is neither envelope (no `event` nor `type`)", BAD_REQUEST)


class _EnvelopeA(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=255)
    event: str = Field(min_length=1, max_length=100)
    timestamp: AwareDatetime
    data: dict[str, Any]


class _ObjectB(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: dict[str, Any]


class _EnvelopeB(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=100)
    created: int = Field(ge=0)
    data: _ObjectB


def _verify_generation_a(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[SecretStr], now: datetime
) -> None:
    timestamp = _timestamp(headers.get("x-mintfax-timestamp"), "X-Mintfax-Timestamp", now)
    signature = headers.get("x-mintfax-signature", "").strip()
    if not signature:
        _refuse("X-Mintfax-Signature is missing")
    if len(signature) != _HEX_SHA256_LENGTH:
        _refuse("X-Mintfax-Signature is not a hex SHA-256 digest")
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        _refuse("X-Mintfax-Signature is not a hex SHA-256 digest")
    message = timestamp.encode("ascii") + b"." + body
    for secret in _configured(secrets):
        key = secret.get_secret_value().encode("utf-8")
        if hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), given):
            return
    _refuse(f"X-Mintfax-Signature matches none of the {len(secrets)} configured secret(s)")


def _verify_generation_b(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[SecretStr], now: datetime
) -> str:
    """Checks a Standard Webhooks request; returns its `webhook-id`."""
    msg_id = headers.get("webhook-id", "").strip()
    if not msg_id:
        _refuse("webhook-id is missing")
    timestamp = _timestamp(headers.get("webhook-timestamp"), "webhook-timestamp", now)
    given = _standard_signatures(headers.get("webhook-signature", ""))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        _refuse("body is not UTF-8, so not JSON", BAD_REQUEST)
    try:
        from standardwebhooks.webhooks import Webhook
    except ImportError:  # pragma: no cover - the [worker] extra brings it
        _refuse("generation B needs the standardwebhooks package (the [worker] extra)")
    signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    for secret in _configured(secrets):
        try:
            signer = Webhook(secret.get_secret_value())
        except Exception:  # noqa: S112 (a secret that is not base64 cannot sign generation B)
            continue
        expected = base64.b64decode(signer.sign(msg_id, signed_at, text).partition(",")[2])
        if any(hmac.compare_digest(expected, candidate) for candidate in given):
            return msg_id
    _refuse(f"webhook-signature matches none of the {len(secrets)} configured secret(s)")


def _standard_signatures(header: str) -> list[bytes]:
    """The `v1` signatures of a `webhook-signature` header (space separated `v1,<base64>`)."""
    found = []
    for token in header.split():
        version, _, value = token.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not found:
        _refuse("webhook-signature is missing or holds no v1 signature")
    return found


def _timestamp(value: str | None, header: str, now: datetime) -> str:
    """The header's value if it is Unix seconds within `TOLERANCE` of `now` (either side)."""
    if value is None or not value.strip():
        _refuse(f"{header} is missing")
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_TIMESTAMP_DIGITS:
        _refuse(f"{header} is not Unix seconds")
    age = now.timestamp() - int(value)
    if age > TOLERANCE.total_seconds():
        _refuse(f"{header} is {age:.0f} s old (tolerance {TOLERANCE.total_seconds():.0f} s)")
    if -age > TOLERANCE.total_seconds():
        _refuse(f"{header} is {-age:.0f} s ahead (tolerance {TOLERANCE.total_seconds():.0f} s)")
    return value


def _configured(secrets: Sequence[SecretStr]) -> list[SecretStr]:
    usable = [s for s in secrets if s.get_secret_value()]
    if not usable:
        _refuse("no webhook secret is configured (MINTFAX_WEBHOOK_SECRET)")
    return usable


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _refuse(reason: str, status: int = UNAUTHORIZED) -> NoReturn:
    raise WebhookRefused(reason, status)
