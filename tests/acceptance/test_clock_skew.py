"""One clock for leases and schedules, the database's (issue 8, item 4): real workers, relay
and beat whose hosts' wall clocks are minutes apart (libfaketime) rescue no live lease and
send nothing twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from outbox.models import fax_attempts, fax_outbox
from tests.acceptance.fleet import Fleet

# Debian's faketime package, whatever the architecture's library directory is called.
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), Path())

pytestmark = [
    pytest.mark.timeout(240),
    # On a developer's machine without it, skipped; CI installs it (.ci/run), and there a
    # missing library fails the test instead of skipping it.
    pytest.mark.skipif(
        not FAKETIME.is_file() and not os.environ.get("CI"),
        reason="needs libfaketime (apt-get install faketime)",
    ),
]


def _host_clock(fleet: Fleet, offset: str) -> None:
    """The next process started runs on a wall clock `offset` away (e.g. "-3m")."""
    # (Its monotonic clock moves with it: FAKETIME_DONT_FAKE_MONOTONIC breaks time.sleep.)
    fleet.stack.env.update(LD_PRELOAD=str(FAKETIME), FAKETIME=offset)


def _rescue_pass_on_a_host(fleet: Fleet, offset: str) -> int:
    """One pass of the production lease rescuer (workers/runtime.py) on a host `offset` off."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from outbox.settings import Settings\n"
            "from workers.runtime import Runtime\n"
            "Runtime.configure(Settings.from_env())\n"
            "print(Runtime.get().rescuer.run_once())\n",
        ],
        env={**fleet.stack.env, "LD_PRELOAD": str(FAKETIME), "FAKETIME": offset},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.split()[-1])


def test_hosts_minutes_apart_rescue_no_live_lease_and_send_nothing_twice(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0", "--faults", "latency_ms=1500")
    # Lease rescue runs on whichever worker takes beat's task: a host two minutes fast sees
    # the leases of a host three minutes slow as long expired, unless the database decides.
    _host_clock(fleet, "-3m")
    fleet.stack.start_worker("worker0", 2)
    _host_clock(fleet, "+2m")
    fleet.stack.start_worker("worker1", 2)
    _host_clock(fleet, "+1m")
    fleet.stack.start_relay("relay0")
    _host_clock(fleet, "+2m")
    fleet.stack.start_beat()
    for name in ("worker0", "worker1"):
        fleet.stack.wait_for_worker_ready(name)

    # 1.5 s each, four at a time: about 20 s of live leases, four or five rescue passes.
    fleet.enqueue(56)
    # Beat's own passes land on either worker; these run on the fast host while the slow
    # host's leases are live, every time.
    for _ in range(3):
        fleet.wait_until(lambda: fleet.counts()["sending"] > 0, 60, "faxes in flight", 0.05)
        assert _rescue_pass_on_a_host(fleet, "+2m") == 0
    fleet.wait_until(lambda: fleet.unfinished() == 0, 120, "all 56 rows to be submitted")

    stats = fleet.assert_exactly_once(56)
    assert stats["idempotent_replays"] == 0, stats  # one POST per fax: nothing was resent
    with fleet.engine.connect() as conn:
        assert conn.execute(select(func.max(fax_outbox.c.attempts))).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(fax_attempts)).scalar_one() == 56
        assert not conn.execute(select(func.count()).where(fax_attempts.c.lease_lost)).scalar_one()
    assert "rescued" not in fleet.stack.log_text("beat")
