"""A Celery worker or beat with invalid settings stops at once with one clear line.

Celery swallows an exception raised while it configures the app and goes on with its own
defaults, an AMQP broker on localhost: a worker with a wrong setting would quietly connect to
whatever listens there (this machine runs a RabbitMQ) and never send a fax.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def refused_in_one_line(args: list[str], **settings: str) -> str:
    """Run `celery -A workers.app ARGS` with only `settings` of ours; it must stop with exit 2
    and one "error:" line, which is returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAXOUT_", "MINTFAX_"))}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", *args],
        env=env | settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "amqp://" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize("command", [["worker", "--pool", "solo"], ["beat"]])
def test_invalid_settings_stop_the_process_with_one_line(command: list[str]) -> None:
    error = refused_in_one_line(
        command,
        DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/15",
        MINTFAX_API_KEY="fx_test_config_check",
        FAXOUT_LEASE_SECONDS="10",  # shorter than the default 30 s HTTP timeout
    )
    assert "FAXOUT_LEASE_SECONDS" in error


def test_a_pool_that_shares_one_process_among_sends_is_refused(
    database_url: str, redis_url: str
) -> None:
    # A worker process has one submit context: on a threads or greenlet pool its sends would
    # share it and go one at a time whatever --concurrency says. Refused at start, in a line.
    error = refused_in_one_line(
        ["worker", "--pool", "threads", "-c", "4"],
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MINTFAX_API_KEY="fx_test_pool_check",
    )
    assert "pool is not supported" in error and "prefork" in error


def test_the_process_pools_are_the_supported_ones() -> None:
    from celery.concurrency.prefork import TaskPool

    from workers.app import pool_is_supported

    assert [pool_is_supported(p) for p in ("prefork", "processes", "solo", TaskPool)] == [True] * 4
    assert [pool_is_supported(p) for p in ("threads", "gevent")] == [False, False]
