"""`workers.webhooks.SteadySecrets`: what the receiver verifies with when the secrets' file
changes or cannot be read for a while."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from pydantic import SecretStr

from outbox.errors import ConfigurationError
from workers.webhooks import SteadySecrets


class Source:
    """A secrets reader whose answer, or failure, the test sets."""

    def __init__(self, *values: str) -> None:
        self.values: tuple[str, ...] | None = values

    def __call__(self) -> Sequence[SecretStr]:
        if self.values is None:
            raise ConfigurationError("MINTFAX_WEBHOOK_SECRET_FILE", "cannot be read (gone)")
        return tuple(SecretStr(v) for v in self.values)


def plain(secrets: Sequence[SecretStr]) -> list[str]:
    return [s.get_secret_value() for s in secrets]


def test_each_call_reads_again_and_a_failed_read_keeps_the_last_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source("whsec_a")
    secrets = SteadySecrets(source)
    source.values = ("whsec_b", "whsec_a")
    assert plain(secrets()) == ["whsec_b", "whsec_a"]
    source.values = None
    with caplog.at_level(logging.INFO):
        assert plain(secrets()) == ["whsec_b", "whsec_a"]
        assert plain(secrets()) == ["whsec_b", "whsec_a"]  # said once, not per request
        source.values = ("whsec_b",)
        assert plain(secrets()) == ["whsec_b"]
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert actions == ["webhook.secrets_unreadable", "webhook.secrets_back"]
    assert all("whsec_" not in r.getMessage() for r in caplog.records)


def test_the_first_read_must_work() -> None:
    # At start there is no last good answer to fall back on: the command refuses to serve.
    source = Source()
    source.values = None
    with pytest.raises(ConfigurationError):
        SteadySecrets(source)
