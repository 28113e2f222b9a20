"""The one exception root of fax-outbox, and whether each error is worth retrying.

    FaxOutboxError                      retryable=False unless stated
    ├── ConfigurationError              a setting is missing or malformed
    │   └── ApiKeyMismatch              the API key does not fit FAXOUT_ENVIRONMENT
    ├── ValidationFailed                bad input; carries FieldError list; nothing was written
    ├── IdempotencyConflict             a key already names a different fax
    ├── IdempotencyWindowClosed         an unknown outcome outlived mintfax's 24 h key window
    ├── LeaseExpired                    retryable: a worker died mid-send; outcome unknown
    ├── FleetStateUnavailable           retryable: Redis (throttle, pause mirror) unreachable
    ├── DatabaseUnavailable             retryable: Postgres unreachable (restart, failover)
    ├── UnexpectedError                 a bug in the send path; the outcome is unknown
    ├── SubmitIncomplete                a submit task could not do its job (Flower: failed)
    ├── OperationRefused                an operator's action that would be unsafe or void
    ├── WebhookRefused                  a webhook request we will not act on (401/413/400)
    └── MintfaxError                    anything the mintfax API said or failed to say
        ├── TransportError              retryable: timeouts, resets, unreadable 2xx (the
        │   │                           request may have reached mintfax: outcome unknown)
        │   └── ConnectFailed           retryable: no connection, so nothing was sent
        ├── ServerError                 retryable: 500, 503 (and other 5xx)
        ├── UnexpectedResponse          a 3xx/4xx without mintfax's error envelope: a wrong
        │                               base URL or a proxy, not mintfax; wrong for every fax
        ├── RateLimited                 retryable after `retry_after` seconds: 429
        ├── IdempotencyInProgress       retryable shortly: 409 idempotency_key_in_progress
        ├── InsufficientBalance         402: pause the fleet, alert, do not retry the fax
        ├── AuthenticationFailed        401/403: the key is wrong for every fax
        ├── IdempotencyKeyReuse         409 idempotency_key_reuse: needs a human
        └── RequestRejected             400, 422 and other 4xx: the fax is rejected

What each error means for a fax, its row and the fleet is decided in one table,
`outbox.retry.FAILURES`; `retryable` says only whether the same request may succeed later.
Third-party exceptions (httpx, psycopg, redis) are translated once, at the boundary that calls
them; nothing above that boundary catches library exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


class FaxOutboxError(Exception):
    """Root of every error fax-outbox raises on purpose."""

    retryable: bool = False

    @property
    def code(self) -> str | None:
        """A short machine-readable name of what went wrong, when the error carries one."""
        return None

    def envelope(self) -> dict[str, Any]:
        """What we store on the row as `last_error` (JSON); never holds secrets."""
        return {"kind": type(self).__name__, "message": str(self)}


class ConfigurationError(FaxOutboxError):
    """A setting is missing or malformed. Names the setting, never its value."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting} {reason}")


class ApiKeyMismatch(ConfigurationError):
    """The API key is of the other mintfax environment, or of no known one; never shows it."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One refused field, in the spirit of mintfax's `context.errors`."""

    field: str
    reason: str
    index: int | None = None  # position in a bulk enqueue

    def __str__(self) -> str:
        where = f"[{self.index}] " if self.index is not None else ""
        return f"{where}{self.field}: {self.reason}"


class ValidationFailed(FaxOutboxError):
    """Bad input. Carries every problem found, not only the first; nothing was written."""

    def __init__(self, errors: list[FieldError]) -> None:
        if not errors:
            raise ValueError("ValidationFailed needs at least one FieldError")
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    def as_dict(self) -> dict[str, list[str]]:
        """Errors keyed by field, the shape of mintfax's `context.errors`."""
        out: dict[str, list[str]] = {}
        for err in self.errors:
            out.setdefault(err.field, []).append(err.reason)
        return out

    @property
    def code(self) -> str:
        """`invalid_<field>` of the first refused field."""
        return f"invalid_{self.errors[0].field}"

    def envelope(self) -> dict[str, Any]:
        return {**super().envelope(), "context": {"errors": self.as_dict()}}


class IdempotencyConflict(FaxOutboxError):
    """An idempotency key that is already stored for a different recipient/document/reference."""

    def __init__(self, idempotency_key: str, existing_id: int) -> None:
        self.idempotency_key = idempotency_key
        self.existing_id = existing_id
        super().__init__(
            f"idempotency_key: already used by fax {existing_id} with different content"
        )


class IdempotencyWindowClosed(FaxOutboxError):
    """An earlier attempt's outcome is unknown and mintfax no longer remembers its key.

    mintfax keeps idempotency keys for 24 h; past that, a resend could create a second fax.
    """

    def __init__(self, first_attempt_at: datetime) -> None:
        self.first_attempt_at = first_attempt_at
        super().__init__(
            "an earlier attempt has an unknown outcome and mintfax's 24 h idempotency window "
            "has passed; check mintfax before resending"
        )

    def envelope(self) -> dict[str, Any]:
        return {
            **super().envelope(),
            "context": {"first_attempt_at": self.first_attempt_at.isoformat()},
        }


class LeaseExpired(FaxOutboxError):
    """The worker sending a fax vanished (crash, SIGKILL, lost host); the outcome is unknown.

    Found by the lease rescuer, never raised: it names the case in `outbox.retry.FAILURES`.
    """

    retryable = True


class FleetStateUnavailable(FaxOutboxError):
    """Redis, which holds the fleet's throttle and pause mirror, cannot be reached.

    Nobody may call mintfax without asking the throttle, so the fax waits; nothing is lost,
    because Postgres is the truth.
    """

    retryable = True


class DatabaseUnavailable(FaxOutboxError):
    """Postgres cannot be reached: the connection was refused, dropped or shut down by the
    server (a restart, a failover), not a statement that failed on its own.

    Translated once from the driver's error (`outbox.outage.database_boundary`). Whatever a
    worker could not write meanwhile it keeps and writes when the database is back.
    """

    retryable = True


class MintfaxError(FaxOutboxError):
    """The mintfax API refused, failed, or could not be reached.

    `status_code` is None when no HTTP response arrived. `error`, `message`, `action`,
    `context` and `request_id` come from mintfax's error envelope when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        action: str | None = None,
        context: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error = error
        self.action = action
        self.context = context or {}
        self.request_id = request_id

    @property
    def code(self) -> str | None:
        """mintfax's `error` code, when its envelope had one."""
        return self.error

    def envelope(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "status_code": self.status_code,
            "error": self.error,
            "message": self.message,
            "action": self.action,
            "context": self.context,
            "request_id": self.request_id,
        }


class UnexpectedError(FaxOutboxError):
    """An exception nobody planned for escaped the send path (a bug, ours or a library's).

    Carries only the exception's type name: its text could hold anything, a secret included.
    Whether mintfax received the request is unknown, so the fax is never marked `failed`.
    """

    def __init__(self, exc: BaseException) -> None:
        self.exception_type = type(exc).__name__
        super().__init__(f"unexpected {self.exception_type} while sending; outcome unknown")


class SubmitIncomplete(FaxOutboxError):
    """A submit task's faxes met a fault of ours or of the setup (a pause they opened, Redis
    unreachable, a bug, a lost lease): the task raises it so that it shows as failed. The
    rows are safe in Postgres and go on by themselves; the text names each fax and what
    became of it (codes only: never a number, a document or a secret)."""

    def __init__(self, summary: str) -> None:
        self.summary = summary
        super().__init__(summary)


class OperationRefused(FaxOutboxError):
    """An operator's action on a fax that would be unsafe or mean nothing (outbox/operations):
    `reason` says why in words, `code` in one token; nothing was changed."""

    def __init__(self, fax_id: int, code: str, reason: str) -> None:
        self.fax_id = fax_id
        self.reason = reason
        self._code = code
        super().__init__(f"fax {fax_id}: {reason}")

    @property
    def code(self) -> str:
        """Why, as one token (`in_flight`, `window_passed`, `final`, ...)."""
        return self._code


class WebhookRefused(FaxOutboxError):
    """A webhook request that is not provably mintfax's, or not an event we can read.

    `status` is the HTTP status to answer (401 signature or timestamp, 413 too large, 400 not a
    JSON object or not an event). `reason` says which check failed, for the log only: the HTTP
    body stays generic so a forger learns nothing. Neither ever holds a secret.
    """

    def __init__(self, reason: str, status: int) -> None:
        self.reason = reason
        self.status = status
        super().__init__(f"webhook refused ({status}): {reason}")


class TransportError(MintfaxError):
    """No usable response: connect/read failure, timeout, connection reset."""

    retryable = True


class ConnectFailed(TransportError):
    """No connection could be made (refused, DNS, connect timeout): the request was never sent,
    so this attempt is known not to have created a fax."""


class ServerError(MintfaxError):
    """mintfax answered 5xx."""

    retryable = True


class RateLimited(MintfaxError):
    """429: wait `retry_after` seconds, fleet-wide."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class IdempotencyInProgress(MintfaxError):
    """409 idempotency_key_in_progress: the first request with this key is still running."""

    retryable = True


class InsufficientBalance(MintfaxError):
    """402 insufficient_balance: nothing more can be sent until the balance is topped up."""


class AuthenticationFailed(MintfaxError):
    """401/403: the API key is missing, invalid, or not allowed here."""


class IdempotencyKeyReuse(MintfaxError):
    """409 idempotency_key_reuse: the key was used with a different request body."""


class RequestRejected(MintfaxError):
    """400, 422 and other 4xx: this fax will never be accepted as it is."""


class UnexpectedResponse(MintfaxError):
    """A 3xx or 4xx that does not carry mintfax's error envelope.

    mintfax answers every refusal with `{error, message, ...}`; a bare 404, 405 or 413 comes
    from something in front of it (a base URL without `/v1`, a proxy's body limit), so it is
    wrong for every fax alike: the fleet pauses instead of rejecting the backlog.
    """
