"""`DELETE /v1/fax/{id}` in the simulator: a final fax's data goes early (retention)."""

from __future__ import annotations

from collections.abc import Callable

from tests.sandbox_fixtures import SandboxHandle


def test_a_final_fax_is_deleted_and_shows_only_its_remains(sandbox: SandboxHandle) -> None:
    fax_id = sandbox.send_fax("+15005550001").json()["id"]
    sandbox.wait_for_fax(fax_id)
    with sandbox.client() as client:
        first = client.delete(f"/fax/{fax_id}")
        again = client.delete(f"/fax/{fax_id}")
        shown = client.get(f"/fax/{fax_id}").json()
    assert first.status_code == 200 and again.status_code == 200  # idempotent by nature
    assert first.json()["id"] == fax_id and first.json()["deleted_at"]
    assert set(shown) == {"id", "status", "created_at", "updated_at", "completed_at", "deleted_at"}
    assert shown["status"] == "delivered"
    assert "to" not in shown  # the recipient is gone with the rest
    [inspected] = [f for f in sandbox.faxes() if f["id"] == fax_id]
    assert inspected["deleted"] is True
    assert sandbox.stats()["faxes_deleted"] == 1


def test_an_unknown_fax_is_404_with_the_envelope(sandbox: SandboxHandle) -> None:
    with sandbox.client() as client:
        response = client.delete("/fax/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_fax_in_progress_is_409_and_stays(
    sandbox_factory: Callable[..., SandboxHandle],
) -> None:
    slow = sandbox_factory(time_scale=1000.0)  # the carrier takes minutes: still in progress
    fax_id = slow.send_fax("+15005550001").json()["id"]
    with slow.client() as client:
        response = client.delete(f"/fax/{fax_id}")
        shown = client.get(f"/fax/{fax_id}").json()
    assert response.status_code == 409
    assert response.json()["error"] == "fax_not_final"
    assert shown["to"] == "+15005550001"
    assert slow.stats()["faxes_deleted"] == 0


def test_deletion_needs_the_api_key(sandbox: SandboxHandle) -> None:
    fax_id = sandbox.send_fax("+15005550001").json()["id"]
    sandbox.wait_for_fax(fax_id)
    with sandbox.client(headers={"Authorization": "Bearer nope"}) as client:
        assert client.delete(f"/fax/{fax_id}").status_code == 401
    assert sandbox.stats()["faxes_deleted"] == 0
