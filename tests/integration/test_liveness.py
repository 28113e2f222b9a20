"""Liveness on a real database: heartbeats, ages on the database's clock, and exactly one alert
per episode in which no relay (or no beat) is alive, however many checkers notice at once."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from outbox.alerts import Alerter
from outbox.clock import DatabaseClock, FrozenClock
from outbox.db import make_engine
from outbox.liveness import Heart, LivenessWatch, alive_roles, heartbeats
from outbox.models import alerts, liveness_episodes
from outbox.repository import database_now
from outbox.settings import Settings
from workers.heartbeat import HeartbeatThread

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALERT_AFTER = 60.0


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _heart(engine: Engine, clock: FrozenClock, role: str, name: str, host: str = "h1") -> Heart:
    return Heart(engine, role, name, clock, hostname=host, pid=1)


def _watch(engine: Engine, clock: FrozenClock, checker: Heart) -> LivenessWatch:
    return LivenessWatch(
        engine, Alerter(clock), clock, checker=checker.instance, alert_after=ALERT_AFTER
    )


def _down_alerts(engine: Engine, role: str | None = None) -> list[str]:
    with engine.connect() as conn:
        keys = conn.execute(
            select(alerts.c.dedupe_key).where(alerts.c.kind == "role_down").order_by(alerts.c.id)
        ).scalars()
        return [k for k in keys if role is None or k.startswith(f"role_down:{role}:")]


def test_heartbeats_show_each_process_with_its_age(engine: Engine, clock: FrozenClock) -> None:
    relay = _heart(engine, clock, "relay", "relay@h1:1")
    worker = _heart(engine, clock, "worker", "worker0@h2", host="h2")
    relay.beat()
    worker.beat()
    clock.advance(7)
    relay.beat()
    clock.advance(3)
    with engine.connect() as conn:
        beats = {hb.role: hb for hb in heartbeats(conn, now=clock.now())}
        assert beats["relay"].age_seconds == pytest.approx(3)
        assert beats["relay"].started_at == T0
        assert beats["worker"].age_seconds == pytest.approx(10)
        assert (beats["worker"].hostname, beats["worker"].process) == ("h2", "worker0@h2")
        assert alive_roles(conn, within_seconds=5, now=clock.now()) == {"relay"}
        assert alive_roles(conn, within_seconds=15, now=clock.now()) == {"relay", "worker"}
        # `faxout alive` asks about this host only.
        assert alive_roles(conn, within_seconds=15, hostname="h2", now=clock.now()) == {"worker"}
    relay.stop()
    with engine.connect() as conn:
        assert alive_roles(conn, within_seconds=15, now=clock.now()) == {"worker"}
        assert [hb.stopped for hb in heartbeats(conn) if hb.role == "relay"] == [True]


def test_a_restarted_process_with_the_same_host_and_pid_is_a_new_row(
    engine: Engine, clock: FrozenClock
) -> None:
    # A container restarts with its hostname and pid 1: the new start is a process of its own.
    _heart(engine, clock, "relay", "relay@h1:1").beat()
    clock.advance(100)
    _heart(engine, clock, "relay", "relay@h1:1").beat()
    with engine.connect() as conn:
        ages = sorted(hb.age_seconds for hb in heartbeats(conn, now=clock.now()))
    assert ages == [0, 100]


def test_the_database_clock_not_the_hosts_dates_heartbeats(engine: Engine) -> None:
    # A host whose wall clock is an hour off still beats "now" on the database's clock.
    def read() -> datetime:
        with engine.connect() as conn:
            return database_now(conn)

    heart = Heart(engine, "beat", "beat@h1", DatabaseClock(read))
    heart.beat()
    with engine.connect() as conn:
        (beat,) = heartbeats(conn)
        assert 0 <= beat.age_seconds < 5
        assert alive_roles(conn, within_seconds=5) == {"beat"}


def test_one_alert_per_episode_and_the_episode_ends_when_the_relay_is_back(
    engine: Engine, clock: FrozenClock
) -> None:
    relay = _heart(engine, clock, "relay", "relay@h1:1")
    beat = _heart(engine, clock, "beat", "beat@h1")
    worker = _heart(engine, clock, "worker", "worker0@h1")
    watch = _watch(engine, clock, worker)
    for heart in (relay, beat, worker):
        heart.beat()
    # The relay dies; the others go on beating.
    for _ in range(5):
        clock.advance(ALERT_AFTER / 4)
        beat.beat()
        worker.beat()
        watch.run_once()
    assert _down_alerts(engine) == [f"role_down:relay:{_open_episode(engine, 'relay')}"]
    for _ in range(3):
        clock.advance(10)
        beat.beat()
        assert watch.run_once().opened == ()
    assert len(_down_alerts(engine)) == 1
    # The relay is back (a new process): the episode ends, and no alert is raised for it.
    new_relay = _heart(engine, clock, "relay", "relay@h1:2")
    new_relay.beat()
    assert watch.run_once().ended == ("relay",)
    assert _open_episode(engine, "relay") is None
    # Dead again: a new episode, a new alert.
    clock.advance(ALERT_AFTER + 1)
    beat.beat()
    worker.beat()
    assert watch.run_once().opened == ("relay",)
    assert len(_down_alerts(engine, "relay")) == 2
    assert _down_alerts(engine, "beat") == []


def test_a_checker_that_just_started_does_not_alert(engine: Engine, clock: FrozenClock) -> None:
    # A fleet starting after a night off: last night's relay rows are old, but the relay gets
    # the alert period to come up before anyone judges.
    _heart(engine, clock, "relay", "relay@h1:1").beat()
    clock.advance(12 * 3600)
    worker = _heart(engine, clock, "worker", "worker0@h1")
    worker.beat()
    watch = _watch(engine, clock, worker)
    clock.advance(ALERT_AFTER - 1)
    worker.beat()
    assert watch.run_once().opened == ()
    clock.advance(2)
    worker.beat()
    # No beat was ever seen either: both roles are down, one alert each.
    assert sorted(watch.run_once().opened) == ["beat", "relay"]
    assert len(_down_alerts(engine)) == 2


def test_two_checkers_at_once_raise_one_alert(database_url: str, clock: FrozenClock) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    try:
        checkers = [_heart(e, clock, "worker", f"worker{n}@h1") for n, e in enumerate(engines)]
        relay = _heart(engines[0], clock, "relay", "relay@h1:1")
        for round_ in range(10):
            relay.beat()
            for checker in checkers:
                checker.beat()
            watches = [_watch(e, clock, c) for e, c in zip(engines, checkers, strict=True)]
            for w in watches:
                w.run_once()  # the relay is alive: any open episode ends
            clock.advance(ALERT_AFTER + 1)
            for checker in checkers:
                checker.beat()
            barrier = threading.Barrier(len(watches))
            opened: list[tuple[str, ...]] = []

            def check(watch: LivenessWatch, b: threading.Barrier = barrier) -> None:
                b.wait()
                # `list.append` is atomic: the results of the four threads are all kept.
                opened.append(watch.run_once().opened)  # noqa: B023

            threads = [threading.Thread(target=check, args=(w,)) for w in watches]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum("relay" in o for o in opened) == 1, (round_, opened)
            assert len(_down_alerts(engines[0], "relay")) == round_ + 1
    finally:
        for e in engines:
            e.dispose()


def test_an_unreachable_database_is_one_warning_not_one_per_beat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env(
        {
            # Nothing listens on port 1: every beat fails at once.
            "DATABASE_URL": "postgresql://faxout@127.0.0.1:1/faxout",
            "FAXOUT_HEARTBEAT_SECONDS": "0.1",
            "FAXOUT_LIVENESS_ALERT_SECONDS": "1",
        }
    )
    caplog.set_level(logging.WARNING, logger="faxout.liveness")
    thread = HeartbeatThread(settings, "relay", "relay@h1:1").start()
    try:
        threading.Event().wait(1.0)  # about ten beats
    finally:
        thread.stop()
    published = [r for r in caplog.records if "cannot publish" in r.getMessage()]
    assert len(published) == 1
    assert not any(r.exc_info for r in caplog.records)


def test_settings_refuse_an_alert_shorter_than_two_heartbeats() -> None:
    from outbox.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="FAXOUT_LIVENESS_ALERT_SECONDS"):
        Settings.from_env({"FAXOUT_HEARTBEAT_SECONDS": "10", "FAXOUT_LIVENESS_ALERT_SECONDS": "15"})


def _open_episode(engine: Engine, role: str) -> int | None:
    e = liveness_episodes.c
    with engine.connect() as conn:
        return conn.execute(
            select(e.id).where(e.role == role, e.ended_at.is_(None))
        ).scalar_one_or_none()
