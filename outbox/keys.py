"""Deterministic idempotency keys: one logical fax, one key, forever (invariant 2).

The key is the lowercase hex SHA-256 of the canonical string

    "faxout:v1" LF to_number LF hex(sha256(document)) LF reference

encoded as UTF-8, where LF is a single newline (0x0A), `to_number` is the canonical E.164
number exactly as stored and sent (the helper refuses any other spelling rather than rewriting
it) and `reference` is the caller's own reference, verbatim. The database's insert trigger
computes the same value for rows inserted by plain SQL without a key, so both paths dedupe
against each other.

This module also holds the one definition of a valid key of each kind (invariant 8): an
idempotency key (`idempotency_key_problem`, used by the helper's validation and the client;
the database's CHECK `fax_outbox_idempotency_key_header_safe_check` is `HEADER_VALUE_SQL`) and
an API key (`api_key_problem`, used by settings and the client). Both travel as HTTP header
values, so both are visible ASCII without spaces or control characters.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

KEY_SCHEME = "faxout:v1"
# The scheme of a key given to a fax that an operator sends again as a new fax (`faxout retry
# --new-key`): derived from the original key and the how-many-th resend it is, so a repeated or
# concurrent resend of the same fax lands on the same key (one row), never a third fax.
RESEND_KEY_SCHEME = "faxout:v1:resend"

# mintfax keeps idempotency keys for 24 h. Past that, a resend of a row whose first attempt has
# an unknown outcome could create a second fax, so such a row is never resent with its key once
# the window (less a safety margin for clocks and the time a request takes) has passed. Used
# by the worker's guard before each POST (outbox/submit.py) and by operator retries
# (outbox/operations.py), which must agree.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
IDEMPOTENCY_SAFETY_MARGIN = timedelta(minutes=30)

MAX_IDEMPOTENCY_KEY_CHARS = 255  # mintfax's limit for the Idempotency-Key header
# A header value: visible ASCII (0x21-0x7E), so no space, no control character, no non-ASCII.
HEADER_VALUE = re.compile(r"[\x21-\x7e]+")
# The same characters in Postgres's regex dialect, for the CHECK on fax_outbox.idempotency_key
# (its length, 1-255, is the CHECK fax_outbox_idempotency_key_length_check).
HEADER_VALUE_SQL = r"^[\x21-\x7e]*$"


def document_sha256(document: bytes) -> str:
    """Hex SHA-256 of the document bytes (the document's fingerprint)."""
    return hashlib.sha256(document).hexdigest()


def derive_idempotency_key(to_number: str, document_fingerprint: str, reference: str) -> str:
    """The idempotency key of a fax intent; identical to the database trigger's value."""
    canonical = "\n".join((KEY_SCHEME, to_number, document_fingerprint, reference))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def resend_idempotency_key(original_key: str, resend_number: int) -> str:
    """The key of the `resend_number`-th (1-based) new fax made from the fax of `original_key`."""
    canonical = "\n".join((RESEND_KEY_SCHEME, original_key, str(resend_number)))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def idempotency_key_problem(key: str) -> str | None:
    """Why `key` cannot be an idempotency key, or None; the reason never quotes the key."""
    if not key:
        return "must not be empty"
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        return f"is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
    if not HEADER_VALUE.fullmatch(key):
        return "must be visible ASCII without spaces or control characters (it is an HTTP header)"
    return None


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be sent as the API key, or None; the reason never quotes the key.

    Settings strip the whitespace around a key (a key file ends with a newline) before asking;
    the client asks about exactly what it is about to send.
    """
    if not key:
        return "is empty"
    if not HEADER_VALUE.fullmatch(key):
        return "holds whitespace or control characters (a key is visible ASCII only)"
    return None
