"""Settings refuse a lease a POST could outlive (issue 8, item 3)."""

from __future__ import annotations

import pytest

from outbox.errors import ConfigurationError
from outbox.settings import Settings


def test_a_lease_shorter_than_the_request_and_its_wait_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"FAXOUT_LEASE_SECONDS": "30", "FAXOUT_HTTP_TIMEOUT_SECONDS": "30"})
    assert caught.value.setting == "FAXOUT_LEASE_SECONDS"
    assert "FAXOUT_HTTP_TIMEOUT_SECONDS" in str(caught.value)


def test_a_lease_with_room_for_the_request_is_accepted() -> None:
    settings = Settings.from_env({"FAXOUT_LEASE_SECONDS": "10", "FAXOUT_HTTP_TIMEOUT_SECONDS": "5"})
    assert settings.lease_seconds == 10
