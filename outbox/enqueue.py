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
from outbox.errors import (
    FaxOutboxError,
    FieldError,
    IdempotencyConflict,
    ValidationFailed,
)
from outbox.keys import derive_idempotency_key, document_sha256
from outbox.models import DEFAULT_RETRIES
from outbox.settings import Environment, environment_from_env
from outbox.validation import ValidIntent, validate_intent

MAX_METADATA_BYTES = 64 * 1024


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
    retries: int = DEFAULT_RETRIES
    metadata: Mapping[str, Any] | None = None
    idempotency_key: str | None = None


def enqueue_fax(
    conn_or_session: Connection | Session,
    *,
    to: str,
    document: bytes | str | os.PathLike[str],
    reference: str,
    filename: str | None = None,
    retries: int = DEFAULT_RETRIES,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    environment: Environment | None = None,
) -> EnqueueResult:
    """Add one fax to the outbox in the caller's transaction (which the caller commits).

    `document` is the file's bytes or a path to it (then `filename` defaults to its name).
    The idempotency key defaults to the deterministic key of (recipient, document, reference),
    so retrying the caller's own transaction can never create a second fax. Raises
    `ValidationFailed` listing every bad field, and `IdempotencyConflict` when an explicit key
    already names a different fax; in both cases nothing is written. `environment` (which
    numbers are allowed) defaults to `FAXOUT_ENVIRONMENT`: production refuses test numbers.
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
    env = environment or environment_from_env()
    prepared = _prepare_all(list(intents), env)
    conn = as_connection(conn_or_session)
    if not prepared:
        return []

    unique_rows: dict[str, dict[str, Any]] = {}
    # Keys in sorted order: two batches that share keys then take the unique index's locks in
    # the same order, and wait for each other instead of deadlocking.
    for row in sorted(prepared, key=lambda r: str(r["idempotency_key"])):
        unique_rows.setdefault(row["idempotency_key"], row)
    if len(unique_rows) == 1:
        # One row is written entirely or not at all: no savepoint, no extra round trips.
        ids = _write(conn, unique_rows)
    else:
        # A conflict found after some rows of the batch went in must leave none of them behind
        # in the caller's transaction (invariant 8), so the batch runs inside a savepoint.
        savepoint = conn.begin_nested()
        try:
            ids = _write(conn, unique_rows)
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()

    results: list[EnqueueResult] = []
    seen: set[str] = set()
    for row in prepared:
        key = row["idempotency_key"]
        row_id, created = ids[key]
        results.append(EnqueueResult(row_id, key, created=created and key not in seen))
        seen.add(key)
    return results


# A key can vanish between our insert (which skipped it) and our read only if its row was
# inserted by a transaction that then rolled back, or deleted at once; try again a few times.
_WRITE_ROUNDS = 3


def _write(conn: Connection, rows: dict[str, dict[str, Any]]) -> dict[str, tuple[int, bool]]:
    """Insert the new rows and resolve the rest; {key: (id, created)}."""
    ids: dict[str, tuple[int, bool]] = {}
    pending = rows
    for _ in range(_WRITE_ROUNDS):
        created = repository.insert_intents(conn, list(pending.values()))
        ids.update((key, (row_id, True)) for key, row_id in created.items())
        existing = repository.intents_by_key(conn, [k for k in pending if k not in created])
        for key, stored in existing.items():
            row = pending[key]
            if (stored.to_number, stored.document_sha256, stored.reference) != _identity(row):
                raise IdempotencyConflict(key, stored.id)
            ids[key] = (stored.id, False)
        pending = {key: row for key, row in pending.items() if key not in ids}
        if not pending:
            return ids
    raise FaxOutboxError(  # pragma: no cover - needs a writer that keeps rolling back
        "idempotency_key: the row holding this key kept disappearing; try again"
    )


def _prepare_all(intents: Sequence[FaxIntent], env: Environment) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    errors: list[FieldError] = []
    indexed = len(intents) > 1
    for index, intent in enumerate(intents):
        try:
            rows[index] = _prepare(intent, env)
        except ValidationFailed as exc:
            errors.extend(
                FieldError(e.field, e.reason, index if indexed else None) for e in exc.errors
            )
    errors.extend(_batch_conflicts(rows, indexed))
    if errors:
        errors.sort(key=lambda e: -1 if e.index is None else e.index)
        raise ValidationFailed(errors)
    return list(rows.values())


def _batch_conflicts(rows: Mapping[int, dict[str, Any]], indexed: bool) -> list[FieldError]:
    """One key given to two different intents of the same batch is bad input, not a duplicate."""
    first_seen: dict[str, int] = {}
    errors: list[FieldError] = []
    for index, row in rows.items():
        key = row["idempotency_key"]
        first = first_seen.setdefault(key, index)
        if first != index and _identity(rows[first]) != _identity(row):
            errors.append(
                FieldError(
                    "idempotency_key",
                    f"is also the key of intent [{first}], which has a different recipient, "
                    "document or reference",
                    index if indexed else None,
                )
            )
    return errors


def _identity(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return row["to_number"], row["document_sha256"], row["reference"]


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
        # An unreadable path was already reported; "document is empty" would only mislead.
        found = [e for e in exc.errors if not (load_errors and e.field == "document")]
        raise ValidationFailed(load_errors + found + metadata_errors) from None
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
            return (
                b"",
                filename or path.name,
                [FieldError("document", f"cannot read {path.name!r}: {exc.strerror}")],
            )
        return data, filename or path.name, []
    return b"", filename or "", [FieldError("document", "must be bytes or a path")]


def _check_metadata(metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[FieldError]]:
    if metadata is None:
        return {}, []
    if not isinstance(metadata, Mapping):
        return {}, [FieldError("metadata", "must be a JSON object (a mapping)")]
    try:
        # NaN and Infinity are not JSON; Postgres jsonb refuses them, and NUL escapes too.
        encoded = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {}, [FieldError("metadata", f"is not JSON-serialisable ({exc})")]
    if "\\u0000" in encoded:
        return {}, [FieldError("metadata", "must not contain NUL characters")]
    if len(encoded) > MAX_METADATA_BYTES:
        return {}, [FieldError("metadata", "is larger than 64 KB as JSON")]
    return dict(metadata), []
