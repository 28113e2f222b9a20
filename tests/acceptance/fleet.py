"""A whole fleet for acceptance tests: the sandbox, relays, Celery workers and beat as real
processes (workers/single_host/stack.py, the same code `faxout demo` runs), on this test's own
database and Redis index."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, func, select

from outbox import FaxIntent, enqueue_faxes
from outbox.models import FaxStatus, fax_outbox
from outbox.repository import count_by_status
from workers.single_host.stack import Stack
from workers.single_host.stack import fleet_env as stack_fleet_env

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
API_KEY = "fx_test_acceptance_0123456789"


def fleet_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment every process of a test fleet shares."""
    return stack_fleet_env(
        database_url,
        redis_url,
        API_KEY,
        FAXOUT_RATE_LIMIT_PER_MINUTE="60000",
        FAXOUT_LEASE_SECONDS="10",
        FAXOUT_HTTP_TIMEOUT_SECONDS="5",
        FAXOUT_REDISPATCH_SECONDS="5",
    )


@dataclass
class Fleet:
    """Handles on a running test fleet."""

    stack: Stack
    engine: Engine
    redis_url: str
    sandbox_url: str = ""
    killed: set[str] = field(default_factory=set)

    @property
    def control(self) -> str:
        return self.sandbox_url.removesuffix("/v1") + "/sandbox"

    def start_sandbox(self, *args: str) -> None:
        self.sandbox_url = self.stack.start_sandbox(*args)
        self.stack.env["MINTFAX_BASE_URL"] = self.sandbox_url

    def start(
        self, *, workers: int = 2, concurrency: int = 2, relays: int = 1, beat: bool = True
    ) -> None:
        """Start relays, workers and beat (after the sandbox), and wait for the workers."""
        assert self.sandbox_url, "start the sandbox first"
        for n in range(workers):
            self.stack.start_worker(f"worker{n}", concurrency)
        for n in range(relays):
            self.stack.start_relay(f"relay{n}")
        if beat:
            self.stack.start_beat()
        for n in range(workers):
            self.stack.wait_for_worker_ready(f"worker{n}")

    def enqueue(
        self, count: int, numbers: Sequence[str] = ("+15005550001",), prefix: str = "r"
    ) -> list[int]:
        """Enqueue `count` faxes round-robin over `numbers`, in batches of 500."""
        ids: list[int] = []
        for start in range(0, count, 500):
            intents = [
                FaxIntent(
                    to=numbers[i % len(numbers)],
                    document=PDF,
                    filename="doc.pdf",
                    reference=f"{prefix}-{i}",
                )
                for i in range(start, min(count, start + 500))
            ]
            with self.engine.begin() as conn:
                ids += [r.id for r in enqueue_faxes(conn, intents, environment="sandbox")]
        return ids

    def counts(self) -> dict[FaxStatus, int]:
        with self.engine.connect() as conn:
            return count_by_status(conn)

    def unfinished(self) -> int:
        counts = self.counts()
        return counts[FaxStatus.PENDING] + counts[FaxStatus.SENDING]

    def submitted_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).where(fax_outbox.c.status == FaxStatus.SUBMITTED)
            ).scalar_one()

    def sandbox(self, path: str, **json: Any) -> Any:
        """GET (or POST with a JSON body) a /sandbox control endpoint."""
        url = f"{self.control}/{path}"
        response = httpx.post(url, json=json, timeout=10) if json else httpx.get(url, timeout=30)
        response.raise_for_status()
        return response.json()

    def assert_no_secret_in_logs(self) -> None:
        """Invariant 7: the API key appears in no process's output."""
        for name in self.stack.processes:
            log = self.stack.log_text(name)
            assert log, f"{name} logged nothing"
            assert API_KEY not in log, f"the API key leaked into {name}'s log"
            assert API_KEY[8:] not in log, f"part of the API key leaked into {name}'s log"

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and its children: a crash, not a shutdown."""
        self.killed.add(name)
        self.stack.signal(name, signal.SIGKILL)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def wait_until(
        self, condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            for name, process in self.stack.processes.items():
                if process.poll() is not None and name not in self.killed:
                    raise AssertionError(
                        f"{name} died ({process.returncode}):\n{self.stack.log_text(name)[-3000:]}"
                    )
            time.sleep(interval)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; counts={self.counts()}"
        )

    def assert_exactly_once(self, expected: int) -> dict[str, Any]:
        """Every row submitted, and the sandbox holds exactly one fax per row."""
        counts = self.counts()
        assert counts[FaxStatus.SUBMITTED] == expected, counts
        stats = self.sandbox("stats")
        assert stats["faxes_created"] == expected, stats
        assert stats["duplicate_creations"] == 0, stats
        faxes = self.sandbox("faxes")
        faxes = faxes["data"] if isinstance(faxes, dict) else faxes
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(fax_outbox.c.idempotency_key, fax_outbox.c.mintfax_fax_id)
            ).all()
        by_key = {f["idempotency_key"]: f["id"] for f in faxes}
        assert len(by_key) == expected
        assert {key: fax_id for key, fax_id in rows} == by_key
        return stats


def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir(exist_ok=True)
    return path
