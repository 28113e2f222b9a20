"""Liveness settings and how processes are described (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from outbox.errors import ConfigurationError
from outbox.liveness import Heartbeat, describe
from outbox.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.heartbeat_seconds == 5
    assert settings.liveness_alert_seconds == 120
    assert settings.flower_url is None


def test_values_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {"FAXOUT_HEARTBEAT_SECONDS": "0.5", "FAXOUT_LIVENESS_ALERT_SECONDS": "4"}
    )
    assert (settings.heartbeat_seconds, settings.liveness_alert_seconds) == (0.5, 4)
    with pytest.raises(ConfigurationError, match="FAXOUT_LIVENESS_ALERT_SECONDS"):
        Settings.from_env({"FAXOUT_LIVENESS_ALERT_SECONDS": "9"})  # under 2 x 5 s
    with pytest.raises(ConfigurationError, match="FAXOUT_HEARTBEAT_SECONDS"):
        Settings.from_env({"FAXOUT_HEARTBEAT_SECONDS": "0"})


def test_the_flower_url_hides_its_password() -> None:
    settings = Settings.from_env({"FAXOUT_FLOWER_URL": "http://admin:s3cr3t-flower@flower:5555"})
    assert settings.flower_url == "http://admin:s3cr3t-flower@flower:5555"
    assert "s3cr3t-flower" not in repr(settings) and "admin:***@flower:5555" in repr(settings)


def _beat(age: float, stopped: bool = False) -> Heartbeat:
    return Heartbeat(
        role="relay",
        process="relay@h1:7",
        hostname="h1",
        pid=7,
        started_at=T0,
        seen_at=T0,
        age_seconds=age,
        stopped_at=T0 if stopped else None,
    )


def test_each_process_is_alive_silent_or_stopped() -> None:
    lines = describe([_beat(1.25), _beat(40), _beat(40, stopped=True)], alive_within=15)
    assert lines == [
        "relay    relay@h1:7 (h1 pid 7): alive, seen 1.2s ago",
        "relay    relay@h1:7 (h1 pid 7): SILENT for 40s",
        "relay    relay@h1:7 (h1 pid 7): stopped 40s ago",
    ]
