"""The demo's fleet runs on settings that the settings themselves accept (a setting the demo
chose once, FAXOUT_LEASE_SECONDS=30, became invalid when leases had to outlast the HTTP
timeout; every process of the fleet then refused to start and `make demo` sent nothing)."""

from __future__ import annotations

from outbox.settings import Settings
from workers.single_host import demo
from workers.single_host.embedded import ServiceURLs


def test_the_demo_fleet_settings_are_valid() -> None:
    env = demo._fleet_env(ServiceURLs("postgresql://u@127.0.0.1/db", "redis://127.0.0.1:1/0"))
    settings = Settings.from_env(env)
    assert settings.lease_seconds > settings.http_timeout_seconds
    assert settings.rate_limit_per_minute == demo.RATE_LIMIT
