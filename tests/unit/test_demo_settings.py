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


def test_the_demo_fleet_polls_soon_enough_to_close_its_stretch_without_webhooks() -> None:
    env = demo._fleet_env(ServiceURLs("postgresql://u@127.0.0.1/db", "redis://127.0.0.1:1/0"))
    settings = Settings.from_env(env)
    # Beat's polling pass runs every 30 s; the demo lasts well under two minutes.
    assert settings.poll_after_seconds == demo.POLL_AFTER_SECONDS <= 15
    assert settings.poll_share > 0
    # The receiver's secret comes from the registration at run time, never from the settings.
    assert "MINTFAX_WEBHOOK_SECRET" not in env
