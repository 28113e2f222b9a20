"""Run the whole fleet as real processes: sandbox, relays, Celery workers, beat, Flower, the
webhook receiver.

Used by `faxout demo` and by the acceptance tests, so that both exercise exactly what an
operator runs. Each process logs to its own file; stopping is graceful (SIGTERM, then SIGKILL
after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workers.app import MAINTENANCE_QUEUE, QUEUE
from workers.single_host.embedded import free_port

# Variables of the calling shell that must not leak into a fleet started for a demo, a test or
# a benchmark: the fleet gets exactly the settings it is given.
_SCRUBBED = ("DATABASE_URL", "REDIS_URL", "MINTFAX_", "FAXOUT_", "CELERY_")


def fleet_env(database_url: str, redis_url: str, api_key: str, **settings: str) -> dict[str, str]:
    """The environment shared by every process of a fleet: this process's environment minus
    fax-outbox's own variables, plus the given services, sandbox key and `FAXOUT_*` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MINTFAX_API_KEY=api_key,
        FAXOUT_ENVIRONMENT="sandbox",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


class StackError(RuntimeError):
    """A process of the stack failed to start or died."""


@dataclass
class Stack:
    """A set of child processes sharing one environment (the fleet's settings)."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        if name in self.processes and self.processes[name].poll() is None:
            raise StackError(f"{name} is already running")
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log_text(self, name: str) -> str:
        """What process `name` has logged so far."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_sandbox(self, *args: str, port: int | None = None) -> str:
        """Start the mintfax simulator; returns its base URL including /v1."""
        port = port or free_port()
        self._spawn(
            "sandbox",
            [sys.executable, "-m", "mintfax_sandbox", "--port", str(port), *args],
        )
        base = f"http://127.0.0.1:{port}"
        self._wait_http(f"{base}/sandbox/stats", "sandbox")
        return f"{base}/v1"

    def start_relay(self, name: str = "relay") -> None:
        """Start a relay process."""
        self._spawn(name, [sys.executable, "-m", "workers.cli", "relay"])

    def start_worker(
        self,
        name: str = "worker",
        concurrency: int = 2,
        queues: tuple[str, ...] = (QUEUE, MAINTENANCE_QUEUE),
        loglevel: str = "INFO",
    ) -> None:
        """Start a Celery worker (prefork pool of `concurrency` processes) consuming `queues`
        (by default submits and beat's maintenance tasks), logging at `loglevel`."""
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-Q",
                ",".join(queues),
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                loglevel,
            ],
        )

    def start_beat(self, loglevel: str = "INFO") -> None:
        """Start Celery beat (maintenance schedule), logging at `loglevel`."""
        self._spawn(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "beat",
                "--schedule",
                str(self.log_dir / "beat-schedule"),
                "--loglevel",
                loglevel,
            ],
        )

    def start_webhooks(
        self, port: int | None = None, *, secret: str | None = None, name: str = "webhooks"
    ) -> str:
        """Start the webhook receiver as an operator runs it (`faxout webhooks serve --host
        127.0.0.1 --port P`) and wait until `GET /healthz` answers; returns the URL to register
        at mintfax (`http://127.0.0.1:P/webhooks/mintfax`). The receiver reads its signing
        secrets from `MINTFAX_WEBHOOK_SECRET`: `secret` sets it for this process only (the
        workers do not need it), else the stack's environment must hold it."""
        port = port or free_port()
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "workers.cli",
                "webhooks",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={"MINTFAX_WEBHOOK_SECRET": secret} if secret is not None else None,
        )
        base = f"http://127.0.0.1:{port}"
        self._wait_http(f"{base}/healthz", name)
        return f"{base}/webhooks/mintfax"

    def start_flower(
        self, port: int | None = None, *, api: bool = False, basic_auth: str | None = None
    ) -> str:
        """Start Flower on 127.0.0.1; returns its address. `api` opens its HTTP API without
        authentication (tests only); `basic_auth` (`user:password`) requires that login for
        every page and the API, given in the environment (FLOWER_BASIC_AUTH), not the argv
        that `ps` shows."""
        port = port or free_port()
        env = {"FLOWER_UNAUTHENTICATED_API": "true"} if api else {}
        if basic_auth is not None:
            env["FLOWER_BASIC_AUTH"] = basic_auth
        self._spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        self._wait_http(f"{url}/healthcheck", "flower", timeout=30)
        return url

    def wait_for_worker_ready(self, name: str, timeout: float = 30) -> None:
        """Block until Celery worker `name` logs that it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log_text(name):
                return
            self._check_alive(name)
            time.sleep(0.1)
        raise StackError(f"{name} not ready after {timeout:.0f}s:\n{self.log_text(name)[-2000:]}")

    def signal(self, name: str, signum: int) -> None:
        """Send `signum` to process `name` (the whole process group for Celery's children)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def kill_child_of(self, name: str) -> int:
        """SIGKILL one pool child of Celery worker `name` (a crash mid-task); returns its pid."""
        parent = self.processes[name].pid
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if not children:
            raise StackError(f"{name} has no child processes")
        pid = int(children[0])
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, name: str, grace: float = 20.0) -> int | None:
        """SIGTERM process `name` and wait (SIGKILL after `grace`); returns its exit code."""
        process = self.processes.get(name)
        if process is None:
            return None
        if process.poll() is None:
            # The main process only: Celery's parent then stops its pool children itself after
            # they finish their tasks (a SIGTERM to the whole group would kill them mid-task).
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(name, signal.SIGKILL)
                process.wait(timeout=10)
        return process.returncode

    def stop_all(self, grace: float = 20.0) -> None:
        """Stop everything: relays first (no new messages), then workers and beat together (each
        finishes what it holds), the sandbox last."""
        relays = [n for n in self.processes if n.startswith("relay")]
        rest = [n for n in self.processes if n not in relays and n != "sandbox"]
        for group in (relays, rest, ["sandbox"]):
            running = [n for n in group if n in self.processes]
            for name in running:  # signal the whole group first, then wait: in parallel
                process = self.processes[name]
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            for name in running:
                self.stop(name, grace)

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise StackError(
                f"{name} exited with {process.returncode}:\n{self.log_text(name)[-2000:]}"
            )

    def _wait_http(self, url: str, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            time.sleep(0.05)
        raise StackError(f"{name} did not answer at {url} within {timeout:.0f}s")

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
