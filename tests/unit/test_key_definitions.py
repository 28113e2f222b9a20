"""One definition of a valid idempotency key and of a valid API key, in every layer (issue 8,
item 2): what validation or settings accept, the client sends unchanged; what the client
would refuse, validation or settings refuse first, naming the field or variable."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from outbox.errors import ConfigurationError
from outbox.fax_client import MintfaxClient
from outbox.keys import HEADER_VALUE_SQL
from outbox.settings import Settings
from outbox.validation import check_idempotency_key

IDEMPOTENCY_KEYS = [
    "my-key-1",
    "k" * 255,
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "",
    "k" * 256,
    "my key",  # printable ASCII, which validation used to accept
    " leading",
    "trailing ",
    "tab\there",
    "line\nbreak",
    "del\x7f",
    "caf\u00e9",
]


def _client(handler: Any, key: Any) -> MintfaxClient:
    return MintfaxClient("https://api.mintfax.test/v1", key, transport=httpx.MockTransport(handler))


def _sent_by_client(key: str) -> bool:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["idempotency-key"])
        return httpx.Response(201, json={"id": "fax_1", "status": "queued"})

    try:
        _client(handler, SecretStr("fx_test_abc")).send_fax(
            to="+15005550001", document=b"%PDF-1.4", filename="a.pdf", idempotency_key=key,
            retries=0,
        )  # fmt: skip
    except ValueError:
        assert sent == []
        return False
    assert sent == [key]
    return True


@pytest.mark.parametrize("key", IDEMPOTENCY_KEYS)
def test_validation_the_database_and_the_client_agree_on_idempotency_keys(key: str) -> None:
    accepted = check_idempotency_key(key) == []
    assert _sent_by_client(key) is accepted
    # The database: its CHECK on the characters with its CHECK on the length (1-255).
    by_database = bool(re.search(HEADER_VALUE_SQL, key)) and 1 <= len(key) <= 255
    assert by_database is accepted


API_KEYS = [
    ("fx_test_abc", "fx_test_abc"),
    ("fx_test_abc\n", "fx_test_abc"),  # a trailing newline is not part of the key
    ("  fx_test_abc\r\n", "fx_test_abc"),
    ("fx_test_a bc", None),
    ("fx_test_a\tbc", None),
    ("fx_test_\x00abc", None),
    ("fx_test_\u00e9", None),
    (" \n", None),
]


@pytest.mark.parametrize(("value", "sent"), API_KEYS)
def test_settings_and_the_client_agree_on_api_keys(value: str, sent: str | None) -> None:
    if sent is None:
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({"MINTFAX_API_KEY": value}).api_key()
        assert caught.value.setting == "MINTFAX_API_KEY"
        if value.strip():
            assert value.strip() not in str(caught.value)
        return
    settings = Settings.from_env({"MINTFAX_API_KEY": value})
    headers: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers["authorization"])
        return httpx.Response(200, json={"available": 5, "held": 0})

    # The client as workers/runtime.py builds it: the key read through settings each time.
    _client(handler, settings.api_key).get_balance()
    assert headers == [f"Bearer {sent}"]
