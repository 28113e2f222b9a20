"""Reading and checking what clients send: each reader returns plain values or raises a 422.

Every problem of a request is reported at once (`context.errors`, one list of messages per
field), as mintfax does, so a client sees all it must fix in one answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from starlette.requests import Request

from mintfax_sandbox import carrier, multipart
from mintfax_sandbox.errors import validation_error
from mintfax_sandbox.filetypes import document_kind
from mintfax_sandbox.records import EVENTS, FaxRequest

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_FORM_OVERHEAD = 64 * 1024  # the other fields and the part headers
MAX_KEY_LENGTH = 255
MAX_URL_LENGTH = 2048
DEFAULT_RETRIES = 3
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

Errors = dict[str, list[str]]
_T = TypeVar("_T")
_V = TypeVar("_V")


# --- POST /v1/fax --------------------------------------------------------------------------------


async def read_fax_request(request: Request, header_key: str | None) -> FaxRequest:
    """The multipart form of `POST /v1/fax`; the `Idempotency-Key` header beats the form field."""
    body = await _read_body(request, MAX_FILE_BYTES + MAX_FORM_OVERHEAD)
    if body is None:
        raise validation_error({"file": ["The file may not be larger than 10 MB."]})
    try:
        fields = multipart.parse(body, request.headers.get("content-type", ""))
    except multipart.MultipartError as exc:
        raise validation_error(
            {"file": [f"Send multipart/form-data with a file: {exc}."]}
        ) from None
    upload = fields.get("file")
    document = upload.data if upload is not None and upload.filename is not None else None
    form_key = _text_field(fields, "idempotency_key")
    key = header_key if header_key is not None else form_key

    errors: Errors = {}
    to = _check(errors, "to", _recipient, _text_field(fields, "to"))
    file_type = _check(errors, "file", _file_type, document)
    retries = _check(errors, "retries", _retries, _text_field(fields, "retries"))
    webhook_url = _check(errors, "webhook_url", _webhook_url, _text_field(fields, "webhook_url"))
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        errors["idempotency_key"] = ["The Idempotency-Key must be 1 to 255 characters."]
    if errors:
        raise validation_error(errors)
    assert to is not None and file_type is not None and retries is not None
    assert document is not None
    return FaxRequest(to, retries, webhook_url, key, document, file_type)


class _Invalid(ValueError):
    """One field's problem (its message is what the client reads)."""


def _check(errors: Errors, name: str, check: Callable[[_V], _T], value: _V) -> _T | None:
    try:
        return check(value)
    except _Invalid as problem:
        errors[name] = [str(problem)]
        return None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _text_field(fields: dict[str, multipart.Part], name: str) -> str | None:
    part = fields.get(name)
    return None if part is None or part.filename is not None else part.text()


def _recipient(to: str | None) -> str:
    if not to:
        raise _Invalid("The to field is required.")
    if not E164.match(to):
        raise _Invalid("The to field must be an E.164 number such as +12125550123.")
    if not carrier.is_magic(to):
        raise _Invalid(
            "The sandbox only accepts magic numbers +1500555XXXX "
            "(e.g. +15005550001 delivers); use a magic number."
        )
    if carrier.scenario_for(to).rejection == 422:
        raise _Invalid("The to field failed validation (sandbox validation scenario).")
    return to


def _file_type(document: bytes | None) -> str:
    if document is None:
        raise _Invalid("The file field is required.")
    if not document:
        raise _Invalid("The file is empty.")
    if len(document) > MAX_FILE_BYTES:
        raise _Invalid("The file may not be larger than 10 MB.")
    kind = document_kind(document)
    if kind is None:
        raise _Invalid("Unsupported file type: send PDF, DOCX, XLSX, JPG, PNG, TIFF, HTML or TXT.")
    return kind


def _retries(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_RETRIES
    try:
        retries = int(raw)
    except ValueError:
        retries = -1
    if not 0 <= retries <= 10:
        raise _Invalid("The retries field must be an integer between 0 and 10.")
    return retries


def _webhook_url(raw: str | None) -> str | None:
    if not raw:
        return None
    if not _is_http_url(raw):
        raise _Invalid("The webhook_url must be an http(s) URL (<= 2048 chars).")
    return raw


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and len(url) <= MAX_URL_LENGTH


# --- JSON bodies ---------------------------------------------------------------------------------


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise validation_error({"body": ["Send a JSON object."]})
    return body


def endpoint_fields(body: dict[str, Any]) -> tuple[str, list[str] | None, str | None]:
    """`url`, `events` and `description` of `POST /v1/account/webhooks`."""
    errors: Errors = {}
    url = body.get("url")
    if not isinstance(url, str) or not url:
        errors["url"] = ["The url field is required."]
    elif not _is_http_url(url):
        errors["url"] = ["The url must be an http(s) URL of at most 2048 characters."]
    events = body.get("events")
    if events is not None and (
        not isinstance(events, list) or not all(e in EVENTS for e in events)
    ):
        errors["events"] = [f"The events must be null or a list of: {', '.join(EVENTS)}."]
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 255):
        errors["description"] = ["The description must be a string of at most 255 chars."]
    if errors:
        raise validation_error(errors)
    assert isinstance(url, str)
    return url, events, description


def page_number(raw: str) -> int:
    """`GET /v1/fax?page=N`: a positive integer."""
    if not raw.isdigit() or int(raw) < 1:
        raise validation_error({"page": ["The page must be a positive integer."]})
    return int(raw)


def list_filters(idempotency_key: str | None, to: str | None) -> dict[str, str | None]:
    """`GET /v1/fax?idempotency_key=K&to=N`: exact matches; an empty value is refused."""
    errors: Errors = {}
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        errors["idempotency_key"] = ["The idempotency key must be 1 to 255 characters."]
    if to is not None and not to:
        errors["to"] = ["The number must not be empty."]
    if errors:
        raise validation_error(errors)
    return {"idempotency_key": idempotency_key, "to": to}


def balance_change(body: dict[str, Any]) -> tuple[str, int]:
    """`POST /sandbox/balance`: (`available` | `top_up`, cents)."""
    available, top_up = body.get("available"), body.get("top_up")
    if (available is None) == (top_up is None):
        raise validation_error({"body": ["Send exactly one of `available` or `top_up`."]})
    amount = available if available is not None else top_up
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise validation_error({"body": ["The amount must be a non-negative integer (cents)."]})
    return ("available" if available is not None else "top_up"), amount


def clock_advance(body: dict[str, Any]) -> float:
    """`POST /sandbox/clock`: a non-negative number of seconds."""
    seconds = body.get("advance_seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise validation_error({"advance_seconds": ["A non-negative number of seconds."]})
    return float(seconds)


_CONFIG_FIELDS: dict[str, tuple[type, float]] = {
    "rate_limit_per_minute": (int, 0),
    "time_scale": (float, 0.0),
    "price_per_page": (int, 0),
    "webhook_max_attempts": (int, 1),
    "webhook_timeout_seconds": (float, 0.001),
}


def config_changes(body: dict[str, Any]) -> dict[str, Any]:
    """`POST /sandbox/config`: the settings to change, each checked."""
    changes: dict[str, Any] = {}
    errors: Errors = {}
    for name, value in body.items():
        if name == "webhook_signing":
            if value not in ("a", "b"):
                errors[name] = ["Must be 'a' or 'b'."]
            changes[name] = value
        elif name in _CONFIG_FIELDS:
            kind, minimum = _CONFIG_FIELDS[name]
            ok_type = isinstance(value, int if kind is int else int | float)
            if not ok_type or isinstance(value, bool) or value < minimum:
                errors[name] = [f"Must be a number >= {minimum}."]
            else:
                changes[name] = kind(value)
        else:
            errors[name] = ["Unknown setting."]
    if errors:
        raise validation_error(errors)
    return changes
