"""Redis failover through Sentinel (issue 12, item 4): a primary, a replica and three
sentinels on this machine (tests/sentinel_cluster.py), a real fleet on a `redis+sentinel://`
REDIS_URL, and the primary killed with `kill -9` in the middle of a run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine

from outbox import redis_conn
from outbox.errors import ConfigurationError
from outbox.models import FaxStatus
from outbox.pause import PauseMirror
from outbox.preflight import Outcome, check_redis
from outbox.settings import Settings
from outbox.throttle import FleetThrottle
from tests.acceptance.fleet import API_KEY, Fleet, fleet_env, log_dir
from tests.sentinel_cluster import MASTER, SentinelCluster
from workers.single_host.stack import Stack

pytestmark = pytest.mark.timeout(180)

REDIS_PASSWORD = "redisPw4failover"
SENTINEL_PASSWORD = "sentinelPw4failover"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """Primary 6600, replica 6601, sentinels 26390-26392 (+10 per xdist worker); the two
    secrets differ."""
    cluster = SentinelCluster(
        tmp_path / "sentinel", password=REDIS_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _sentinel_fleet(
    database_url: str, engine: Engine, tmp_path: Path, url: str, **extra: str
) -> Fleet:
    env = fleet_env(database_url, url)
    env["FAXOUT_REDIS_SENTINEL_PASSWORD"] = SENTINEL_PASSWORD
    env.update(extra)
    return Fleet(Stack(env, log_dir(tmp_path)), engine, url)


@pytest.fixture
def sentinel_fleet(
    cluster: SentinelCluster, database_url: str, engine: Engine, tmp_path: Path
) -> Iterator[Fleet]:
    fleet = _sentinel_fleet(database_url, engine, tmp_path, cluster.url())
    try:
        yield fleet
    finally:
        fleet.stack.stop_all(grace=15)


def _cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=fleet.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_no_password_in_logs(fleet: Fleet) -> None:
    for name in fleet.stack.processes:
        log = fleet.stack.log_text(name)
        for secret in (REDIS_PASSWORD, SENTINEL_PASSWORD, API_KEY):
            assert secret not in log, f"a password leaked into {name}'s log"


def test_kill_9_of_the_primary_mid_run_loses_nothing_and_sending_resumes(
    sentinel_fleet: Fleet, cluster: SentinelCluster
) -> None:
    fleet = sentinel_fleet
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=20-40")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(400)
    fleet.wait_until(lambda: fleet.submitted_count() >= 60, 60, "the run to be under way")

    old = cluster.kill_primary()
    killed_at = time.monotonic()
    new = cluster.wait_for_new_primary(old)
    elected_at = time.monotonic()
    before = fleet.submitted_count()
    # 20 more sent after the election (or the rest, if a slow election let the run finish).
    wanted = min(before + 20, 400)
    fleet.wait_until(
        lambda: fleet.submitted_count() >= wanted, 30, "sending to resume", interval=0.1
    )
    resumed_at = time.monotonic()
    fleet.wait_until(lambda: fleet.unfinished() == 0, 90, "every row to be submitted")
    fleet.assert_exactly_once(400)
    print(
        f"failover: elected {elected_at - killed_at:.1f}s after the kill, "
        f"20 more sent {resumed_at - elected_at:.1f}s after the election"
    )
    # Bounded: the broker reconnects (kombu's retry backs off 2, 4, 6 ... s) and the
    # redispatch delay (5 s here) republishes what the dead primary held.
    assert resumed_at - elected_at < 20

    # The throttle and the pause mirror live on the new primary now.
    promoted = cluster.server(new)
    tag = FleetThrottle.hash_tag()
    assert promoted.exists(f"{tag}:tat"), "the throttle did not write to the new primary"
    paused = _cli(fleet, "pause", "--reason", "after the failover")
    assert paused.returncode == 0, paused.stderr
    assert promoted.exists(PauseMirror(promoted).key), "the pause mirror is not on the new primary"
    # `faxout status` reads Redis through the sentinels too, and sees that mirror.
    status = _cli(fleet, "status", "--once")
    assert status.returncode == 0, status.stderr
    assert "pause mirror says PAUSED" in status.stdout, status.stdout
    fleet.enqueue(20, prefix="after")
    time.sleep(3)
    assert fleet.counts()[FaxStatus.PENDING] == 20, "a pause set after the failover did not hold"
    assert fleet.sandbox("stats")["faxes_created"] == 400
    resumed = _cli(fleet, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not promoted.exists(PauseMirror(promoted).key)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "the held rows after resume")
    fleet.assert_exactly_once(420)
    _assert_no_password_in_logs(fleet)


def test_sentinel_failover_mid_run_demoting_the_primary_loses_nothing(
    sentinel_fleet: Fleet, cluster: SentinelCluster
) -> None:
    """The old primary stays up as a replica: connections to it answer READONLY (or are
    unblocked) instead of breaking, and every client must still move to the new one."""
    fleet = sentinel_fleet
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=60-100")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(400)
    fleet.wait_until(lambda: fleet.submitted_count() >= 40, 60, "the run to be under way")
    old = cluster.failover()
    new = cluster.wait_for_new_primary(old)
    elected_at = time.monotonic()
    before = fleet.submitted_count()
    assert before <= 300, "the run ended before the failover: nothing was tested"
    fleet.wait_until(lambda: fleet.submitted_count() >= before + 20, 30, "sending to resume")
    print(f"SENTINEL FAILOVER: 20 more sent {time.monotonic() - elected_at:.1f}s after it")
    assert time.monotonic() - elected_at < 20
    # The throttle's script runs on the new primary, though the old one is still a master
    # for seconds (outbox/redis_conn.py asks the sentinels again every second).
    fleet.wait_until(
        lambda: bool(cluster.server(new).exists(f"{FleetThrottle.hash_tag()}:tat")),
        5,
        "the throttle to write to the new primary",
        interval=0.05,
    )

    def demoted() -> bool:
        role = cluster.server(old).execute_command("ROLE")  # type: ignore[no-untyped-call]
        return bool(role[0] == b"slave")

    # Its demotion wipes what the broker wrote there meanwhile: redispatch covers it.
    fleet.wait_until(demoted, 30, "the sentinels to demote the old primary")
    fleet.enqueue(100, prefix="after")
    fleet.wait_until(lambda: fleet.unfinished() == 0, 90, "every row to be submitted")
    fleet.assert_exactly_once(500)
    _assert_no_password_in_logs(fleet)


def test_a_wrong_master_name_or_password_stops_each_process_with_exit_2(
    cluster: SentinelCluster, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    cases = [
        (cluster.url(master="nosuchmaster"), SENTINEL_PASSWORD, "REDIS_URL names master"),
        (cluster.url(), "wrong-sentinel-pw", "FAXOUT_REDIS_SENTINEL_PASSWORD is refused"),
        (cluster.url(password="wrong-redis-pw"), SENTINEL_PASSWORD, "REDIS_URL has a password"),
    ]
    good = Settings.from_env(
        {"REDIS_URL": cluster.url(), "FAXOUT_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    )
    assert check_redis(good, 2.0).outcome == Outcome.PASSED
    for url, sentinel_password, said in cases:
        settings = Settings.from_env(
            {"REDIS_URL": url, "FAXOUT_REDIS_SENTINEL_PASSWORD": sentinel_password}
        )
        preflight = check_redis(settings, 2.0)  # `faxout preflight` names it too
        assert preflight.outcome == Outcome.FAILED and said in preflight.detail, preflight
        assert REDIS_PASSWORD not in str(preflight) and SENTINEL_PASSWORD not in str(preflight)
        fleet = _sentinel_fleet(
            database_url,
            engine,
            tmp_path,
            url,
            FAXOUT_REDIS_SENTINEL_PASSWORD=sentinel_password,
        )
        commands = [
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "solo"],
            [sys.executable, "-m", "workers.cli", "relay"],
        ]
        if said == cases[0][2]:  # the same check in every process: each kind of process once
            commands += [
                [sys.executable, "-m", "celery", "-A", "workers.app", "beat"],
                [sys.executable, "-m", "workers.cli", "webhooks", "serve", "--port", "0"],
            ]
        for argv in commands:
            env = {**fleet.stack.env, "MINTFAX_WEBHOOK_SECRET": "whsec_" + "a" * 32}
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            output = done.stdout + done.stderr
            assert done.returncode == 2, (argv, output[-2000:])
            assert said in output, (argv, output[-2000:])
            assert "Traceback" not in output, (argv, output[-2000:])
            for secret in (REDIS_PASSWORD, SENTINEL_PASSWORD, "wrong-redis-pw", "wrong-sentinel"):
                assert secret not in output, (argv, "a password is in the output")


def test_sentinels_down_at_start_is_one_warning_and_sending_starts_when_they_are_back(
    cluster: SentinelCluster, sentinel_fleet: Fleet
) -> None:
    fleet = sentinel_fleet
    cluster.stop_sentinels()
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.stack.start_worker("worker0", 2)
    fleet.stack.start_relay("relay0")
    fleet.enqueue(30)
    time.sleep(5)
    assert fleet.sandbox("stats")["faxes_created"] == 0
    for name in ("worker0", "relay0"):
        log = fleet.stack.log_text(name)
        assert log.count("no sentinel of REDIS_URL answers") == 1, log[-3000:]
        assert fleet.stack.processes[name].poll() is None, f"{name} exited:\n{log[-3000:]}"
    cluster.start_sentinels()
    fleet.wait_until(lambda: fleet.unfinished() == 0, 60, "sending once the sentinels are back")
    fleet.assert_exactly_once(30)
    # The sentinels gone again, the master still up: open connections keep working.
    cluster.stop_sentinels()
    fleet.enqueue(30, prefix="again")
    fleet.wait_until(lambda: fleet.unfinished() == 0, 30, "sending without the sentinels")
    fleet.assert_exactly_once(60)
    _assert_no_password_in_logs(fleet)


def test_a_client_follows_the_failover_and_the_sentinels_password_is_theirs(
    cluster: SentinelCluster,
) -> None:
    target = redis_conn.parse_redis_url(
        cluster.url(), sentinel_password=SecretStr(SENTINEL_PASSWORD)
    )
    assert redis_conn.check_at_startup(target) is None
    client = redis_conn.client(target, socket_timeout=2, socket_connect_timeout=2)
    mirror = PauseMirror(client)
    client.set(mirror.key, '[{"id": 1, "reason": "operator"}]')
    assert client.wait(1, 5000) == 1  # on the replica before the kill
    old = cluster.kill_primary()
    new = cluster.wait_for_new_primary(old)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.set("after-failover", "1")
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the client never reached the new primary"
            time.sleep(0.2)
    promoted = cluster.server(new)
    assert promoted.get("after-failover") == b"1"
    # Written before the kill, replicated: the pause survives the failover.
    assert mirror.is_paused() and promoted.exists(mirror.key)
    assert MASTER in repr(target) and REDIS_PASSWORD not in repr(target)
    # Two sentinels of three gone: the third answers, at start and for new connections.
    for port in cluster.sentinel_ports[:2]:
        cluster.stop_sentinel(port)
    assert redis_conn.check_at_startup(target) is None
    fresh = redis_conn.client(target, socket_timeout=2, socket_connect_timeout=2)
    assert fresh.get("after-failover") == b"1"
    fresh.close()
    client.close()


def test_a_redis_port_given_as_a_sentinel_is_named(cluster: SentinelCluster) -> None:
    url = f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1:{cluster.server_ports[0]}/{MASTER}/0"
    target = redis_conn.parse_redis_url(url)
    with pytest.raises(ConfigurationError) as caught:
        redis_conn.check_at_startup(target)
    assert caught.value.setting == "REDIS_URL"
    assert "a Redis server, where a sentinel is expected" in caught.value.reason
    assert REDIS_PASSWORD not in str(caught.value)
    # The Redis password wrong as well: then it can only be the sentinels' password at fault.
    wrong = redis_conn.parse_redis_url(url.replace(REDIS_PASSWORD, "not-it"))
    with pytest.raises(ConfigurationError) as caught:
        redis_conn.check_at_startup(wrong)
    assert caught.value.setting == "FAXOUT_REDIS_SENTINEL_PASSWORD"


def test_after_sentinel_failover_a_client_leaves_the_old_master_before_its_demotion(
    cluster: SentinelCluster,
) -> None:
    """redis-py alone keeps writing to the old master until the sentinels demote it (about
    10 s here), and those writes are then lost; ours asks the sentinels every second."""
    target = redis_conn.parse_redis_url(
        cluster.url(), sentinel_password=SecretStr(SENTINEL_PASSWORD)
    )
    client = redis_conn.client(target, socket_timeout=2, socket_connect_timeout=2)
    client.set("before", "1")
    old = cluster.failover()
    new = cluster.wait_for_new_primary(old)
    deadline = time.monotonic() + redis_conn.MASTER_RECHECK_SECONDS + 2
    while True:
        client.set("moved", str(time.monotonic()), px=60_000)
        if cluster.server(new).exists("moved"):
            break
        assert time.monotonic() < deadline, "the client still writes to the old master"
        time.sleep(0.1)
    # The old master had not been demoted yet: without the recheck, writes would still go
    # there and vanish at its demotion.
    role = cluster.server(old).execute_command("ROLE")  # type: ignore[no-untyped-call]
    assert role[0] == b"master", "the sentinels demoted the old master too soon to tell"
    client.close()


def test_a_plain_redis_given_as_a_sentinel_is_named(redis_url: str) -> None:
    """The test session's own Redis (no password) in a sentinel URL."""
    netloc = urlsplit(redis_url).netloc.rpartition("@")[2]
    target = redis_conn.parse_redis_url(f"redis+sentinel://{netloc}/{MASTER}/0")
    with pytest.raises(ConfigurationError) as caught:
        redis_conn.check_at_startup(target)
    assert caught.value.setting == "REDIS_URL"
    assert "which is not a Redis Sentinel" in caught.value.reason
