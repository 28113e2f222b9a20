"""Liveness with real processes (issue 10, item 6): the relay, beat, Celery workers and the
webhook receiver publish heartbeats; `kill -9` of the relay gives exactly one alert although
three processes check; a new relay ends the episode; `faxout alive` answers health checks."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from outbox.liveness import heartbeats
from outbox.models import alerts, liveness_episodes
from tests.acceptance.fleet import Fleet

pytestmark = pytest.mark.timeout(180)

HEARTBEAT = 0.5
ALERT_AFTER = 4.0


def _alive(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "alive", *args],
        env=fleet.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _roles(fleet: Fleet) -> dict[str, int]:
    with fleet.engine.connect() as conn:
        found: dict[str, int] = {}
        for hb in heartbeats(conn):
            if not hb.stopped and hb.age_seconds < 3 * HEARTBEAT:
                found[hb.role] = found.get(hb.role, 0) + 1
        return found


def _down_alerts(fleet: Fleet, role: str) -> list[str]:
    with fleet.engine.connect() as conn:
        keys = conn.execute(select(alerts.c.dedupe_key).where(alerts.c.kind == "role_down"))
        return [k for (k,) in keys if k.startswith(f"role_down:{role}:")]


def _open_episodes(fleet: Fleet) -> set[str]:
    e = liveness_episodes.c
    with fleet.engine.connect() as conn:
        return set(conn.execute(select(e.role).where(e.ended_at.is_(None))).scalars())


def test_killed_relay_alerts_once_and_a_new_relay_ends_the_episode(fleet: Fleet) -> None:
    fleet.stack.env.update(
        FAXOUT_HEARTBEAT_SECONDS=str(HEARTBEAT), FAXOUT_LIVENESS_ALERT_SECONDS=str(ALERT_AFTER)
    )
    fleet.start_sandbox()
    fleet.start(workers=2, concurrency=1)
    fleet.stack.start_webhooks(secret="whsec_" + "QUJD" * 8)
    fleet.wait_until(
        lambda: _roles(fleet) == {"relay": 1, "beat": 1, "worker": 2, "webhooks": 1},
        30,
        "a heartbeat from every process",
    )
    assert _alive(fleet, "relay").returncode == 0
    assert _alive(fleet, "worker", "--max-age", "5").returncode == 0

    killed_at = time.monotonic()
    fleet.kill("relay0")
    fleet.wait_until(lambda: _down_alerts(fleet, "relay") != [], ALERT_AFTER + 20, "the alert")
    # Not before the configured time: the relay's last heartbeat came at most one period
    # before the kill, and the episode opened at least ALERT_AFTER after it (database clock).
    assert time.monotonic() - killed_at >= ALERT_AFTER - HEARTBEAT
    e = liveness_episodes.c
    with fleet.engine.connect() as conn:
        started, last_seen = conn.execute(
            select(e.started_at, e.last_seen_at).where(e.role == "relay")
        ).one()
    assert (started - last_seen).total_seconds() >= ALERT_AFTER
    # Two workers and beat check every half second: for several more rounds, still one alert.
    time.sleep(10 * HEARTBEAT)
    assert len(_down_alerts(fleet, "relay")) == 1
    assert _open_episodes(fleet) == {"relay"}
    dead = _alive(fleet, "relay", "--max-age", "2")
    assert dead.returncode == 1 and "no relay alive" in dead.stderr
    assert _alive(fleet, "beat").returncode == 0
    # `faxout status` lists every process with its age, and says the relay is missing.
    status = subprocess.run(
        [sys.executable, "-m", "workers.cli", "status"],
        env={**fleet.stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "no relay alive" in status.stdout
    assert "SILENT for" in status.stdout and status.stdout.count("process worker") == 2
    assert "no beat alive" not in status.stdout

    fleet.stack.start_relay("relay1")
    fleet.wait_until(lambda: _open_episodes(fleet) == set(), 20, "the episode to end")
    assert _alive(fleet, "relay").returncode == 0
    assert len(_down_alerts(fleet, "relay")) == 1
    assert _down_alerts(fleet, "beat") == []

    # A clean stop is not "alive" a moment later, even with a generous --max-age.
    fleet.stack.stop("webhooks")
    assert _alive(fleet, "webhooks", "--max-age", "60").returncode == 1


def test_killed_beat_is_noticed_by_the_others(fleet: Fleet) -> None:
    fleet.stack.env.update(
        FAXOUT_HEARTBEAT_SECONDS=str(HEARTBEAT), FAXOUT_LIVENESS_ALERT_SECONDS=str(ALERT_AFTER)
    )
    fleet.start_sandbox()
    fleet.start(workers=1, concurrency=1)
    fleet.wait_until(lambda: "beat" in _roles(fleet), 30, "beat's heartbeat")
    # The checkers must have been up for the alert period before they judge.
    time.sleep(ALERT_AFTER)
    fleet.kill("beat")
    fleet.wait_until(lambda: _down_alerts(fleet, "beat") != [], ALERT_AFTER + 20, "the alert")
    time.sleep(6 * HEARTBEAT)
    assert len(_down_alerts(fleet, "beat")) == 1
    assert _down_alerts(fleet, "relay") == []


def test_alive_exit_codes(fleet: Fleet) -> None:
    # No process at all: exit 1; a role that does not exist: exit 2; no database: exit 1.
    assert _alive(fleet, "relay", "--anywhere").returncode == 1
    wrong = _alive(fleet, "scheduler")
    assert wrong.returncode == 2 and "ROLE must be one of" in wrong.stderr
    fleet.stack.env["DATABASE_URL"] = "postgresql://faxout@127.0.0.1:1/faxout"
    down = _alive(fleet, "relay")
    assert down.returncode == 1 and "database unavailable" in down.stderr


def test_a_relay_stuck_without_its_broker_counts_as_dead(fleet: Fleet) -> None:
    # Its process runs and its heartbeat thread could beat, but its loop completes no pass (the
    # broker does not answer): it withholds its heartbeat, and the fleet alerts.
    fleet.stack.env.update(
        FAXOUT_HEARTBEAT_SECONDS=str(HEARTBEAT), FAXOUT_LIVENESS_ALERT_SECONDS=str(ALERT_AFTER)
    )
    fleet.start_sandbox()
    fleet.start(workers=1, concurrency=1, relays=0)
    fleet.stack._spawn(
        "relay-stuck",
        [sys.executable, "-m", "workers.cli", "relay"],
        env={"REDIS_URL": "redis://127.0.0.1:1/0"},  # nothing listens there
    )
    fleet.wait_until(lambda: "relay" in _roles(fleet), 30, "the relay's first heartbeat")
    fleet.wait_until(lambda: _down_alerts(fleet, "relay") != [], 3 * ALERT_AFTER + 20, "alert")
    assert fleet.stack.processes["relay-stuck"].poll() is None, "the relay process still runs"
    assert "heartbeat is withheld" in fleet.stack.log_text("relay-stuck")


def test_hosts_minutes_apart_are_judged_on_the_database_clock(fleet: Fleet) -> None:
    # A relay on a host three minutes slow and a worker and beat three minutes fast: every
    # heartbeat is dated by the database, so nobody looks dead (or alive) by a host's clock.
    from tests.acceptance.test_clock_skew import FAKETIME

    if not FAKETIME.is_file():
        pytest.skip("needs libfaketime (apt-get install faketime)")
    fleet.stack.env.update(
        FAXOUT_HEARTBEAT_SECONDS=str(HEARTBEAT), FAXOUT_LIVENESS_ALERT_SECONDS=str(ALERT_AFTER)
    )
    fleet.start_sandbox()
    fleet.stack.env.update(LD_PRELOAD=str(FAKETIME), FAKETIME="-3m")
    fleet.stack.start_relay("relay0")
    fleet.stack.env["FAKETIME"] = "+3m"
    fleet.stack.start_worker("worker0", 1)
    fleet.stack.start_beat()
    fleet.stack.wait_for_worker_ready("worker0")
    for name in ("LD_PRELOAD", "FAKETIME"):
        del fleet.stack.env[name]
    fleet.wait_until(
        lambda: _roles(fleet) == {"relay": 1, "beat": 1, "worker": 1}, 30, "every heartbeat"
    )
    time.sleep(2 * ALERT_AFTER)  # the checkers are old enough to judge, and judge often
    assert _roles(fleet) == {"relay": 1, "beat": 1, "worker": 1}
    assert _down_alerts(fleet, "relay") == [] and _down_alerts(fleet, "beat") == []
    assert _alive(fleet, "relay", "--max-age", "2").returncode == 0
