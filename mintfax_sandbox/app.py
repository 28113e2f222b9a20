"""The sandbox's HTTP surface: mintfax generation A under `/v1`, inspection under `/sandbox`.

`ApiGate` (plain ASGI, cheap enough not to weigh on throughput) gives every response an
`X-Request-Id`, and every `/v1` request bearer auth, the per-key rate limit with its headers,
request counters and, with `all_endpoints` faults, the non-create faults. Handlers raise `ApiError`
for the error envelope `{error, message, action, docs, context, request_id}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mintfax_sandbox import carrier, multipart
from mintfax_sandbox.faults import Fault, FaultConfig, FaultSpecError, reset_transport
from mintfax_sandbox.filetypes import document_kind
from mintfax_sandbox.state import EVENTS, IdempotencyEntry, Sandbox, SandboxConfig, iso

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_FORM_OVERHEAD = 64 * 1024  # the other fields and the part headers
MAX_KEY_LENGTH = 255
PAGE_SIZE = 20
DEFAULT_RETRIES = 3
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
TEST_KEY_PREFIX = "fx_test_"
LIVE_KEY_PREFIX = "fx_live_"
CTX = "sandbox.ctx"


@dataclass(slots=True)
class RequestContext:
    """Per-request facts the gate and handlers share through the ASGI scope."""

    request_id: str
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    outcome: str | None = None
    arrival: dict[str, Any] | None = None


class ApiError(Exception):
    """An error answered with mintfax's envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        action: str,
        context: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.action = action
        self.context = context or {}
        self.headers = headers or {}


def validation_error(errors: dict[str, list[str]]) -> ApiError:
    """422 `validation_failed` with the messages per field in `context.errors`."""
    first = next(iter(errors.values()))[0]
    return ApiError(422, "validation_failed", first, "fix_request", {"errors": errors})


def envelope(error: ApiError, request_id: str) -> bytes:
    return json.dumps(
        {
            "error": error.code,
            "message": error.message,
            "action": error.action,
            "docs": f"https://mintfax.com/docs/errors/{error.code.replace('_', '-')}",
            "context": error.context,
            "request_id": request_id,
        }
    ).encode()


def error_response(error: ApiError, request_id: str) -> Response:
    return Response(
        envelope(error, request_id),
        error.status,
        headers=error.headers,
        media_type="application/json",
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data).encode(), status, headers=headers, media_type="application/json"
    )


def _ctx(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope[CTX]
    return ctx


def _route_label(method: str, path: str) -> str:
    parts = path.rstrip("/").split("/")[2:]  # drop "" and "v1"
    if parts == ["fax"]:
        return f"{method} /v1/fax"
    if len(parts) == 2 and parts[0] == "fax":
        return f"{method} /v1/fax/{{id}}"
    if parts[:2] == ["account", "webhooks"]:
        return f"{method} /v1/account/webhooks" + ("/{id}" if len(parts) > 2 else "")
    if parts == ["account", "balance"]:
        return f"{method} /v1/account/balance"
    return f"{method} (other)"


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class DropConnection(Response):
    """Not a response: resets the client's connection (fault injection)."""

    def __init__(self, sandbox: Sandbox, outcome: str) -> None:
        super().__init__()
        self._sandbox = sandbox
        self._outcome = outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext = scope[CTX]
        transport = self._sandbox.transports.get(scope.get("client"))
        if transport is None:
            # Served by a plain server without our protocol class: say so rather than hang.
            error = ApiError(
                500,
                "sandbox_fault_unsupported",
                "Connection faults need `faxout sandbox`.",
                "run_sandbox_server",
            )
            await error_response(error, ctx.request_id)(scope, receive, send)
            return
        ctx.outcome = self._outcome
        reset_transport(transport)
        while (await receive())["type"] != "http.disconnect":
            pass


class ApiGate:
    """Auth, rate limit, request ids and counters around the whole app (plain ASGI)."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id="req_" + secrets.token_hex(12))
        scope[CTX] = ctx
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ctx.request_id.encode())]
        status: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        path: str = scope["path"]
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send_with_headers)
            return
        sandbox = self.sandbox
        sandbox.stats.requests_by_path[_route_label(scope["method"], path)] += 1
        try:
            await self._gated(scope, receive, send_with_headers, ctx, extra)
        finally:
            outcome = str(status[0]) if status else (ctx.outcome or "no_response")
            sandbox.stats.requests_by_status[outcome] += 1
            if ctx.arrival is not None:
                ctx.arrival["status"] = outcome

    async def _gated(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        key = _bearer(scope)
        refusal: ApiError | None = None
        if key is None or not key.startswith(TEST_KEY_PREFIX) or len(key) == len(TEST_KEY_PREFIX):
            live = key is not None and key.startswith(LIVE_KEY_PREFIX)
            refusal = ApiError(
                401,
                "unauthenticated",
                "The sandbox accepts only fx_test_ keys; it never delivers live faxes."
                if live
                else "Missing or invalid bearer token: send `Authorization: Bearer fx_test_...`.",
                "check_api_key",
            )
        else:
            decision = self.sandbox.limiter.acquire(key)
            if decision is not None:
                extra.extend(decision.headers())
                if not decision.allowed:
                    refusal = ApiError(
                        429,
                        "rate_limit_exceeded",
                        f"Rate limit of {decision.limit} requests per minute exceeded; "
                        f"retry after {decision.retry_after} s.",
                        "wait_and_retry",
                    )
        if refusal is not None:
            await error_response(refusal, ctx.request_id)(scope, receive, send)
            return
        ctx.api_key = key
        faults = self.sandbox.faults
        creating = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/fax"
        if faults.config.all_endpoints and not creating:
            fault = faults.draw()
            delay = faults.latency()
            if delay:
                await asyncio.sleep(delay)
            if fault in (Fault.RESET, Fault.COMMIT_THEN_DROP):
                await DropConnection(self.sandbox, "reset")(scope, receive, send)
                return
            if fault in (Fault.ERROR_500, Fault.ERROR_503):
                await error_response(_server_error(fault), ctx.request_id)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _server_error(fault: Fault) -> ApiError:
    if fault is Fault.ERROR_503:
        return ApiError(
            503,
            "service_unavailable",
            "mintfax is temporarily unavailable.",
            "retry_later",
            headers={"Retry-After": "1"},
        )
    return ApiError(500, "internal_error", "An unexpected error occurred.", "retry_later")


# --- /v1 handlers ------------------------------------------------------------------------------


@dataclass(slots=True)
class Submission:
    to: str
    retries: int
    webhook_url: str | None
    key: str | None
    document: bytes
    file_type: str


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


def _field(fields: dict[str, multipart.Part], name: str) -> str | None:
    part = fields.get(name)
    return None if part is None or part.filename is not None else part.text()


async def _read_submission(request: Request, header_key: str | None) -> Submission:
    errors: dict[str, list[str]] = {}
    body = await _read_body(request, MAX_FILE_BYTES + MAX_FORM_OVERHEAD)
    if body is None:
        raise validation_error({"file": ["The file may not be larger than 10 MB."]})
    try:
        fields = multipart.parse(body, request.headers.get("content-type", ""))
    except multipart.MultipartError as exc:
        raise validation_error(
            {"file": [f"Send multipart/form-data with a file: {exc}."]}
        ) from None
    to = _field(fields, "to")
    raw_retries = _field(fields, "retries")
    raw_url = _field(fields, "webhook_url")
    form_key = _field(fields, "idempotency_key")
    upload = fields.get("file")
    document = upload.data if upload is not None and upload.filename is not None else None

    if not isinstance(to, str) or not to:
        errors["to"] = ["The to field is required."]
    elif not E164.match(to):
        errors["to"] = ["The to field must be an E.164 number such as +12125550123."]
    elif not carrier.is_magic(to):
        errors["to"] = [
            "The sandbox only accepts magic numbers +1500555XXXX "
            "(e.g. +15005550001 delivers); use a magic number."
        ]
    elif carrier.scenario_for(to).rejection == 422:
        errors["to"] = ["The to field failed validation (sandbox validation scenario)."]

    file_type = None
    if document is None:
        errors["file"] = ["The file field is required."]
    elif not document:
        errors["file"] = ["The file is empty."]
    elif len(document) > MAX_FILE_BYTES:
        errors["file"] = ["The file may not be larger than 10 MB."]
    else:
        file_type = document_kind(document)
        if file_type is None:
            errors["file"] = [
                "Unsupported file type: send PDF, DOCX, XLSX, JPG, PNG, TIFF, HTML or TXT."
            ]

    retries = DEFAULT_RETRIES
    if raw_retries not in (None, ""):
        try:
            retries = int(str(raw_retries))
        except ValueError:
            retries = -1
        if not 0 <= retries <= 10:
            errors["retries"] = ["The retries field must be an integer between 0 and 10."]

    webhook_url = raw_url if isinstance(raw_url, str) and raw_url else None
    if webhook_url is not None:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(webhook_url) > 2048:
            errors["webhook_url"] = ["The webhook_url must be an http(s) URL (<= 2048 chars)."]

    key = header_key
    if key is None and isinstance(form_key, str):
        key = form_key
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        errors["idempotency_key"] = ["The Idempotency-Key must be 1 to 255 characters."]

    if errors:
        raise validation_error(errors)
    assert isinstance(to, str)
    assert document is not None
    assert file_type is not None
    return Submission(to, retries, webhook_url, key, document, file_type)


def _fingerprint(s: Submission) -> bytes:
    digest = hashlib.sha256()
    for part in (s.to, str(s.retries), s.webhook_url or ""):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(s.document)
    return digest.digest()


def _insufficient(sandbox: Sandbox, required: int) -> ApiError:
    return ApiError(
        402,
        "insufficient_balance",
        "Your available balance cannot cover this fax; top up and retry.",
        "top_up_balance",
        {"available": sandbox.account.available, "required": required},
    )


def api_routes(sandbox: Sandbox) -> list[Route]:
    """The generation-A endpoints under `/v1`."""

    async def create_fax(request: Request) -> Response:
        header_key = request.headers.get("idempotency-key")
        try:
            return await _create_fax(request, header_key)
        except ApiError as error:
            # mintfax echoes the key on every answer to a request that carried one.
            if header_key is not None and len(header_key) <= MAX_KEY_LENGTH:
                error.headers.setdefault("X-Idempotency-Key", header_key)
            raise

    async def _create_fax(request: Request, header_key: str | None) -> Response:
        ctx = _ctx(request)
        sandbox.note_submission(header_key)
        ctx.arrival = sandbox.log_arrival(header_key)
        fault = sandbox.faults.draw()
        delay = sandbox.faults.latency()
        if fault is Fault.RESET:
            return DropConnection(sandbox, "reset")
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            raise _server_error(fault)

        sub = await _read_submission(request, header_key)
        fingerprint = _fingerprint(sub)
        key_headers = {"X-Idempotency-Key": sub.key} if sub.key is not None else {}
        if sub.key is not None:
            entry = sandbox.live_entry(sub.key)
            if entry is not None:
                if entry.fingerprint != fingerprint:
                    raise ApiError(
                        409,
                        "idempotency_key_reuse",
                        "This Idempotency-Key was already used with a different request body.",
                        "use_new_idempotency_key",
                        headers=key_headers,
                    )
                if entry.response is None:
                    raise ApiError(
                        409,
                        "idempotency_key_in_progress",
                        "A request with this Idempotency-Key is still being processed.",
                        "retry_later",
                        headers={**key_headers, "Retry-After": "1"},
                    )
                sandbox.stats.idempotent_replays += 1
                return Response(
                    entry.response,
                    201,
                    headers={**key_headers, "Idempotent-Replayed": "true"},
                    media_type="application/json",
                )

        scenario = carrier.scenario_for(sub.to)
        hold = scenario.pages * sandbox.config.price_per_page
        if scenario.rejection == 402:
            raise _insufficient(sandbox, hold)
        entry = None
        if sub.key is not None:
            entry = sandbox.idempotency[sub.key] = _new_entry(sandbox, fingerprint)
        try:
            if delay:
                await asyncio.sleep(delay)  # processing time: the key is "in progress"
            if not sandbox.place_hold(hold):
                raise _insufficient(sandbox, hold)
            fax = sandbox.create_fax(
                to=sub.to,
                key=sub.key,
                retries=sub.retries,
                webhook_url=sub.webhook_url,
                file_type=sub.file_type,
                file_size=len(sub.document),
                fingerprint=fingerprint,
                hold=hold,
                scenario=scenario,
            )
        except BaseException:
            # Nothing was created: the key is free again (a 402 can be retried after a top-up).
            if sub.key is not None and sandbox.idempotency.get(sub.key) is entry:
                del sandbox.idempotency[sub.key]
            raise
        body = json.dumps(
            {"id": fax.id, "status": "queued", "to": fax.to, "created_at": iso(fax.created_at)}
        ).encode()
        if entry is not None:
            entry.fax_id = fax.id
            entry.response = body
        if fault is Fault.COMMIT_THEN_DROP:
            return DropConnection(sandbox, "dropped")
        return Response(body, 201, headers=key_headers, media_type="application/json")

    async def get_fax(request: Request) -> Response:
        fax = sandbox.faxes.get(request.path_params["fax_id"])
        if fax is None:
            raise ApiError(404, "not_found", "No fax with this id.", "check_fax_id")
        return json_response(fax.as_api())

    async def list_faxes(request: Request) -> Response:
        raw = request.query_params.get("page", "1")
        if not raw.isdigit() or int(raw) < 1:
            raise validation_error({"page": ["The page must be a positive integer."]})
        page = int(raw)
        ids = sandbox.fax_order[::-1][(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        total = len(sandbox.fax_order)
        return json_response(
            {
                "data": [sandbox.faxes[i].as_api() for i in ids],
                "page": page,
                "per_page": PAGE_SIZE,
                "total": total,
                "has_more": page * PAGE_SIZE < total,
            }
        )

    async def balance(request: Request) -> Response:
        return json_response({"available": sandbox.account.available, "held": sandbox.account.held})

    async def create_webhook(request: Request) -> Response:
        body = await _json_object(request)
        errors: dict[str, list[str]] = {}
        url = body.get("url")
        if not isinstance(url, str) or not url:
            errors["url"] = ["The url field is required."]
        else:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
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
        endpoint = sandbox.register_endpoint(url, events, description)
        return json_response(
            {"data": endpoint.as_api(), "signing_secret": endpoint.secret}, status=201
        )

    async def list_webhooks(request: Request) -> Response:
        return json_response({"data": [e.as_api() for e in sandbox.endpoints.values()]})

    async def delete_webhook(request: Request) -> Response:
        if sandbox.endpoints.pop(request.path_params["endpoint_id"], None) is None:
            raise ApiError(404, "not_found", "No webhook endpoint with this id.", "check_id")
        return Response(status_code=204)

    return [
        Route("/v1/fax", create_fax, methods=["POST"]),
        Route("/v1/fax", list_faxes, methods=["GET"]),
        Route("/v1/fax/{fax_id}", get_fax, methods=["GET"]),
        Route("/v1/account/balance", balance, methods=["GET"]),
        Route("/v1/account/webhooks", create_webhook, methods=["POST"]),
        Route("/v1/account/webhooks", list_webhooks, methods=["GET"]),
        Route("/v1/account/webhooks/{endpoint_id}", delete_webhook, methods=["DELETE"]),
    ]


def _new_entry(sandbox: Sandbox, fingerprint: bytes) -> IdempotencyEntry:
    return IdempotencyEntry(fingerprint=fingerprint, created_at=sandbox.clock.now())


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise validation_error({"body": ["Send a JSON object."]})
    return body


# --- /sandbox control plane --------------------------------------------------------------------


def control_routes(sandbox: Sandbox) -> list[Route]:
    """Inspection and control: no auth, only ever mounted by the simulator itself."""

    async def faxes(request: Request) -> Response:
        rows = [sandbox.faxes[i].as_inspection() for i in sandbox.fax_order]
        return json_response({"data": rows})

    async def stats(request: Request) -> Response:
        return json_response(sandbox.stats.as_json())

    async def requests_log(request: Request) -> Response:
        return json_response({"data": list(sandbox.requests)})

    async def webhooks_log(request: Request) -> Response:
        return json_response({"data": sandbox.webhook_log()})

    async def webhook_secret(request: Request) -> Response:
        return json_response({"signing_secret": sandbox.account_secret})

    async def set_balance(request: Request) -> Response:
        body = await _json_object(request)
        available, top_up = body.get("available"), body.get("top_up")
        if (available is None) == (top_up is None):
            raise validation_error({"body": ["Send exactly one of `available` or `top_up`."]})
        amount = available if available is not None else top_up
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise validation_error({"body": ["The amount must be a non-negative integer (cents)."]})
        if available is not None:
            sandbox.set_balance(amount)
        else:
            sandbox.top_up(amount)
        return json_response({"available": sandbox.account.available, "held": sandbox.account.held})

    async def set_faults(request: Request) -> Response:
        body = await _json_object(request)
        try:
            config = FaultConfig.from_mapping(body)
        except FaultSpecError as exc:
            raise validation_error({"faults": [str(exc)]}) from None
        sandbox.reconfigure(faults=config)
        return json_response(config.as_json())

    async def get_faults(request: Request) -> Response:
        return json_response(sandbox.config.faults.as_json())

    async def config(request: Request) -> Response:
        if request.method == "POST":
            sandbox.reconfigure(**_config_changes(await _json_object(request)))
        c = sandbox.config
        return json_response(
            {
                "rate_limit_per_minute": c.rate_limit_per_minute,
                "time_scale": c.time_scale,
                "webhook_signing": c.webhook_signing,
                "price_per_page": c.price_per_page,
                "webhook_max_attempts": c.webhook_max_attempts,
                "webhook_timeout_seconds": c.webhook_timeout_seconds,
                "faults": c.faults.as_json(),
            }
        )

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            body = await _json_object(request)
            seconds = body.get("advance_seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise validation_error({"advance_seconds": ["A non-negative number of seconds."]})
            sandbox.clock.advance(float(seconds))
        return json_response({"now": iso(sandbox.clock.now())})

    async def reset(request: Request) -> Response:
        await sandbox.reset()
        return json_response({"reset": True})

    return [
        Route("/sandbox/faxes", faxes, methods=["GET"]),
        Route("/sandbox/stats", stats, methods=["GET"]),
        Route("/sandbox/requests", requests_log, methods=["GET"]),
        Route("/sandbox/webhooks", webhooks_log, methods=["GET"]),
        Route("/sandbox/webhook-secret", webhook_secret, methods=["GET"]),
        Route("/sandbox/balance", set_balance, methods=["POST"]),
        Route("/sandbox/faults", set_faults, methods=["POST"]),
        Route("/sandbox/faults", get_faults, methods=["GET"]),
        Route("/sandbox/config", config, methods=["GET", "POST"]),
        Route("/sandbox/clock", clock, methods=["GET", "POST"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]


_CONFIG_FIELDS: dict[str, tuple[type, float]] = {
    "rate_limit_per_minute": (int, 0),
    "time_scale": (float, 0.0),
    "price_per_page": (int, 0),
    "webhook_max_attempts": (int, 1),
    "webhook_timeout_seconds": (float, 0.001),
}


def _config_changes(body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
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


def create_app(
    config: SandboxConfig | None = None,
    *,
    sandbox: Sandbox | None = None,
    extra_routes: list[Route] | None = None,
) -> Starlette:
    """The simulator as an ASGI app; `app.state.sandbox` is its state (for in-process tests).

    `extra_routes` (matched first) let the benchmark put a bare endpoint on the very same app
    and server.
    """
    sandbox = sandbox or Sandbox(config or SandboxConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc, _ctx(request).request_id)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        error = ApiError(exc.status_code, code, str(exc.detail), "fix_request")
        return error_response(error, _ctx(request).request_id)

    app = Starlette(
        routes=[*(extra_routes or []), *api_routes(sandbox), *control_routes(sandbox)],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox)
    return app
