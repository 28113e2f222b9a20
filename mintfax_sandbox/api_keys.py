"""The account's API keys: issue a new one, revoke an old one (a key rotation, as mintfax's docs
describe it: create the new key, deploy it, then revoke the old one; both work in between).

Any `fx_test_` key is accepted unless it was revoked, so tests and demos can pick their own key
without issuing one first; an issued key is simply one the simulator made up. Keys are never
shown again after `issue` answers: listings carry an id, the last four characters and the
counts of requests made and refused with each key (so a test can see which key a fleet uses).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from mintfax_sandbox.clock import iso

KEY_PREFIX = "fx_test_"


@dataclass(slots=True)
class _Key:
    id: str | None
    issued_at: datetime | None = None
    revoked_at: datetime | None = None
    requests: int = 0
    refused: int = 0
    hint: str = field(default="")


class ApiKeys:
    """Issued and revoked keys, and what each key was used for."""

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}

    def issue(self, now: datetime) -> tuple[str, str]:
        """A new key: (its id, the key itself, shown only in this answer)."""
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(8)
        self._keys[key] = _Key(id=key_id, issued_at=now, hint=key[-4:])
        return key_id, key

    def revoke(self, now: datetime, *, key: str | None = None, key_id: str | None = None) -> bool:
        """Revoke a key given itself or its id; False when the id is unknown."""
        if key is not None:
            entry = self._keys.setdefault(key, _Key(id=None, hint=key[-4:]))
        else:
            found = [e for e in self._keys.values() if e.id is not None and e.id == key_id]
            if not found:
                return False
            entry = found[0]
        if entry.revoked_at is None:
            entry.revoked_at = now
        return True

    def admit(self, key: str) -> bool:
        """Whether `key` may be used (not revoked); counts the request either way."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(id=None, hint=key[-4:])
        if entry.revoked_at is not None:
            entry.refused += 1
            return False
        entry.requests += 1
        return True

    def listing(self) -> list[dict[str, object]]:
        """Every key seen or issued, without the keys themselves."""
        return [
            {
                "id": e.id,
                "last4": e.hint,
                "issued_at": iso(e.issued_at) if e.issued_at else None,
                "revoked_at": iso(e.revoked_at) if e.revoked_at else None,
                "requests": e.requests,
                "refused": e.refused,
            }
            for e in self._keys.values()
        ]
