"""MintfaxClient.find_faxes against the simulator over HTTP (issue 9, item 3's lookup)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from outbox.errors import TransportError
from outbox.fax_client import MintfaxClient
from tests.sandbox_fixtures import SandboxHandle


def test_find_faxes_by_key_and_recipient_across_pages(sandbox: SandboxHandle) -> None:
    sandbox.configure(rate_limit_per_minute=0)
    ours = sandbox.send_fax("+15005550007", idempotency_key="wanted").json()["id"]
    for n in range(45):  # three pages of others
        sandbox.send_fax("+15005550001", idempotency_key=f"other-{n}")
    with MintfaxClient(sandbox.base_url, SecretStr(sandbox.api_key)) as client:
        by_key = client.find_faxes(idempotency_key="wanted")
        assert [f["id"] for f in by_key] == [ours]
        assert by_key[0]["idempotency_key"] == "wanted" and by_key[0]["to"] == "+15005550007"
        assert client.find_faxes(idempotency_key="wanted", to="+15005550001") == []
        assert len(client.find_faxes(to="+15005550001")) == 45
        assert client.find_faxes(idempotency_key="never-sent") == []
        with pytest.raises(ValueError, match="needs idempotency_key or to"):
            client.find_faxes()


def test_a_list_endpoint_that_ignores_the_filters_still_answers_only_matches() -> None:
    pages = {
        "1": {"data": [{"id": "a", "idempotency_key": "k"}, {"id": "b", "idempotency_key": "x"}],
              "has_more": True},
        "2": {"data": [{"id": "c", "idempotency_key": "k"}], "has_more": False},
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params["page"]])

    transport = httpx.MockTransport(handler)
    with MintfaxClient("https://mintfax.test/v1", SecretStr("fx_test_k"), transport=transport) as c:
        assert [f["id"] for f in c.find_faxes(idempotency_key="k")] == ["a", "c"]
        with pytest.raises(TransportError, match="more than 1 pages"):
            c.find_faxes(idempotency_key="k", max_pages=1)
