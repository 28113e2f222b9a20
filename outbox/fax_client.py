"""A thin, typed client of the mintfax HTTP API (generation A: `fx_` keys, `POST /v1/fax`).

This is the one boundary where httpx and mintfax's answers become fax-outbox errors: every
network failure, status code and malformed body is translated here, once, into the
`MintfaxError` tree of `outbox.errors`, and nothing above this module sees an httpx exception.

    no connection (refused, DNS, connect timeout)    -> ConnectFailed       (nothing was sent)
    read error / timeout / reset / unusable 2xx body -> TransportError      (outcome unknown)
    5xx, unexpected 1xx                              -> ServerError         (outcome unknown)
    3xx, or a 4xx below without mintfax's envelope   -> UnexpectedResponse  (wrong URL, proxy)
    429                                              -> RateLimited(retry_after=...)
    402                                              -> InsufficientBalance
    401, 403                                         -> AuthenticationFailed
    409 idempotency_key_in_progress                  -> IdempotencyInProgress
    409 idempotency_key_reuse (and any other 409)    -> IdempotencyKeyReuse
    400, 404, 410, 413, 415, 422, any other 4xx      -> RequestRejected

A 2xx whose body we cannot read is a `TransportError`, not a success and not a rejection: for a
`POST /fax` the fax may well exist, so the outcome is unknown, exactly as after a connection
reset mid-response. Retrying is safe because every attempt of a fax carries the same
`Idempotency-Key`, which turns the retry into a replay of the stored response.

The client never retries (retries are data, see `outbox.retry`), follows no redirects, and has
timeouts on by default. The API key never appears in an exception, a repr or a log line: it is
sent through an `httpx.Auth` flow, scrubbed from any text that came back from the wire, and
exceptions are raised without chaining the httpx exception (whose text could hold a header).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, NoReturn, Self, TypeGuard
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from outbox.clock import Clock, SystemClock
from outbox.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    InsufficientBalance,
    MintfaxError,
    RateLimited,
    RequestRejected,
    ServerError,
    TransportError,
    UnexpectedResponse,
)
from outbox.filetypes import FileType, type_for_name
from outbox.keys import api_key_problem, idempotency_key_problem
from outbox.redaction import mask_number, mask_secret
from outbox.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

CONTENT_TYPES: dict[FileType, str] = {
    FileType.PDF: "application/pdf",
    FileType.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    FileType.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    FileType.JPG: "image/jpeg",
    FileType.PNG: "image/png",
    FileType.TIFF: "image/tiff",
    FileType.HTML: "text/html",
    FileType.TXT: "text/plain",
}

# mintfax's replay header name was cut from the docs; accept the spellings in use elsewhere.
_REPLAY_HEADERS = (
    "idempotent-replayed",
    "idempotency-replayed",
    "x-idempotent-replayed",
    "x-idempotency-replayed",
    "idempotency-replay",
    "x-idempotency-replay",
)
_TRUTHY = frozenset({"true", "1", "yes"})
# 4xx answers that only mean "this fax is refused" when mintfax itself said so. 401/403, 402,
# 409 and 429 are read without an envelope too: each already stops or slows the whole fleet.
_ENVELOPE_REQUIRED = frozenset(range(400, 500)) - {401, 402, 403, 409, 429}
_BODY_EXCERPT_CHARS = 200
# Keys an API could plausibly echo in a listing; never handed to callers that print listings.
_SECRET_FIELDS = frozenset({"signing_secret", "secret"})


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """mintfax accepted the fax (201), or replayed an earlier acceptance of the same key."""

    fax_id: str
    status: str
    status_code: int
    request_id: str | None
    replayed: bool
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Balance:
    """Prepaid credit in cents; `available` already has the holds subtracted."""

    available: int
    held: int


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """mintfax's `X-RateLimit-*` headers from the latest response (None where absent)."""

    limit: int | None
    remaining: int | None
    reset_seconds: float | None
    observed_at: datetime


class _BearerAuth(httpx.Auth):
    """Adds `Authorization: Bearer <key>` per request, reading the key each time (rotation)."""

    def __init__(self, key: Callable[[], SecretStr]) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key().get_secret_value()}"
        yield request


class MintfaxClient:
    """Synchronous mintfax API client (Celery prefork workers call it from plain functions).

    `base_url` includes the version prefix (`https://api.mintfax.com/v1`). `api_key` may be a
    callable returning the key, called for every request, so a key file replaced in place is
    picked up without a restart. `transport` is for tests (`httpx.MockTransport`); `clock` and
    `retry_policy` only shape how a 429's `Retry-After` is read.

    After each response, `last_rate_limit` holds mintfax's rate-limit headers, for status, and
    `on_rate_limit` (if given) is called with them: the fleet follows mintfax's own limit
    through it (`outbox.provider_limit`). It runs before the answer is returned or raised;
    whatever it raises is logged by type and swallowed, as an answer must never be lost to it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | Callable[[], SecretStr],
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "fax-outbox/0.1",
        clock: Clock | None = None,
        retry_policy: RetryPolicy | None = None,
        on_rate_limit: Callable[[RateLimitInfo], None] | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError("MINTFAX_BASE_URL", "must be an http:// or https:// URL")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self._base_url = str(url).rstrip("/")
        self._key_provider: Callable[[], SecretStr] = (
            (lambda: api_key) if isinstance(api_key, SecretStr) else api_key
        )
        self._clock: Clock = clock or SystemClock()
        self._policy = retry_policy or RetryPolicy()
        self.last_rate_limit: RateLimitInfo | None = None
        self._on_rate_limit = on_rate_limit
        self._http = httpx.Client(
            base_url=self._base_url + "/",
            auth=_BearerAuth(self._checked_key),
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": user_agent, "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"MintfaxClient(base_url={self._base_url!r})"

    @property
    def base_url(self) -> str:
        return self._base_url

    # -- endpoints ---------------------------------------------------------------------------

    def send_fax(
        self,
        *,
        to: str,
        document: bytes,
        filename: str,
        idempotency_key: str,
        retries: int,
        webhook_url: str | None = None,
    ) -> SubmitResult:
        """Submit one fax: `POST /fax` as multipart, with the row's idempotency key.

        Every attempt of one logical fax must pass the same `idempotency_key`; that is what
        makes a retry after an unknown outcome a replay instead of a second fax. `retries` is
        mintfax's own carrier retry count (0-10), unrelated to our submission attempts.
        """
        key_problem = idempotency_key_problem(idempotency_key)
        if key_problem is not None:
            raise ValueError(f"idempotency_key {key_problem}")
        fields = {"to": to, "retries": str(retries)}
        if webhook_url is not None:
            fields["webhook_url"] = webhook_url
        # By name, not content: the worker has already checked that the two agree.
        file_type = type_for_name(filename)
        content_type = "application/octet-stream" if file_type is None else CONTENT_TYPES[file_type]
        started = time.perf_counter()
        response = self._request(
            "POST",
            "fax",
            data=fields,
            files={"file": (filename, document, content_type)},
            headers={"Idempotency-Key": idempotency_key},
            # Built only when it will be logged: masking a number is not free.
            log_extra=(
                f"to={mask_number(to)} key={idempotency_key}"
                if logger.isEnabledFor(logging.DEBUG)
                else ""
            ),
        )
        duration_ms = round((time.perf_counter() - started) * 1000)
        body = self._json_object(response)
        fax_id = body.get("id")
        status = body.get("status", "queued")
        if not isinstance(fax_id, str) or not fax_id or not isinstance(status, str):
            self._unusable_success(response, "has no fax id")
        return SubmitResult(
            fax_id=fax_id,
            status=status,
            status_code=response.status_code,
            request_id=self._request_id(response, body),
            replayed=_is_replay(response.headers),
            duration_ms=duration_ms,
        )

    def get_fax(self, fax_id: str) -> dict[str, Any]:
        """The fax resource as mintfax reports it now (`GET /fax/{id}`), for status polling."""
        return self._json_object(self._request("GET", f"fax/{_path_segment(fax_id)}"))

    def find_faxes(
        self,
        *,
        idempotency_key: str | None = None,
        to: str | None = None,
        max_pages: int = 50,
    ) -> list[dict[str, Any]]:
        """The faxes mintfax lists (`GET /fax?page=N`) with this `idempotency_key` and/or
        recipient `to`, newest first, for resolving an unknown outcome (issue 9, item 3).

        The filters are sent as query parameters and applied again here on each item, so a
        list endpoint that ignores them still answers only matches. Pages are read while
        mintfax says `has_more`, up to `max_pages` (20 faxes each); more than that raises
        `TransportError` rather than answer "no such fax" on a partial reading.
        """
        if idempotency_key is None and to is None:
            raise ValueError("find_faxes needs idempotency_key or to")
        params = {
            name: value
            for name, value in (("idempotency_key", idempotency_key), ("to", to))
            if value is not None
        }
        found: list[dict[str, Any]] = []
        for page in range(1, max_pages + 1):
            response = self._request("GET", "fax", params={**params, "page": page})
            body = self._json(response)
            items = body.get("data") if isinstance(body, dict) else body
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                self._unusable_success(response, "is not a list of faxes")
            found += [
                item
                for item in items
                if all(item.get(name) == value for name, value in params.items())
            ]
            if not (isinstance(body, dict) and body.get("has_more") is True and items):
                return found
        raise TransportError(
            f"GET /fax listed more than {max_pages} pages of matches; the lookup is incomplete"
        )

    def delete_fax(self, fax_id: str) -> None:
        """Ask mintfax to delete its copy of a final fax early (`DELETE /fax/{id}`, retention).

        Any 2xx is success, whatever its body (mintfax documents none). Raises as every call
        does: a 404 or 410 (`RequestRejected`) means mintfax holds no copy; a 409 means the fax
        is not final there yet (generation B allows deletion only then).
        """
        self._request("DELETE", f"fax/{_path_segment(fax_id)}")

    def get_balance(self) -> Balance:
        """The environment's prepaid balance (`GET /account/balance`), in cents."""
        response = self._request("GET", "account/balance")
        body = self._json_object(response)
        available, held = body.get("available"), body.get("held")
        if _is_int(available) and _is_int(held):
            return Balance(available=available, held=held)
        self._unusable_success(response, "has no integer available/held")

    def create_webhook(
        self,
        url: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
    ) -> tuple[dict[str, Any], SecretStr]:
        """Register a webhook endpoint (`POST /account/webhooks`).

        Returns the endpoint and its signing secret, which mintfax shows only this once; the
        secret comes back as a `SecretStr` so it cannot be printed by accident. `events=None`
        subscribes to every event.
        """
        payload: dict[str, Any] = {"url": url}
        if events is not None:
            payload["events"] = list(events)
        if description is not None:
            payload["description"] = description
        response = self._request("POST", "account/webhooks", json=payload)
        body = self._json_object(response)
        data, secret = body.get("data"), body.get("signing_secret")
        if not isinstance(data, dict) or not isinstance(secret, str) or not secret:
            self._unusable_success(response, "has no endpoint data or signing secret")
        return _without_secrets(data), SecretStr(secret)

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The registered webhook endpoints (`GET /account/webhooks`), without any secrets.

        Accepts a bare list or the `{"data": [...]}` envelope.
        """
        response = self._request("GET", "account/webhooks")
        body = self._json(response)
        items = body.get("data") if isinstance(body, dict) else body
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            self._unusable_success(response, "is not a list of endpoints")
        return [_without_secrets(item) for item in items]

    def delete_webhook(self, endpoint_id: str) -> None:
        """Remove a webhook endpoint (`DELETE /account/webhooks/{id}`)."""
        self._request("DELETE", f"account/webhooks/{_path_segment(endpoint_id)}")

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _checked_key(self) -> SecretStr:
        key = self._key_provider()
        if isinstance(key, str):  # a plain str from a lax callable still works, still hidden
            key = SecretStr(key)
        problem = api_key_problem(key.get_secret_value())
        if problem is not None:
            raise ConfigurationError("MINTFAX_API_KEY", problem)
        return key

    def _scrub(self, text: str) -> str:
        """`text` with the current API key masked, for anything that came off the wire."""
        try:
            key = self._key_provider()
        except Exception:  # a key file gone missing must not hide the original error
            return text
        secret = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
        return text.replace(secret, mask_secret(secret)) if secret else text

    def _request(
        self,
        method: str,
        path: str,
        *,
        log_extra: str = "",
        **kwargs: Any,
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            request = self._http.build_request(method, path, **kwargs)
            # Buffer the body: a multipart body otherwise leaves in a dozen small writes (one
            # syscall each), which cost more CPU than the rest of the request (bench/drain.py).
            request.read()
            response = self._http.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._raise_transport(method, path, "could not connect", exc, ConnectFailed)
        except httpx.TimeoutException as exc:
            self._raise_transport(method, path, "timed out", exc)
        except httpx.RequestError as exc:
            self._raise_transport(method, path, "failed", exc)
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        self._note_rate_limit(response.headers)
        request_id = self._request_id(response, {})
        logger.debug(
            "mintfax %s /%s -> %s in %d ms request_id=%s %s",
            method,
            path,
            response.status_code,
            elapsed_ms,
            request_id,
            log_extra,
            extra={
                "action": "mintfax.response",
                "http_status": response.status_code,
                "duration_ms": elapsed_ms,
                "request_id": request_id,
            },
        )
        if not response.is_success:
            error = self._error_from(response)
            logger.info(
                "mintfax %s /%s refused: %s %s (%s) request_id=%s",
                method,
                path,
                response.status_code,
                error.error,
                type(error).__name__,
                error.request_id,
                extra={
                    "action": "mintfax.refused",
                    "http_status": response.status_code,
                    "error_code": error.error,
                    "request_id": error.request_id,
                },
            )
            raise error
        return response

    def _raise_transport(
        self,
        method: str,
        path: str,
        what: str,
        exc: Exception,
        kind: type[TransportError] = TransportError,
    ) -> NoReturn:
        detail = self._scrub(str(exc)) or type(exc).__name__
        where = httpx.URL(f"{self._base_url}/{path}").copy_with(userinfo=b"", query=None)
        message = f"{method} {where} {what}: {type(exc).__name__}: {detail}"
        logger.info("mintfax %s", message, extra={"action": "mintfax.transport_error"})
        # `from None`: the httpx exception's text or args could hold request headers.
        raise kind(message) from None

    def _error_from(self, response: httpx.Response) -> MintfaxError:
        status = response.status_code
        body = _parse_json(response)
        envelope = body if isinstance(body, dict) else {}
        code, message, action = _error_fields(envelope)
        context = envelope.get("context")
        context = self._scrub_json(context) if isinstance(context, dict) else {}
        if not envelope:
            excerpt = _body_excerpt(response)
            if excerpt:
                context = {"body_excerpt": self._scrub(excerpt)}
        if message is None:
            message = f"mintfax answered HTTP {status} {response.reason_phrase}".rstrip()
            if 300 <= status < 400 and "location" in response.headers:
                message += f" (redirect to {response.headers['location']}; check the base URL)"
        fields: dict[str, Any] = {
            "status_code": status,
            "error": self._scrub(code) if code else None,
            "action": self._scrub(action) if action else None,
            "context": context,
            "request_id": self._request_id(response, envelope),
        }
        message = self._scrub(message)
        if code is None and (300 <= status < 400 or status in _ENVELOPE_REQUIRED):
            # Not mintfax's own refusal: something in front of it (or the wrong host) answered.
            request = response.request
            where = request.url.copy_with(userinfo=b"", query=None)
            redirect = response.headers.get("location") if 300 <= status < 400 else None
            return UnexpectedResponse(
                f"{request.method} {where} answered HTTP {status} without mintfax's error "
                + (f"envelope (redirect to {self._scrub(redirect)})" if redirect else "envelope")
                + ": check MINTFAX_BASE_URL (it must end in /v1) and any proxy in between",
                **fields,
            )
        if status == 429:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), self._response_time(response), self._policy
            )
            return RateLimited(message, retry_after=retry_after, **fields)
        if status == 402:
            return InsufficientBalance(message, **fields)
        if status in (401, 403):
            return AuthenticationFailed(message, **fields)
        if status == 409:
            if code == "idempotency_key_in_progress":
                return IdempotencyInProgress(message, **fields)
            return IdempotencyKeyReuse(message, **fields)
        if 400 <= status < 500:
            return RequestRejected(message, **fields)
        return ServerError(message, **fields)

    def _unusable_success(self, response: httpx.Response, what: str) -> NoReturn:
        """A 2xx we cannot use: the outcome is unknown, so it is retried like a lost reply."""
        request = response.request
        message = (
            f"{request.method} {request.url.path} answered {response.status_code} "
            f"but the body {what}; outcome unknown"
        )
        logger.warning(
            "mintfax %s",
            message,
            extra={"action": "mintfax.unusable_answer", "http_status": response.status_code},
        )
        # No body excerpt: a success body may hold a secret (a webhook's signing_secret).
        raise TransportError(
            message,
            status_code=response.status_code,
            request_id=self._request_id(response, {}),
        )

    def _json(self, response: httpx.Response) -> Any:
        body = _parse_json(response)
        if body is _NOT_JSON:
            self._unusable_success(response, "is not JSON")
        return body

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        body = self._json(response)
        if not isinstance(body, dict):
            self._unusable_success(response, "is not a JSON object")
        return body

    def _request_id(self, response: httpx.Response, body: Mapping[str, Any]) -> str | None:
        # Scrubbed like every other text off the wire: it is stored, logged and shown, and a
        # proxy or a broken server could put anything in it, the request's own key included.
        request_id = _raw_request_id(response, body)
        return None if request_id is None else self._scrub(request_id)

    def _scrub_json(self, value: dict[str, Any]) -> dict[str, Any]:
        scrubbed = json.loads(self._scrub(json.dumps(value)))
        return scrubbed if isinstance(scrubbed, dict) else {}

    def _response_time(self, response: httpx.Response) -> datetime:
        # An HTTP-date Retry-After is relative to the server's clock: use its Date when sane.
        date = response.headers.get("date")
        if date:
            try:
                parsed = parsedate_to_datetime(date)
            except (TypeError, ValueError, IndexError, OverflowError):
                parsed = None
            if parsed is not None:
                return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        return self._clock.now()

    def _note_rate_limit(self, headers: httpx.Headers) -> None:
        names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
        if not any(name in headers for name in names):
            return
        info = RateLimitInfo(
            limit=_int_header(headers, "x-ratelimit-limit"),
            remaining=_int_header(headers, "x-ratelimit-remaining"),
            reset_seconds=_float_header(headers, "x-ratelimit-reset"),
            observed_at=self._clock.now(),
        )
        self.last_rate_limit = info
        if self._on_rate_limit is not None:
            try:
                self._on_rate_limit(info)
            except Exception as exc:  # the answer (a 201 above all) matters more than the hook
                logger.warning(
                    "rate-limit hook failed: %s",
                    type(exc).__name__,
                    extra={"action": "mintfax.rate_limit_hook_failed"},
                )


_NOT_JSON = object()


def _parse_json(response: httpx.Response) -> Any:
    if not response.content:
        return _NOT_JSON
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _error_fields(envelope: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(error, message, action) from mintfax's envelope; tolerates `error` as a nested object."""
    error = envelope.get("error")
    source: Mapping[str, Any] = envelope
    if isinstance(error, Mapping):
        source = error
        error = error.get("code") or error.get("type")
    message, action = source.get("message"), source.get("action", envelope.get("action"))
    return (
        error if isinstance(error, str) and error else None,
        message if isinstance(message, str) and message else None,
        action if isinstance(action, str) and action else None,
    )


def _raw_request_id(response: httpx.Response, body: Mapping[str, Any]) -> str | None:
    value = body.get("request_id")
    if isinstance(value, str) and value:
        return value
    return response.headers.get("x-request-id") or None


def _is_replay(headers: httpx.Headers) -> bool:
    return any(headers.get(name, "").strip().lower() in _TRUTHY for name in _REPLAY_HEADERS)


def _body_excerpt(response: httpx.Response) -> str:
    text = response.content[: _BODY_EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return " ".join(text.split())[:_BODY_EXCERPT_CHARS]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _float_header(headers: httpx.Headers, name: str) -> float | None:
    try:
        value = float(headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _path_segment(value: str) -> str:
    # Ids go into the path: refuse what would change the path rather than name a resource.
    if not value or value in (".", ".."):
        raise ValueError(f"not a valid resource id: {value!r}")
    return quote(value, safe="")


def _without_secrets(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in _SECRET_FIELDS}
