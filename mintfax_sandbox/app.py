"""The sandbox's HTTP surface: mintfax generation A under `/v1`, inspection under `/sandbox`.

Handlers only parse (`forms`) and serialise: what a request does happens in `state.Sandbox`,
whose refusals `errors` turns into mintfax's envelope. `gate.ApiGate` wraps the whole app with
request ids, auth, the rate limit and the counters.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mintfax_sandbox import forms
from mintfax_sandbox.clock import iso
from mintfax_sandbox.errors import (
    ApiError,
    error_response,
    not_final,
    not_found,
    refusal,
    server_error,
    validation_error,
)
from mintfax_sandbox.faults import Fault, FaultConfig, FaultSpecError
from mintfax_sandbox.gate import ApiGate, DropConnection, request_context
from mintfax_sandbox.idempotency import KeyConflict
from mintfax_sandbox.ledger import InsufficientBalance
from mintfax_sandbox.state import FaxNotFinal, Sandbox, SandboxConfig

PAGE_SIZE = 20


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data).encode(), status, headers=headers, media_type="application/json"
    )


def api_routes(sandbox: Sandbox) -> list[Route]:
    """The generation-A endpoints under `/v1`."""

    async def create_fax(request: Request) -> Response:
        header_key = request.headers.get("idempotency-key")
        try:
            return await _create_fax(request, header_key)
        except (ApiError, KeyConflict, InsufficientBalance) as exc:
            error = exc if isinstance(exc, ApiError) else refusal(exc)
            # mintfax echoes the key on every answer to a request that carried one.
            if header_key is not None and len(header_key) <= forms.MAX_KEY_LENGTH:
                error.headers.setdefault("X-Idempotency-Key", header_key)
            raise error from None

    async def _create_fax(request: Request, header_key: str | None) -> Response:
        request_context(request).arrival = sandbox.receive_submission(header_key)
        fault, delay = sandbox.draw_fault()
        if fault is Fault.RESET:
            return DropConnection(sandbox.transports, "reset")
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            raise server_error(fault)
        fax_request = await forms.read_fax_request(request, header_key)
        submitted = await sandbox.submit(fax_request, delay)
        if fault is Fault.COMMIT_THEN_DROP and not submitted.replayed:
            return DropConnection(sandbox.transports, "dropped")
        headers = {} if fax_request.key is None else {"X-Idempotency-Key": fax_request.key}
        if submitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        return json_response(submitted.fax.receipt(), 201, headers)

    async def get_fax(request: Request) -> Response:
        fax = sandbox.fax(request.path_params["fax_id"])
        if fax is None:
            raise not_found("fax", "check_fax_id")
        return json_response(fax.as_api())

    async def delete_fax(request: Request) -> Response:
        # mintfax documents the endpoint but not its answer: the remains of the fax, as a
        # GET shows them after the deletion.
        try:
            fax = sandbox.delete_fax_data(request.path_params["fax_id"])
        except FaxNotFinal as exc:
            raise not_final(exc.status) from None
        if fax is None:
            raise not_found("fax", "check_fax_id")
        return json_response(fax.as_api())

    async def list_faxes(request: Request) -> Response:
        query = request.query_params
        page = forms.page_number(query.get("page", "1"))
        filters = forms.list_filters(query.get("idempotency_key"), query.get("to"))
        faxes, total = sandbox.fax_page(page, PAGE_SIZE, **filters)
        return json_response(
            {
                "data": [fax.as_api() for fax in faxes],
                "page": page,
                "per_page": PAGE_SIZE,
                "total": total,
                "has_more": page * PAGE_SIZE < total,
            }
        )

    async def balance(request: Request) -> Response:
        return json_response(sandbox.balance())

    async def create_webhook(request: Request) -> Response:
        url, events, description = forms.endpoint_fields(await forms.read_json_object(request))
        endpoint = sandbox.register_endpoint(url, events, description)
        return json_response({"data": endpoint.as_api(), "signing_secret": endpoint.secret}, 201)

    async def list_webhooks(request: Request) -> Response:
        return json_response({"data": [e.as_api() for e in sandbox.list_endpoints()]})

    async def delete_webhook(request: Request) -> Response:
        if not sandbox.remove_endpoint(request.path_params["endpoint_id"]):
            raise not_found("webhook endpoint", "check_id")
        return Response(status_code=204)

    return [
        Route("/v1/fax", create_fax, methods=["POST"]),
        Route("/v1/fax", list_faxes, methods=["GET"]),
        Route("/v1/fax/{fax_id}", get_fax, methods=["GET"]),
        Route("/v1/fax/{fax_id}", delete_fax, methods=["DELETE"]),
        Route("/v1/account/balance", balance, methods=["GET"]),
        Route("/v1/account/webhooks", create_webhook, methods=["POST"]),
        Route("/v1/account/webhooks", list_webhooks, methods=["GET"]),
        Route("/v1/account/webhooks/{endpoint_id}", delete_webhook, methods=["DELETE"]),
    ]


def control_routes(sandbox: Sandbox) -> list[Route]:
    """Inspection and control under `/sandbox` (the gate checks the control token, if any)."""

    async def faxes(request: Request) -> Response:
        return json_response({"data": sandbox.inspect_faxes()})

    async def stats(request: Request) -> Response:
        return json_response(sandbox.stats.as_json())

    async def requests_log(request: Request) -> Response:
        return json_response({"data": list(sandbox.requests)})

    async def webhooks_log(request: Request) -> Response:
        return json_response({"data": sandbox.webhook_log()})

    async def webhook_secret(request: Request) -> Response:
        return json_response({"signing_secret": sandbox.account_secret})

    async def set_balance(request: Request) -> Response:
        how, amount = forms.balance_change(await forms.read_json_object(request))
        if how == "available":
            sandbox.set_balance(amount)
        else:
            sandbox.top_up(amount)
        return json_response(sandbox.balance())

    async def set_faults(request: Request) -> Response:
        body = await forms.read_json_object(request)
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
            sandbox.reconfigure(**forms.config_changes(await forms.read_json_object(request)))
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
            sandbox.clock.advance(forms.clock_advance(await forms.read_json_object(request)))
        return json_response({"now": iso(sandbox.clock.now())})

    async def issue_key(request: Request) -> Response:
        key_id, key = sandbox.api_keys.issue(sandbox.clock.now())
        return json_response({"id": key_id, "key": key}, status=201)

    async def list_keys(request: Request) -> Response:
        return json_response({"data": sandbox.api_keys.listing()})

    async def revoke_key(request: Request) -> Response:
        body = await forms.read_json_object(request)
        key, key_id = body.get("key"), body.get("id")
        if not isinstance(key, str) and not isinstance(key_id, str):
            raise validation_error({"key": ["give the key (or its id) to revoke"]})
        now = sandbox.clock.now()
        if isinstance(key, str):
            sandbox.api_keys.revoke(now, key=key)
        elif not sandbox.api_keys.revoke(now, key_id=key_id):
            raise not_found("API key", "check_id")
        return json_response({"revoked": True})

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
        Route("/sandbox/keys", issue_key, methods=["POST"]),
        Route("/sandbox/keys", list_keys, methods=["GET"]),
        Route("/sandbox/keys/revoke", revoke_key, methods=["POST"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]


def create_app(
    config: SandboxConfig | None = None,
    *,
    sandbox: Sandbox | None = None,
    extra_routes: list[Route] | None = None,
    control_token: str | None = None,
) -> Starlette:
    """The simulator as an ASGI app; `app.state.sandbox` is its state (for in-process tests).

    `extra_routes` (matched first) let the benchmark put a bare endpoint on the very same app
    and server. `control_token`: when given, `/sandbox/...` requires
    `Authorization: Bearer <control_token>` (401 otherwise); by default the control API is open.
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
        return error_response(exc, request_context(request).request_id)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        error = ApiError(exc.status_code, code, str(exc.detail), "fix_request")
        return error_response(error, request_context(request).request_id)

    app = Starlette(
        routes=[*(extra_routes or []), *api_routes(sandbox), *control_routes(sandbox)],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox, control_token=control_token)
    return app
