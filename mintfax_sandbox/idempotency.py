"""Idempotency keys as mintfax keeps them: one outcome per key for 24 h (of simulated time).

A key first seen is reserved while its request is processed; a second request with the key then
gets 409 `idempotency_key_in_progress`. Once the fax exists the key replays it, provided the body
is the same (by fingerprint); a different body is 409 `idempotency_key_reuse`. A request that
creates nothing (402, a fault before the commit) releases its reservation, so the key stays
usable. After 24 h the key is forgotten and may create a new fax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

TTL = timedelta(hours=24)


class KeyConflict(Exception):
    """The key cannot be used for this request (the HTTP layer answers 409)."""

    def __init__(self, key: str) -> None:
        super().__init__("idempotency key conflict")  # the key itself stays out of messages
        self.key = key


class KeyReused(KeyConflict):
    """The key was used with a different request body."""


class KeyInProgress(KeyConflict):
    """The first request with this key is still being processed."""


@dataclass(slots=True)
class KeyEntry:
    """A key's stored outcome; `fax_id` is None while its first request is still running."""

    fingerprint: bytes
    created_at: datetime
    fax_id: str | None = None


class KeyStore:
    """The live keys of one sandbox account."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._entries: dict[str, KeyEntry] = {}

    def live(self, key: str) -> KeyEntry | None:
        """The key's entry unless its window has passed (then it is forgotten)."""
        entry = self._entries.get(key)
        if entry is not None and self._now() - entry.created_at >= TTL:
            del self._entries[key]
            return None
        return entry

    def replay(self, key: str, fingerprint: bytes) -> str | None:
        """The fax id this request replays, or None when the key is free to create one.

        Raises `KeyReused` (another body) or `KeyInProgress` (still being processed).
        """
        entry = self.live(key)
        if entry is None:
            return None
        if entry.fingerprint != fingerprint:
            raise KeyReused(key)
        if entry.fax_id is None:
            raise KeyInProgress(key)
        return entry.fax_id

    def reserve(self, key: str, fingerprint: bytes) -> KeyEntry:
        """Hold the key for a request that is about to create a fax."""
        entry = self._entries[key] = KeyEntry(fingerprint, self._now())
        return entry

    def release(self, key: str, entry: KeyEntry) -> None:
        """Give the key back: its request created nothing."""
        if self._entries.get(key) is entry:
            del self._entries[key]
