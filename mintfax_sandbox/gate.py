"""What every request goes through before a handler: `ApiGate`, plain ASGI.

Plain ASGI rather than Starlette middleware, cheap enough not to weigh on throughput. Every
response gets an `X-Request-Id`; every `/v1` request gets bearer auth (`fx_test_` keys only), the
per-key rate limit with its `X-RateLimit-*` headers, the request counters and, with
`all_endpoints` faults, the faults of requests other than `POST /v1/fax` (whose handler draws its
own, since a fault there can strike after the fax is created). With a control token, every
`/sandbox` request must carry it as `Authorization: Bearer <token>` (compared in constant time);
without one (the default, for loopback and in-process use) the control endpoints are open.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mintfax_sandbox.errors import (
    ApiError,
    control_unauthenticated,
    error_response,
    rate_limited,
    revoked_key,
    server_error,
    unauthenticated,
)
from mintfax_sandbox.faults import Fault, reset_transport
from mintfax_sandbox.state import Sandbox

TEST_KEY_PREFIX = "fx_test_"
LIVE_KEY_PREFIX = "fx_live_"
_CONTEXT = "sandbox.ctx"


@dataclass(slots=True)
class RequestContext:
    """Per-request facts the gate and handlers share through the ASGI scope."""

    request_id: str
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    outcome: str | None = None
    arrival: dict[str, Any] | None = None


def request_context(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope[_CONTEXT]
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


def _creating(scope: Scope) -> bool:
    return bool(scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/fax")


class DropConnection(Response):
    """Not a response: resets the client's connection (fault injection)."""

    def __init__(self, transports: dict[Any, asyncio.Transport], outcome: str) -> None:
        super().__init__()
        self._transports = transports
        self._outcome = outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext = scope[_CONTEXT]
        transport = self._transports.get(scope.get("client"))
        if transport is None:
            # Served by a plain server without our protocol class: say so rather than hang.
            error = ApiError(
                500,
                "sandbox_fault_unsupported",
                "Connection faults need the simulator's own server (`python -m mintfax_sandbox`).",
                "run_sandbox_server",
            )
            await error_response(error, ctx.request_id)(scope, receive, send)
            return
        ctx.outcome = self._outcome
        reset_transport(transport)
        while (await receive())["type"] != "http.disconnect":
            pass


class ApiGate:
    """Auth, rate limit, request ids and counters around the whole app."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox, control_token: str | None = None) -> None:
        self.app = app
        self.sandbox = sandbox
        # Kept as bytes for hmac.compare_digest; never logged, never in a repr.
        self._control_token = None if control_token is None else control_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id="req_" + secrets.token_hex(12))
        scope[_CONTEXT] = ctx
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ctx.request_id.encode())]
        status: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        path: str = scope["path"]
        if not (path == "/v1" or path.startswith("/v1/")):
            if self._control_refused(path, scope):
                await error_response(control_unauthenticated(), ctx.request_id)(
                    scope, receive, send_with_headers
                )
                return
            await self.app(scope, receive, send_with_headers)
            return
        self.sandbox.count_request(_route_label(scope["method"], path))
        try:
            await self._gated(scope, receive, send_with_headers, ctx, extra)
        finally:
            outcome = str(status[0]) if status else (ctx.outcome or "no_response")
            self.sandbox.count_outcome(outcome, ctx.arrival)

    def _control_refused(self, path: str, scope: Scope) -> bool:
        """True for a `/sandbox` request without the control token, when one is required."""
        if self._control_token is None or not (path == "/sandbox" or path.startswith("/sandbox/")):
            return False
        given = _bearer(scope)
        presented = b"" if given is None else given.encode("latin-1")
        return not hmac.compare_digest(presented, self._control_token)

    def _faulted(self, scope: Scope) -> bool:
        """Whether faults may strike this request (`POST /v1/fax`, or every `/v1` request with
        `all_endpoints`)."""
        return _creating(scope) or self.sandbox.faults_hit_every_endpoint()

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
            refusal = unauthenticated(live_key=key is not None and key.startswith(LIVE_KEY_PREFIX))
        elif not self.sandbox.api_keys.admit(key):
            refusal = revoked_key()
        elif burst := self.sandbox.rate_limit_burst(self._faulted(scope)):
            # Before the window: a request refused by a burst is not counted in it either.
            extra.extend(burst.headers())
            refusal = rate_limited(burst.limit, burst.retry_after)
        else:
            decision = self.sandbox.admit(key)
            if decision is not None:
                extra.extend(decision.headers())
                if not decision.allowed:
                    refusal = rate_limited(decision.limit, decision.retry_after)
        if refusal is not None:
            await error_response(refusal, ctx.request_id)(scope, receive, send)
            return
        ctx.api_key = key
        if not _creating(scope) and self.sandbox.faults_hit_every_endpoint():
            fault, delay = self.sandbox.draw_fault()
            if delay:
                await asyncio.sleep(delay)
            if fault in (Fault.RESET, Fault.COMMIT_THEN_DROP):
                await DropConnection(self.sandbox.transports, "reset")(scope, receive, send)
                return
            if fault in (Fault.ERROR_500, Fault.ERROR_503):
                await error_response(server_error(fault), ctx.request_id)(scope, receive, send)
                return
        await self.app(scope, receive, send)
