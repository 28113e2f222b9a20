"""Deterministic idempotency keys: one logical fax, one key, forever (invariant 2).

The key is the lowercase hex SHA-256 of the canonical string

    "faxout:v1" LF to_number LF hex(sha256(document)) LF reference

encoded as UTF-8, where LF is a single newline (0x0A), `to_number` is E.164 and `reference` is
the caller's own reference, verbatim. The database's insert trigger computes the same value for
rows inserted by plain SQL without a key, so both paths dedupe against each other.
"""

from __future__ import annotations

import hashlib

KEY_SCHEME = "faxout:v1"


def document_sha256(document: bytes) -> str:
    """Hex SHA-256 of the document bytes (the document's fingerprint)."""
    return hashlib.sha256(document).hexdigest()


def derive_idempotency_key(to_number: str, document_fingerprint: str, reference: str) -> str:
    """The idempotency key of a fax intent; identical to the database trigger's value."""
    canonical = "\n".join((KEY_SCHEME, to_number, document_fingerprint, reference))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
