"""Write fax intents into the outbox from Python, inside the caller's transaction.

The database row is the fax (invariant 1): once the caller commits, the fax will be sent
exactly once. These helpers validate everything first, write nothing on bad input, never
commit, and are idempotent: enqueueing the same intent twice returns the first row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from outbox import repository
from outbox.db import as_connection
from outbox.errors import ConfigurationError, FieldError, IdempotencyConflict, ValidationFailed
from outbox.keys import derive_idempotency_key, document_sha256
from outbox.settings import Environment
from outbox.validation import ValidIntent, validate_intent

MAX_METADATA_BYTES = 64 * 1024
_ENVIRONMENTS: tuple[Environment, ...] = ("sandbox", "production")


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What `enqueue_fax` did: the row's id, its idempotency key, and whether it is new."""

    id: int
    idempotency_key: str
    created: bool


@dataclass(frozen=True, slots=True)
class FaxIntent:
    """One fax to send, for `enqueue_faxes`. `document` is bytes or a path."""

    to: str
    document: bytes | str | os.PathLike[str]
    reference: str
    filename: str | None = None
    retries: int = 3
    metadata: Mapping[str, Any] | None = None
    idempotency_key: str | None = None


def enqueue_fax(
    conn_or_session: Connection | Session,
    *,
    to: str,
    document: bytes | str | os.PathLike[str],
    reference: str,
    filename: str | None = None,
    retries: int = 3,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    environment: Environment | None = None,
) -> EnqueueResult:
    """Add one fax to the outbox in the caller's transaction (which the caller commits).

    `document` is the file's bytes or a path to it (then `filename` defaults to its name).
    The idempotency key defaults to the deterministic key of (recipient, document, reference),
    so retrying the caller's own transaction can never create a second fax. Raises
    `ValidationFailed` listing every bad field, and `IdempotencyConflict` when an explicit key
    already names a different fax; in both cases nothing is written.
    """
    intent = FaxIntent(
        to=to,
        document=document,
        reference=reference,
        filename=filename,
        retries=retries,
        metadata=metadata,
        idempotency_key=idempotency_key,
    )
    return enqueue_faxes(conn_or_session, [intent], environment=environment)[0]


def enqueue_faxes(
    conn_or_session: Connection | Session,
    intents: Iterable[FaxIntent],
    *,
    environment: Environment | None = None,
) -> list[EnqueueResult]:
    """Add many faxes in one round of statements; results come back in input order.

    All intents are validated before anything is written: one bad intent refuses the batch,
    with every problem listed by index. Duplicates (within the batch or already stored) return
    the existing row with `created=False`.
    """
    env = environment or _environment_from_env()
    prepared = _prepare_all(list(intents), env)
    conn = as_connection(conn_or_session)

    new_rows: dict[str, dict[str, Any]] = {}
    for row in prepared:
        new_rows.setdefault(row["idempotency_key"], row)
    created = repository.insert_intents(conn, list(new_rows.values()))
    existing_keys = [key for key in new_rows if key not in created]
    existing = repository.intents_by_key(conn, existing_keys)

    results: list[EnqueueResult] = []
    seen: set[str] = set()
    for row in prepared:
        key = row["idempotency_key"]
        if key in created:
            results.append(EnqueueResult(created[key], key, created=key not in seen))
        else:
            stored = existing.get(key)
            if stored is None:  # the other writer rolled back after we looked; rare
                raise ValidationFailed(
                    [FieldError("idempotency_key", "was taken concurrently; retry")]
                )
            if (stored.to_number, stored.document_sha256, stored.reference) != (
                row["to_number"],
                row["document_sha256"],
                row["reference"],
            ):
                raise IdempotencyConflict(key, stored.id)
            results.append(EnqueueResult(stored.id, key, created=False))
        seen.add(key)
    return results


def _prepare_all(intents: Sequence[FaxIntent], env: Environment) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    indexed = len(intents) > 1
    for index, intent in enumerate(intents):
        try:
            rows.append(_prepare(intent, env))
        except ValidationFailed as exc:
            errors.extend(
                FieldError(e.field, e.reason, index if indexed else None) for e in exc.errors
            )
    if errors:
        raise ValidationFailed(errors)
    return rows


def _prepare(intent: FaxIntent, env: Environment) -> dict[str, Any]:
    document, filename, load_errors = _load_document(intent.document, intent.filename)
    metadata_json, metadata_errors = _check_metadata(intent.metadata)
    try:
        valid: ValidIntent = validate_intent(
            to=intent.to,
            document=document,
            filename=filename,
            reference=intent.reference,
            retries=intent.retries,
            environment=env,
            idempotency_key=intent.idempotency_key,
        )
    except ValidationFailed as exc:
        raise ValidationFailed(load_errors + exc.errors + metadata_errors) from None
    if load_errors or metadata_errors:
        raise ValidationFailed(load_errors + metadata_errors)
    fingerprint = document_sha256(valid.document)
    key = intent.idempotency_key or derive_idempotency_key(
        valid.to_number, fingerprint, valid.reference
    )
    return {
        "idempotency_key": key,
        "to_number": valid.to_number,
        "document": valid.document,
        # The trigger recomputes it; sending it keeps the conflict check free of a round trip.
        "document_sha256": fingerprint,
        "filename": valid.filename,
        "reference": valid.reference,
        "retries": valid.retries,
        "metadata": metadata_json,
    }


def _load_document(
    document: bytes | str | os.PathLike[str], filename: str | None
) -> tuple[bytes, str, list[FieldError]]:
    if isinstance(document, bytes | bytearray | memoryview):
        return bytes(document), filename or "", []
    if isinstance(document, str | os.PathLike):
        path = Path(document)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return b"", filename or path.name, [
                FieldError("document", f"cannot read {path.name!r}: {exc.strerror}")
            ]
        return data, filename or path.name, []
    return b"", filename or "", [FieldError("document", "must be bytes or a path")]


def _check_metadata(metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[FieldError]]:
    if metadata is None:
        return {}, []
    if not isinstance(metadata, Mapping):
        return {}, [FieldError("metadata", "must be a JSON object (a mapping)")]
    try:
        encoded = json.dumps(dict(metadata))
    except (TypeError, ValueError) as exc:
        return {}, [FieldError("metadata", f"is not JSON-serialisable ({exc})")]
    if len(encoded) > MAX_METADATA_BYTES:
        return {}, [FieldError("metadata", "is larger than 64 KB as JSON")]
    return dict(metadata), []


def _environment_from_env() -> Environment:
    value = os.environ.get("FAXOUT_ENVIRONMENT") or "sandbox"
    for env in _ENVIRONMENTS:
        if value == env:
            return env
    raise ConfigurationError("FAXOUT_ENVIRONMENT", "must be 'sandbox' or 'production'")
