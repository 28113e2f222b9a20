"""The error envelope, and every refusal of the API written as one.

mintfax answers errors with `{error, message, action, docs, context, request_id}`; 422 carries
`context.errors = {field: [messages]}`. The HTTP layer raises `ApiError`; the state's own
refusals (`idempotency.KeyConflict`, `ledger.InsufficientBalance`) are translated here, once.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from mintfax_sandbox.faults import Fault
from mintfax_sandbox.idempotency import KeyConflict, KeyInProgress
from mintfax_sandbox.ledger import InsufficientBalance


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


def error_response(error: ApiError, request_id: str) -> Response:
    body = {
        "error": error.code,
        "message": error.message,
        "action": error.action,
        "docs": f"https://mintfax.com/docs/errors/{error.code.replace('_', '-')}",
        "context": error.context,
        "request_id": request_id,
    }
    return Response(
        json.dumps(body).encode(),
        error.status,
        headers=error.headers,
        media_type="application/json",
    )


def validation_error(errors: dict[str, list[str]]) -> ApiError:
    """422 `validation_failed` with the messages per field in `context.errors`."""
    first = next(iter(errors.values()))[0]
    return ApiError(422, "validation_failed", first, "fix_request", {"errors": errors})


def unauthenticated(live_key: bool) -> ApiError:
    message = (
        "The sandbox accepts only fx_test_ keys; it never delivers live faxes."
        if live_key
        else "Missing or invalid bearer token: send `Authorization: Bearer fx_test_...`."
    )
    return ApiError(401, "unauthenticated", message, "check_api_key")


def revoked_key() -> ApiError:
    """401 for a key that was revoked (a rotation's last step); the key is never echoed."""
    return ApiError(401, "unauthenticated", "This API key was revoked.", "check_api_key")


def control_unauthenticated() -> ApiError:
    """401 on `/sandbox/...` without the control token (the token itself is never echoed)."""
    return ApiError(
        401,
        "unauthenticated",
        "The control endpoints require the control token: "
        "send `Authorization: Bearer <control token>`.",
        "check_control_token",
    )


def rate_limited(limit: int, retry_after: int) -> ApiError:
    message = f"Rate limit of {limit} requests per minute exceeded; retry after {retry_after} s."
    return ApiError(429, "rate_limit_exceeded", message, "wait_and_retry")


def server_error(fault: Fault) -> ApiError:
    """The answer of an injected `error_500` / `error_503` fault."""
    if fault is Fault.ERROR_503:
        return ApiError(
            503,
            "service_unavailable",
            "mintfax is temporarily unavailable.",
            "retry_later",
            headers={"Retry-After": "1"},
        )
    return ApiError(500, "internal_error", "An unexpected error occurred.", "retry_later")


def not_found(what: str, action: str) -> ApiError:
    return ApiError(404, "not_found", f"No {what} with this id.", action)


def not_final(status: str) -> ApiError:
    """409 for deleting a fax that is not delivered or failed yet."""
    return ApiError(
        409,
        "fax_not_final",
        f"This fax is still {status}; only a delivered or failed fax can be deleted.",
        "retry_when_final",
        {"status": status},
    )


def refusal(exc: KeyConflict | InsufficientBalance) -> ApiError:
    """The answer to a submission the state refused."""
    if isinstance(exc, InsufficientBalance):
        return ApiError(
            402,
            "insufficient_balance",
            "Your available balance cannot cover this fax; top up and retry.",
            "top_up_balance",
            {"available": exc.available, "required": exc.required},
        )
    headers = {"X-Idempotency-Key": exc.key}
    if isinstance(exc, KeyInProgress):
        return ApiError(
            409,
            "idempotency_key_in_progress",
            "A request with this Idempotency-Key is still being processed.",
            "retry_later",
            headers={**headers, "Retry-After": "1"},
        )
    return ApiError(
        409,
        "idempotency_key_reuse",
        "This Idempotency-Key was already used with a different request body.",
        "use_new_idempotency_key",
        headers=headers,
    )
