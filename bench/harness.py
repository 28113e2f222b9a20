"""Plumbing shared by the delivery benchmarks (drain, latency, throttle_accuracy, claim).

Not a benchmark itself (running it does nothing). It gives each benchmark what the acceptance
tests' fleet harness gives each test: the Postgres and Redis of the run (`DATABASE_URL` /
`REDIS_URL` when set, else embedded servers), a fresh migrated database of its own, a Redis
database index of its own (flushed), the fleet's environment, the real processes through
`workers.single_host.stack.Stack` (the code `faxout demo` runs), and CPU accounting from /proc.

CPU accounting reads `utime + stime` of `/proc/<pid>/stat` (Linux): user plus system time of
that process alone (children's time is not folded in). Celery's pool children are long-lived,
so reading the parent and each live child before and after a measurement gives its CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from sqlalchemy.engine import make_url

from outbox import schema
from outbox.db import make_engine
from outbox.settings import libpq_url
from workers.single_host import embedded
from workers.single_host.stack import Stack
from workers.single_host.stack import fleet_env as stack_fleet_env

RESULTS_DIR = Path(__file__).resolve().parent / "results"
API_KEY = "fx_test_bench_0123456789"
# The sandbox's "always delivered, one page" magic number.
DELIVERED_NUMBER = "+15005550001"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def services(*, need_redis: bool = True) -> Iterator[embedded.ServiceURLs]:
    """The run's Postgres and Redis: from the environment, or embedded ones for the run."""
    redis_url = os.environ.get("REDIS_URL") or (None if need_redis else "redis://unused")
    with embedded.services(os.environ.get("DATABASE_URL") or None, redis_url) as urls:
        yield urls


def with_database(server_url: str, name: str) -> str:
    """`server_url` pointed at database `name` (libpq form)."""
    return libpq_url(make_url(libpq_url(server_url)).set(database=name).render_as_string(False))


@contextlib.contextmanager
def scratch_database(server_url: str, label: str) -> Iterator[str]:
    """A freshly created, migrated database of this run's own; dropped afterwards."""
    admin_url = libpq_url(server_url)
    name = f"faxout_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_database(server_url: str, index: int) -> str:
    """`server_url` on database `index`, flushed, so no earlier state (throttle) leaks in."""
    parts = urlsplit(server_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, ""))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def fleet_env(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    """The environment every process of a benchmark fleet shares."""
    return stack_fleet_env(database_url, redis_url, API_KEY, **overrides)


@contextlib.contextmanager
def stack(env: dict[str, str], label: str) -> Iterator[Stack]:
    """A process stack logging into a temporary directory; every process stopped at the end.

    Set `BENCH_KEEP_LOGS=1` to keep the logs (their directory is printed).
    """
    keep = bool(os.environ.get("BENCH_KEEP_LOGS"))
    log_dir = Path(tempfile.mkdtemp(prefix=f"faxout-bench-{label}-"))
    running = Stack(env=env, log_dir=log_dir)
    try:
        yield running
    finally:
        running.stop_all(grace=15)
        if keep:
            print(f"logs kept in {log_dir}", file=sys.stderr)
        else:
            for path in log_dir.iterdir():
                path.unlink()
            log_dir.rmdir()


def start_fleet(running: Stack, *, workers: int, concurrency: int, beat: bool = False) -> None:
    """Start Celery workers and one relay on `running` (sandbox first), wait until ready."""
    for n in range(workers):
        running.start_worker(f"worker{n}", concurrency)
    running.start_relay("relay")
    if beat:
        running.start_beat()
    for n in range(workers):
        running.wait_for_worker_ready(f"worker{n}", timeout=60)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def stack_pids(running: Stack, names: list[str]) -> list[int]:
    """The pids of processes `names` of `running`."""
    return [running.processes[name].pid for name in names]


def insert_pending(conn: psycopg.Connection[Any], count: int, prefix: str) -> float:
    """Insert `count` due faxes in one transaction; returns the commit time (epoch seconds).

    Plain SQL from the database (what any service may do), one statement: the NOTIFY trigger
    fires once and the relay wakes once. The time is taken right after COMMIT returns.
    """
    conn.execute(
        "INSERT INTO fax_outbox (to_number, document, filename, reference)"
        " SELECT %s, %s, 'doc.pdf', %s || g FROM generate_series(1, %s) AS g",
        (DELIVERED_NUMBER, PDF, f"{prefix}-", count),
    )
    conn.commit()
    return time.time()


def quantile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        "redis": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
    }


def host() -> dict[str, Any]:
    """The machine in words, for bench/RESULTS.md: CPU model and count, memory, OS, Python.

    Read from /proc and /etc/os-release (Linux); a field that cannot be read says "unknown".
    """

    def first(path: str, key: str, sep: str = ":") -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                name, _, value = line.partition(sep)
                if name.strip() == key:
                    return value.strip().strip('"')
        return "unknown"

    memory = first("/proc/meminfo", "MemTotal")  # "8123456 kB"
    memory_gib = (
        f"{int(memory.split()[0]) / 1024**2:.1f} GiB" if memory[:1].isdigit() else "unknown"
    )
    return {
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory": memory_gib,
        "os": f"{first('/etc/os-release', 'PRETTY_NAME', '=')}, kernel {platform.release()}",
        "python": sys.version.split()[0],
    }


def server_versions() -> dict[str, str]:
    """The Postgres and Redis versions of the servers the benchmarks use (as `services()` picks
    them: `DATABASE_URL` / `REDIS_URL`, else embedded ones, started here to ask)."""
    with services() as urls:
        with psycopg.connect(libpq_url(urls.database_url)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        client = redis.Redis.from_url(urls.redis_url)
        try:
            info = client.info("server")
        finally:
            client.close()
    where = {
        "postgres": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        "redis": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
    }
    return {
        "postgres": f"{row[0] if row else 'unknown'} ({where['postgres']})",
        "redis": f"{info.get('redis_version', 'unknown')} ({where['redis']})",
    }


def write_results(name: str, result: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json`; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path
