"""fax-outbox: a durable Postgres outbox that sends faxes through mintfax exactly once.

The library half of the project: importable and testable without Celery, an ASGI server or a
CLI. Applications call `enqueue_fax` inside their own transaction; the workers do the rest.
"""

from outbox.enqueue import EnqueueResult, FaxIntent, enqueue_fax, enqueue_faxes
from outbox.errors import (
    ConfigurationError,
    FaxOutboxError,
    FieldError,
    IdempotencyConflict,
    ValidationFailed,
)
from outbox.keys import derive_idempotency_key, document_sha256
from outbox.lookup import FaxState, fax_state, fax_states_by_reference
from outbox.models import FaxStatus
from outbox.settings import Settings

__all__ = [
    "ConfigurationError",
    "EnqueueResult",
    "FaxIntent",
    "FaxOutboxError",
    "FaxState",
    "FaxStatus",
    "FieldError",
    "IdempotencyConflict",
    "Settings",
    "ValidationFailed",
    "derive_idempotency_key",
    "document_sha256",
    "enqueue_fax",
    "enqueue_faxes",
    "fax_state",
    "fax_states_by_reference",
]
