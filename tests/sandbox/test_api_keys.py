"""The simulator's API keys: issue a new one, revoke the old one (a rotation), over HTTP."""

from __future__ import annotations

import httpx

from tests.sandbox_fixtures import SandboxHandle


def _balance(sandbox: SandboxHandle, key: str) -> httpx.Response:
    with httpx.Client(base_url=sandbox.base_url, timeout=10) as client:
        return client.get("/account/balance", headers={"Authorization": f"Bearer {key}"})


def test_a_rotation_has_an_overlap_then_the_old_key_is_refused(sandbox: SandboxHandle) -> None:
    old = sandbox.api_key
    assert _balance(sandbox, old).status_code == 200
    new = sandbox.issue_key()
    assert new.startswith("fx_test_") and new != old
    assert _balance(sandbox, new).status_code == 200  # both work in between
    assert _balance(sandbox, old).status_code == 200

    sandbox.revoke_key(old)
    refused = _balance(sandbox, old)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthenticated"
    assert old not in refused.text
    assert _balance(sandbox, new).status_code == 200
    # Any other test key keeps working: only the revoked one is refused.
    assert _balance(sandbox, "fx_test_someone_else").status_code == 200


def test_the_listing_counts_per_key_and_never_shows_a_key(sandbox: SandboxHandle) -> None:
    new = sandbox.issue_key()
    _balance(sandbox, new)
    _balance(sandbox, new)
    sandbox.revoke_key(new)
    _balance(sandbox, new)
    with httpx.Client(base_url=sandbox.url, timeout=10) as control:
        raw = control.get("/sandbox/keys").text
    assert new not in raw
    [entry] = [k for k in sandbox.keys() if k["last4"] == new[-4:]]  # noqa: SIM118 (not a dict)
    assert entry["id"].startswith("key_")
    assert (entry["requests"], entry["refused"]) == (2, 1)
    assert entry["revoked_at"] is not None


def test_revoking_by_id_and_an_unknown_id(sandbox: SandboxHandle) -> None:
    with httpx.Client(base_url=sandbox.url, timeout=10) as control:
        issued = control.post("/sandbox/keys", json={}).json()
        assert control.post("/sandbox/keys/revoke", json={"id": issued["id"]}).status_code == 200
        assert control.post("/sandbox/keys/revoke", json={"id": "key_nope"}).status_code == 404
        assert control.post("/sandbox/keys/revoke", json={}).status_code == 422
    assert _balance(sandbox, issued["key"]).status_code == 401
