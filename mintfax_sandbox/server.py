"""Running the simulator: uvicorn in this process (a thread, for tests) or as the main process.

Connection faults need the raw transport of the request's connection, which ASGI does not expose;
`protocol_class` subclasses uvicorn's h11 protocol to keep a client-address -> transport map the
app looks up. Proxy headers are off, so `scope["client"]` is always the socket's peer address.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol


def protocol_class(transports: dict[Any, asyncio.Transport]) -> type[H11Protocol]:
    """uvicorn's h11 protocol, recording each connection's transport in `transports`."""

    class TrackingH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                transports[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None and transports.get(self.client) is self.transport:
                del transports[self.client]
            super().connection_lost(exc)

    return TrackingH11Protocol


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket (port 0 = any free port, known before the server starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _CleanExitServer(uvicorn.Server):
    """Exit status 0 after a graceful, signal-driven shutdown.

    uvicorn re-raises SIGTERM/SIGINT once it has shut down, which makes the process die with
    128+signal; scripts (`set -e`, the demo) and tests expect a clean stop to exit 0.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def make_server(
    app: ASGIApp,
    transports: dict[Any, asyncio.Transport] | None = None,
    *,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn server for `app` with fault support and no access log (it costs throughput)."""
    config = uvicorn.Config(
        app,
        http=protocol_class({} if transports is None else transports),
        ws="none",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    return _CleanExitServer(config)


class ThreadedServer:
    """An ASGI app on a free port in a background thread: `start()`, use `.url`, `stop()`.

    Pass the sandbox's `transports` map so connection faults work.
    """

    def __init__(
        self,
        app: ASGIApp,
        transports: dict[Any, asyncio.Transport] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._sock = bind(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._server = make_server(app, transports)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"sandbox-{self.port}",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        """Start serving; returns once the socket accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.002)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (in-flight requests finish, background tasks are cancelled)."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    app: ASGIApp,
    transports: dict[Any, asyncio.Transport],
    host: str,
    port: int,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
    notices: Sequence[str] = (),
) -> None:
    """Serve in the foreground until SIGTERM/SIGINT (uvicorn's handlers shut down cleanly).

    `notices` are written to stderr once the port is bound, before the "listening" line.
    """
    sock = bind(host, port)
    for line in notices:
        print(line, file=sys.stderr, flush=True)
    server = make_server(app, transports)
    bound_port = sock.getsockname()[1]

    async def main() -> None:
        async def announce_when_ready() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.005)
            announce(f"sandbox listening on http://{host}:{bound_port}")

        ready = asyncio.create_task(announce_when_ready())
        await server.serve(sockets=[sock])
        ready.cancel()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    sys.stdout.flush()
