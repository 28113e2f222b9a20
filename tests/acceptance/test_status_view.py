"""`faxout status` as an operator runs it: `--json` for scripts and `--once` match the database,
and without either, in a terminal (a real pseudo-terminal here), the view refreshes in place
until Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psycopg
import redis
from sqlalchemy import Engine, text

from outbox import FaxIntent, enqueue_faxes
from outbox.fleet_status import WebhookCounters
from tests.fleet_data import PDF, SECRET_NUMBER, seed
from workers.single_host.embedded import free_port

FAXOUT = Path(sys.executable).with_name("faxout")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAXOUT_", "MINTFAX_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**env, "DATABASE_URL": database_url, "REDIS_URL": redis_url}


def _status(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(FAXOUT), "status", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stdout + done.stderr
    return done


def _now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        moment: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return moment


def test_json_matches_the_database(engine: Engine, database_url: str, redis_url: str) -> None:
    seeded = seed(engine, _now(engine))
    WebhookCounters(redis.Redis.from_url(redis_url)).count("refused_401")
    done = _status("--json", env=_env(database_url, redis_url))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    with psycopg.connect(database_url) as conn:
        by_status = dict(conn.execute("SELECT status::text, count(*) FROM fax_outbox GROUP BY 1"))
    assert {k: v for k, v in shown["counts"].items() if v} == by_status
    assert shown["oldest_pending"]["id"] == seeded.oldest_pending_id
    assert shown["attempts"]["submitted"] == seeded.submitted_attempts
    assert shown["attempts"]["rate_limited"] == seeded.http_429
    assert shown["balance"]["available"] == 4321
    assert [p["reason"] for p in shown["pauses"]] == ["operator"]
    assert shown["redis"]["webhook_refused"] == {"401": 1}
    assert shown["insert_to_submit"]["count"] == len(seeded.to_submit)
    assert {r["status"] for r in shown["rows_to_look_at"]} == {
        "needs_review",
        "failed",
        "rejected",
    }
    assert SECRET_NUMBER not in done.stdout


def test_once_shows_every_part(engine: Engine, database_url: str, redis_url: str) -> None:
    seeded = seed(engine, _now(engine))
    done = _status("--once", env=_env(database_url, redis_url))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"oldest pending: fax {seeded.oldest_pending_id} " in out
    assert "fleet PAUSED: operator" in out
    assert "balance: 4321 available, 250 held" in out
    assert "throttle: 60/min" in out
    assert f"since the start: submitted {seeded.submitted_attempts}, delivered 5" in out
    assert "last hour, insert to submit: median <= 5s" in out
    assert "alert " in out and "fax_failed" in out
    assert "rows to look at" in out and "unknown_outcome" in out
    assert SECRET_NUMBER not in out and "+1212*****91" in out


def test_redis_down_shows_the_database_and_says_so(engine: Engine, database_url: str) -> None:
    seed(engine, _now(engine))
    done = _status("--once", env=_env(database_url, f"redis://127.0.0.1:{free_port()}/0"))
    assert done.returncode == 0, done.stderr
    assert "redis: unavailable (FleetStateUnavailable)" in done.stdout
    assert "duplicate unknown, refused unknown" in done.stdout
    assert "fleet PAUSED: operator" in done.stdout


def _read_until(fd: int, pattern: re.Pattern[str], seen: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536).decode(errors="replace")
            except OSError:  # the terminal closed: the process is gone
                break
            seen.append(chunk)
        found = pattern.search(_ANSI.sub("", "".join(seen)))
        if found:
            return found.group(0)
    raise AssertionError(f"never saw {pattern.pattern!r} in:\n{_ANSI.sub('', ''.join(seen))}")


def test_live_view_refreshes_in_a_terminal_until_ctrl_c(
    engine: Engine, database_url: str, redis_url: str
) -> None:
    seeded = seed(engine, _now(engine))
    total = sum(seeded.counts.values())
    leader, follower = pty.openpty()
    env = {**_env(database_url, redis_url), "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen(
        [str(FAXOUT), "status", "--interval", "0.5"],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    seen: list[str] = []
    try:
        _read_until(leader, re.compile(rf"total\s*│\s*{total}\s*│"), seen, 30)
        with engine.begin() as conn:
            enqueue_faxes(
                conn,
                [FaxIntent(to="+15005550001", document=PDF, filename="a.pdf", reference="live")],
                environment="sandbox",
            )
        # The same process shows the new row: the view was refreshed, not printed once.
        _read_until(leader, re.compile(rf"total\s*│\s*{total + 1}\s*│"), seen, 30)
        assert process.poll() is None
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(leader)
    assert "Traceback" not in "".join(seen)


def test_live_view_survives_losing_its_database_until_ctrl_c(
    engine: Engine, database_url: str, redis_url: str
) -> None:
    seed(engine, _now(engine))
    engine.dispose()
    leader, follower = pty.openpty()
    env = {**_env(database_url, redis_url), "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen(
        [str(FAXOUT), "status", "--interval", "0.5"],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    seen: list[str] = []
    try:
        _read_until(leader, re.compile(r"fleet PAUSED: operator"), seen, 30)
        # The database goes away under the running view (its connections are cut too).
        name = database_url.rsplit("/", 1)[1]
        admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        _read_until(leader, re.compile(r"refresh failed: database unavailable"), seen, 30)
        assert process.poll() is None  # still showing the last view, still trying
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(leader)
    assert "Traceback" not in "".join(seen)
