"""Outages cost seconds, not leases (issue 12, item 3): Postgres or Redis restarted in the
middle of a run. Real relay, workers, beat and sandbox; a Postgres cluster and a redis-server
of the test's own, so that restarting them disturbs nobody else. The lease is production's
(120 s): a row that waited it out would show as a stall of two minutes."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from outbox import schema
from outbox.db import make_engine
from tests import pg_cluster
from tests.acceptance.fleet import Fleet, fleet_env, log_dir
from tests.pg_cluster import PgCluster
from tests.servers import RedisServer, free_port
from workers.single_host.stack import Stack

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(not pg_cluster.available(), reason="no PostgreSQL server binaries"),
]

# Ports of this test's own servers (other engineers' tests use their own).
PG_PORTS = range(5440, 5450)
REDIS_PORTS = range(6400, 6410)
# Sending must resume this soon after the service is back.
RESUME_WITHIN = 10.0


@pytest.fixture
def own_postgres() -> Iterator[PgCluster]:
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="faxout-pg-")), free_port(PG_PORTS))
    cluster.init()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, free_port(REDIS_PORTS))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _fleet(database_url: str, redis_url: str, engine: Engine, tmp_path: Path) -> Fleet:
    env = fleet_env(database_url, redis_url)
    # Production's lease and redispatch delay: what an outage used to make rows wait out.
    env.update(FAXOUT_LEASE_SECONDS="120", FAXOUT_REDISPATCH_SECONDS="20")
    return Fleet(Stack(env, log_dir(tmp_path)), engine, redis_url)


@pytest.fixture
def pg_fleet(own_postgres: PgCluster, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    url = own_postgres.create_database("faxout")
    engine = make_engine(url, pool_size=1)
    schema.upgrade(engine)
    fleet = _fleet(url, redis_url, engine, tmp_path)
    try:
        yield fleet
    finally:
        fleet.stack.stop_all(grace=15)
        engine.dispose()


@pytest.fixture
def redis_fleet(
    database_url: str, engine: Engine, own_redis: RedisServer, tmp_path: Path
) -> Iterator[Fleet]:
    fleet = _fleet(database_url, own_redis.url, engine, tmp_path)
    try:
        yield fleet
    finally:
        fleet.stack.stop_all(grace=15)


def _created(fleet: Fleet) -> int:
    return int(fleet.sandbox("stats")["faxes_created"])


def _time_to_next_creation(fleet: Fleet, timeout: float = 150) -> float:
    """Seconds until the sandbox creates a fax it had not created when called."""
    start, before = time.monotonic(), _created(fleet)
    while time.monotonic() - start < timeout:
        if _created(fleet) > before:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"nothing sent within {timeout:.0f}s of the service coming back")


def _submitted_quietly(fleet: Fleet, count: int) -> None:
    """Every fax exactly once, none rescued (no lease was waited out), logs without
    tracebacks and with at most one outage line of each kind per process."""
    fleet.assert_exactly_once(count)
    with fleet.engine.connect() as conn:
        rescued = conn.exec_driver_sql(
            "SELECT count(*) FROM fax_outbox WHERE outcome_unknown"
        ).scalar_one()
    assert rescued == 0, "a row waited out its lease and was rescued"
    for name in fleet.stack.processes:
        if name == "sandbox":
            continue
        text = fleet.stack.log_text(name)
        assert "Traceback" not in text, f"{name}:\n{text[-4000:]}"


def _one_line_per_process_and_outage(fleet: Fleet, service: str) -> None:
    """Each worker (its parent and two pool processes) and the relay told the outage at
    most once per process, and its end as often: not once per task."""
    for name, processes in (("worker0", 3), ("worker1", 3), ("relay0", 1)):
        lines = fleet.stack.log_text(name).splitlines()
        lost = [line for line in lines if f"action=outage.{service}_lost" in line]
        back = [line for line in lines if f"action=outage.{service}_back" in line]
        assert 1 <= len(lost) <= processes, (name, lost)
        assert len(back) == len(lost), (name, lost, back)


def _restart_mid_run_costs_seconds(
    fleet: Fleet, service: str, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    """600 faxes under way; `service` stopped for 5 s and started again: sending resumes
    within RESUME_WITHIN, every fax once, no lease waited out, one line per process."""
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=100-200")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(600)
    fleet.wait_until(lambda: fleet.submitted_count() >= 100, 90, "the run to be under way")
    stop()
    time.sleep(5)
    start()
    back = time.monotonic()
    stall = _time_to_next_creation(fleet)
    print(f"\n{service} back -> next fax created at the sandbox: {stall:.2f} s")
    fleet.wait_until(lambda: fleet.unfinished() == 0, 200, "the rest after the restart")
    print(f"drained {time.monotonic() - back:.1f} s after {service} was back")
    _submitted_quietly(fleet, 600)
    assert stall < RESUME_WITHIN
    _one_line_per_process_and_outage(fleet, service)


def test_postgres_restart_mid_run_costs_seconds(pg_fleet: Fleet, own_postgres: PgCluster) -> None:
    # A fast stop: every connection dropped, POSTs in flight.
    _restart_mid_run_costs_seconds(
        pg_fleet, "database", lambda: own_postgres.stop("fast"), own_postgres.start
    )


def test_postgres_away_for_longer_than_the_lease_still_sends_each_fax_once(
    pg_fleet: Fleet, own_postgres: PgCluster
) -> None:
    """The outage (15 s) outlasts the lease (10 s): when the database is back, beat's rescuer
    and the workers' kept outcomes race for the same rows. Whoever wins, a kept 201 is never
    lost (adopted by the row the rescuer gave back, or replayed by the next claim) and no fax
    is created twice."""
    fleet = pg_fleet
    fleet.stack.env.update(FAXOUT_LEASE_SECONDS="10", FAXOUT_HTTP_TIMEOUT_SECONDS="5")
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=100-200")
    fleet.start(workers=2, concurrency=2)
    fleet.enqueue(300)
    fleet.wait_until(lambda: fleet.submitted_count() >= 50, 90, "the run to be under way")
    own_postgres.stop("fast")
    time.sleep(15)
    own_postgres.start()
    stall = _time_to_next_creation(fleet)
    fleet.wait_until(lambda: fleet.unfinished() == 0, 120, "the rest after the restart")
    fleet.assert_exactly_once(300)
    assert stall < RESUME_WITHIN
    with fleet.engine.connect() as conn:
        lost_lease_acceptances = conn.exec_driver_sql(
            "SELECT count(*) FROM fax_attempts WHERE lease_lost AND mintfax_fax_id IS NOT NULL"
        ).scalar_one()
    print(f"\nnext fax {stall:.2f} s after; {lost_lease_acceptances} 201(s) on a lost lease")


def test_redis_restart_mid_run_costs_seconds(redis_fleet: Fleet, own_redis: RedisServer) -> None:
    # Broker, throttle and pause mirror gone, and emptied: no persistence.
    _restart_mid_run_costs_seconds(redis_fleet, "redis", own_redis.stop, own_redis.start)
