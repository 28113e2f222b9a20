"""pytest fixtures for the mintfax sandbox: `def test_x(sandbox): ...`.

- `sandbox`: a fresh simulator on a free port in this process (default configuration: 60
  requests/min, faults off). `sandbox.base_url` is the mintfax base URL (`.../v1`), `sandbox.url`
  the server root, `sandbox.api_key` a valid `fx_test_` key; the control methods go through the
  `/sandbox` HTTP API, so they are safe from any thread (`SandboxHandle(url, control_token=T)`
  sends the control token a simulator started with `--control-token T` requires).
- `sandbox_factory(config=SandboxConfig(...))`: the same with a configuration of your own.
- `sandbox_process(*cli_args)`: `python -m mintfax_sandbox` as a real subprocess (acceptance tests).
- `sandbox_cli(*cli_args)`: the same run to completion (for start-up errors): its exit status and
  output.
- `webhook_sink`: a receiver that records every webhook (raw body + headers) and answers with a
  scripted status/delay, for tests of delivery, retries and signatures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mintfax_sandbox import Sandbox, SandboxConfig, ThreadedServer, create_app

__all__ = [
    "SANDBOX_API_KEY",
    "SERVER_FIXTURES",
    "SMALL_PDF",
    "SandboxHandle",
    "SandboxProcess",
    "WebhookSink",
    "running_sandbox",
    "sandbox",
    "sandbox_cli",
    "sandbox_factory",
    "sandbox_process",
    "start_sandbox_process",
    "webhook_sink",
]

SANDBOX_API_KEY = "fx_test_sandbox_fixture_key"
SMALL_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
# The fixtures that start a server or a process: a test using one is an acceptance test.
SERVER_FIXTURES = frozenset(
    {"sandbox", "sandbox_factory", "sandbox_process", "sandbox_cli", "webhook_sink"}
)


class SandboxHandle:
    """A running simulator and typed shortcuts to its control API."""

    def __init__(
        self, url: str, api_key: str = SANDBOX_API_KEY, *, control_token: str | None = None
    ) -> None:
        self.url = url
        self.base_url = f"{url}/v1"
        self.api_key = api_key
        # The control token (`--control-token`), when the simulator requires one on /sandbox.
        headers = {} if control_token is None else {"Authorization": f"Bearer {control_token}"}
        self._control = httpx.Client(base_url=url, headers=headers, timeout=10)

    def close(self) -> None:
        self._control.close()

    # the mintfax API ----------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on `/v1` with the fixture's bearer key (close it, or use `with`)."""
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return httpx.Client(
            base_url=self.base_url, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs
        )

    def send_fax(
        self,
        to: str = "+15005550001",
        *,
        document: bytes = SMALL_PDF,
        filename: str = "doc.pdf",
        idempotency_key: str | None = None,
        retries: int | None = None,
        webhook_url: str | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        """One `POST /v1/fax` (multipart), as the project's client sends it."""
        data: dict[str, str] = {"to": to}
        if retries is not None:
            data["retries"] = str(retries)
        if webhook_url is not None:
            data["webhook_url"] = webhook_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        if client is not None:
            return client.post(
                "/fax", data=data, files={"file": (filename, document)}, headers=headers
            )
        with self.client() as own:
            return own.post(
                "/fax", data=data, files={"file": (filename, document)}, headers=headers
            )

    def get_fax(self, fax_id: str) -> dict[str, Any]:
        with self.client() as c:
            response = c.get(f"/fax/{fax_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_for_fax(
        self, fax_id: str, statuses: tuple[str, ...] = ("delivered", "failed"), timeout: float = 10
    ) -> dict[str, Any]:
        """Poll the control API until the fax reaches one of `statuses` (no rate-limit cost)."""
        deadline = time.monotonic() + timeout
        while True:
            for fax in self.faxes():
                if fax["id"] == fax_id and fax["status"] in statuses:
                    return fax
            if time.monotonic() > deadline:
                raise AssertionError(f"fax {fax_id} did not reach {statuses} in {timeout} s")
            time.sleep(0.02)

    # control ------------------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        response = self._control.get(f"/sandbox/{path}")
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self._control.post(f"/sandbox/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def faxes(self) -> list[dict[str, Any]]:
        """Every fax with `id, idempotency_key, to, status, pages, submissions, ...`."""
        rows: list[dict[str, Any]] = self._get("faxes")["data"]
        return rows

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """`POST /v1/fax` arrivals (`seq, received_at, monotonic, idempotency_key, status`)."""
        rows: list[dict[str, Any]] = self._get("requests")["data"]
        return rows

    def webhooks(self) -> list[dict[str, Any]]:
        """The outgoing webhook delivery log."""
        rows: list[dict[str, Any]] = self._get("webhooks")["data"]
        return rows

    def webhook_secret(self) -> str:
        """The secret that signs deliveries to per-fax `webhook_url`s."""
        secret: str = self._get("webhook-secret")["signing_secret"]
        return secret

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault configuration (`set_faults()` turns every fault off)."""
        result: dict[str, Any] = self._post("faults", faults)
        return result

    def set_balance(self, available: int | None = None, *, top_up: int | None = None) -> None:
        body = {"available": available} if available is not None else {"top_up": top_up}
        self._post("balance", body)

    def balance(self) -> dict[str, int]:
        with self.client() as c:
            result: dict[str, int] = c.get("/account/balance").raise_for_status().json()
        return result

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Runtime settings: rate_limit_per_minute, time_scale, webhook_signing, ..."""
        result: dict[str, Any] = self._post("config", settings)
        return result

    def issue_key(self) -> str:
        """A new `fx_test_` API key (a rotation's first step)."""
        key: str = self._post("keys", {})["key"]
        return key

    def revoke_key(self, key: str) -> None:
        """Revoke `key`: every request with it is refused (401) from now on."""
        self._post("keys/revoke", {"key": key})

    def keys(self) -> list[dict[str, Any]]:
        """Every key seen or issued: id, last4, requests, refused (never the key)."""
        rows: list[dict[str, Any]] = self._get("keys")["data"]
        return rows

    def advance_clock(self, seconds: float) -> None:
        self._post("clock", {"advance_seconds": seconds})

    def reset(self) -> None:
        self._post("reset", {})


@contextmanager
def running_sandbox(config: SandboxConfig | None = None) -> Iterator[SandboxHandle]:
    """A simulator in a background thread of this process, stopped on exit."""
    state = Sandbox(config or SandboxConfig())
    server = ThreadedServer(create_app(sandbox=state), state.transports).start()
    handle = SandboxHandle(server.url)
    try:
        yield handle
    finally:
        handle.close()
        server.stop()


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    """A fresh mintfax simulator on a free port (default configuration)."""
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., SandboxHandle]]:
    """Start simulators with your own `SandboxConfig`; all are stopped after the test."""
    stack: list[Any] = []

    def start(config: SandboxConfig | None = None, **fields: Any) -> SandboxHandle:
        manager = running_sandbox(config or SandboxConfig(**fields))
        handle = manager.__enter__()
        stack.append(manager)
        return handle

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@dataclass
class SandboxProcess:
    """`python -m mintfax_sandbox` running as a subprocess."""

    process: subprocess.Popen[str]
    handle: SandboxHandle

    stderr: str = ""

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait (the pipes drained and closed); returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, self.stderr = self.process.communicate()
        self.handle.close()
        return self.process.returncode


_LISTENING = re.compile(r"sandbox listening on (http://\S+)")


SANDBOX_COMMAND = (sys.executable, "-m", "mintfax_sandbox")


def start_sandbox_process(*args: str, timeout: float = 20) -> SandboxProcess:
    """Run `python -m mintfax_sandbox --port 0 ARGS` and wait for its "listening" line."""
    command = [*SANDBOX_COMMAND, "--port", "0", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    found: list[str] = []

    def read_first_line() -> None:
        assert process.stdout is not None
        found.append(process.stdout.readline())

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout)
    match = _LISTENING.search(found[0]) if found else None
    if match is None:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        raise RuntimeError(f"the sandbox did not start: {stderr.strip()[-2000:]}")
    return SandboxProcess(process, SandboxHandle(match.group(1)))


@pytest.fixture
def sandbox_process() -> Iterator[Callable[..., SandboxProcess]]:
    """Start simulator subprocesses (extra CLI args allowed); all are stopped after the test."""
    started: list[SandboxProcess] = []

    def start(*args: str) -> SandboxProcess:
        proc = start_sandbox_process(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def sandbox_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m mintfax_sandbox ARGS` to completion (for options that stop it at start)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SANDBOX_COMMAND, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **(env or {})},
        )

    return run


@dataclass
class ReceivedWebhook:
    """One request the sink received: raw body bytes and lower-cased headers."""

    body: bytes
    headers: dict[str, str]
    received_at: float

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class WebhookSink:
    """A webhook receiver on a free port; `responses` scripts the status codes it answers with."""

    url: str
    received: list[ReceivedWebhook] = field(default_factory=list)
    responses: list[int] = field(default_factory=list)
    delay_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.json() for r in self.received]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
    ) -> list[dict[str, Any]]:
        """Wait until `predicate(events so far)` holds; returns the events."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook condition not met in {timeout} s: {events}")
            time.sleep(0.02)


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """A recording webhook receiver (`sink.url`); answers 200 unless told otherwise."""
    import asyncio

    sink = WebhookSink(url="")

    async def receive(request: Request) -> Response:
        body = await request.body()
        with sink.lock:
            sink.received.append(ReceivedWebhook(body, dict(request.headers.items()), time.time()))
            status = sink.responses.pop(0) if sink.responses else 200
            delay = sink.delay_seconds
        if delay:
            await asyncio.sleep(delay)
        return Response(status_code=status)

    server = ThreadedServer(Starlette(routes=[Route("/hook", receive, methods=["POST"])]))
    server.start()
    sink.url = f"{server.url}/hook"
    try:
        yield sink
    finally:
        server.stop()
