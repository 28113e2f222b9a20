"""The chaos run's own servers: it restarts them, so it never uses the Postgres or Redis that
other tests (and engineers) share. Postgres is `tests.pg_cluster.PgCluster`; Redis a plain
`redis-server` without persistence, so a restart loses everything it held (the broker's queue,
the throttle, the pause mirror), as invariant 1 allows."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_PORTS = range(5450, 5460)
REDIS_PORTS = range(6410, 6420)


def free_port(candidates: range) -> int:
    """The first port of `candidates` free on 127.0.0.1 (the run's ports are assigned ranges)."""
    for port in candidates:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
            contextlib.suppress(OSError),
        ):
            sock.bind(("127.0.0.1", port))
            return port
    raise AssertionError(f"no free port in {candidates}")


@dataclass
class RedisServer:
    """A `redis-server` of the run's own on `port`, stopped and started again by the run."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            time.sleep(0.02)
        raise AssertionError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        """SIGTERM (nothing is saved: no persistence) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
