"""Retention's settings and policy: what each combination removes, what is refused, and the
beat schedule that runs it on the maintenance queue."""

from __future__ import annotations

import pytest

from outbox.errors import ConfigurationError
from outbox.retention import DAY_SECONDS, RetentionPolicy
from outbox.settings import Settings


def policy(**env: str) -> RetentionPolicy:
    return RetentionPolicy.from_settings(Settings.from_env(env))


def test_unset_removes_nothing() -> None:
    assert not policy().active
    assert policy().interval == 60.0


def test_days_become_seconds_after_final() -> None:
    p = policy(FAXOUT_RETENTION_DAYS="30", FAXOUT_PURGE_DAYS="365")
    assert p.document_age == 30 * DAY_SECONDS and p.row_age == 365 * DAY_SECONDS
    assert policy(FAXOUT_RETENTION_DAYS="0.5").document_age == DAY_SECONDS / 2
    assert not p.delete_at_mintfax


def test_zero_footprint_removes_bytes_at_once_and_passes_often() -> None:
    p = policy(FAXOUT_ZERO_FOOTPRINT="true", FAXOUT_RETENTION_DAYS="30")
    assert p.document_age == 0 and p.interval == 5.0


def test_deletion_at_mintfax_follows_our_own() -> None:
    p = policy(FAXOUT_RETENTION_DAYS="7", FAXOUT_DELETE_AT_MINTFAX="true")
    assert p.delete_at_mintfax
    with pytest.raises(ConfigurationError, match="FAXOUT_DELETE_AT_MINTFAX"):
        policy(FAXOUT_DELETE_AT_MINTFAX="true")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FAXOUT_RETENTION_DAYS": "30", "FAXOUT_PURGE_DAYS": "7"}, "FAXOUT_PURGE_DAYS"),
        ({"FAXOUT_PURGE_DAYS": "0"}, "FAXOUT_PURGE_DAYS"),
        ({"FAXOUT_RETENTION_DAYS": "-1"}, "FAXOUT_RETENTION_DAYS"),
        ({"FAXOUT_RETENTION_DAYS": "a month"}, "FAXOUT_RETENTION_DAYS"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env(env)


def test_beat_runs_retention_on_the_maintenance_queue() -> None:
    from workers.app import APPLY_RETENTION_TASK, MAINTENANCE_QUEUE, app, configure
    from workers.runtime import Runtime

    before = Runtime.configured_settings()
    try:
        configure(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
        entry = app.conf.beat_schedule["apply-retention"]
        assert entry["task"] == APPLY_RETENTION_TASK and entry["schedule"] == 60.0
        assert entry["options"]["queue"] == MAINTENANCE_QUEUE
        assert app.conf.task_routes[APPLY_RETENTION_TASK] == {"queue": MAINTENANCE_QUEUE}
        configure(
            Settings.from_env(
                {"REDIS_URL": "redis://127.0.0.1:1/0", "FAXOUT_ZERO_FOOTPRINT": "true"}
            )
        )
        assert app.conf.beat_schedule["apply-retention"]["schedule"] == 5.0
    finally:
        if before is not None:
            configure(before)
        else:  # back to a process nobody configured
            Runtime._settings = None
            Runtime._instance = None
