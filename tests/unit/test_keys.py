"""Idempotency keys: the documented canonical string, hashed, and nothing else."""

from __future__ import annotations

import hashlib

import pytest

from outbox.keys import KEY_SCHEME, derive_idempotency_key, document_sha256

DOCUMENT = b"%PDF-1.4 golden"
# Pinned values: a change here breaks every key already stored and every plain-SQL writer.
DOCUMENT_SHA256 = "15745da4665bf27c0083fb52811176337a61e6ca1dfd0fb5dd2d5268728b59a8"
GOLDEN_KEY = "168e45371738e7a993d9000f7361b0615e02912c6e45aef9fa58d57d0621084f"


def _canonical_key(to_number: str, document: bytes, reference: str) -> str:
    # Written from the docstring of outbox/keys.py, not from its code.
    fingerprint = hashlib.sha256(document).hexdigest()
    canonical = b"faxout:v1\n" + to_number.encode() + b"\n" + fingerprint.encode() + b"\n"
    return hashlib.sha256(canonical + reference.encode("utf-8")).hexdigest()


def test_document_fingerprint_is_hex_sha256() -> None:
    assert document_sha256(DOCUMENT) == DOCUMENT_SHA256


def test_key_matches_the_pinned_golden_value() -> None:
    assert KEY_SCHEME == "faxout:v1"
    assert derive_idempotency_key("+12127365000", DOCUMENT_SHA256, "order-42") == GOLDEN_KEY
    assert _canonical_key("+12127365000", DOCUMENT, "order-42") == GOLDEN_KEY


@pytest.mark.parametrize(
    ("to_number", "reference"),
    [
        ("+12127365000", "order-42"),
        ("+4930901820", "Rechnung \u00e4\u00f6\u00fc \u2116 7"),  # non-ASCII: UTF-8 bytes
        ("+442079460958", "line one\nline two"),  # newline inside the last field
        ("+15005550006", "x" * 255),
    ],
)
def test_key_is_sha256_of_the_documented_canonical_string(to_number: str, reference: str) -> None:
    key = derive_idempotency_key(to_number, document_sha256(DOCUMENT), reference)
    assert key == _canonical_key(to_number, DOCUMENT, reference)
    assert len(key) == 64
    assert key == key.lower()


def test_each_part_of_the_intent_changes_the_key() -> None:
    base = derive_idempotency_key("+12127365000", DOCUMENT_SHA256, "order-42")
    others = {
        derive_idempotency_key("+12127365001", DOCUMENT_SHA256, "order-42"),
        derive_idempotency_key("+12127365000", document_sha256(DOCUMENT + b" "), "order-42"),
        derive_idempotency_key("+12127365000", DOCUMENT_SHA256, "order-43"),
        derive_idempotency_key("+12127365000", DOCUMENT_SHA256, "order-42 "),
    }
    assert base not in others
    assert len(others) == 4


def test_key_is_deterministic() -> None:
    keys = {derive_idempotency_key("+12127365000", DOCUMENT_SHA256, "order-42") for _ in range(3)}
    assert keys == {GOLDEN_KEY}
