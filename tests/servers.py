"""Servers of a test's own, on ports of an assigned range, which the test may stop and start
(the outage and chaos tests restart Redis; the Postgres side is `tests.pg_cluster.PgCluster`).
A plain `redis-server` without persistence: a restart loses everything it held."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


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
