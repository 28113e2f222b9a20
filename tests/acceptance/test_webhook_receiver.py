"""The webhook receiver (`workers.webhooks.create_receiver`) over real HTTP, on its own and
mounted inside another ASGI app: answers, generic refusals with the reason in the log, the
1 MB limit enforced without reading past it, 503 when the handler fails."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mintfax_sandbox import ThreadedServer
from mintfax_sandbox.webhooks import new_secret, signed_headers
from outbox.events import FaxEvent
from outbox.webhooks import MAX_BODY_BYTES
from workers.webhooks import create_receiver

SECRET = new_secret()


class Recorder:
    """A stand-in for `Reconciler.handle_event`: applied once per event id, then duplicate."""

    def __init__(self) -> None:
        self.events: list[FaxEvent] = []
        self.lock = threading.Lock()
        self.fail: Exception | None = None

    def __call__(self, event: FaxEvent) -> str:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            seen = any(e.event_id == event.event_id for e in self.events)
            self.events.append(event)
        return "duplicate" if seen else "applied"


def envelope(event_id: str = "evt_1", event: str = "fax.delivered", **data: object) -> bytes:
    payload = {
        "event_id": event_id,
        "event": event,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"id": "fax_1", "status": "delivered", **data},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed(body: bytes, signing: str = "a", secret: str = SECRET) -> dict[str, str]:
    return signed_headers(signing, secret, "evt_h", body, int(time.time()))  # type: ignore[arg-type]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def secrets() -> list[SecretStr]:
    return [SecretStr(SECRET)]


@pytest.fixture
def serve() -> Iterator[Callable[[Starlette], str]]:
    servers: list[ThreadedServer] = []

    def start(app: Starlette) -> str:
        server = ThreadedServer(app).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def url(serve: Callable[[Starlette], str], recorder: Recorder, secrets: list[SecretStr]) -> str:
    return serve(create_receiver(recorder, lambda: secrets))


def test_a_signed_event_is_handled_and_a_duplicate_answers_200(
    url: str, recorder: Recorder
) -> None:
    body = envelope()
    for signing in ("a", "b"):
        response = httpx.post(
            f"{url}/webhooks/mintfax", content=body, headers=signed(body, signing)
        )
        assert response.status_code == 200
    first, second = recorder.events
    assert first.event_id == second.event_id == "evt_1"
    assert first.mintfax_fax_id == "fax_1"
    again = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body))
    assert again.json() == {"ok": True, "result": "duplicate"}


def test_the_first_delivery_says_applied(url: str) -> None:
    body = envelope("evt_first")
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body))
    assert response.json() == {"ok": True, "result": "applied"}


@pytest.mark.parametrize(
    ("mangle", "status", "error"),
    [
        (lambda b, h: (b, signed(b, secret=new_secret())), 401, "unauthorized"),
        (lambda b, h: (b.replace(b"fax_1", b"fax_2"), h), 401, "unauthorized"),
        (lambda b, h: (b, {}), 401, "unauthorized"),
        (lambda b, h: (b"not json", signed(b"not json")), 400, "bad_request"),
        (lambda b, h: (b"[1]", signed(b"[1]")), 400, "bad_request"),
    ],
)
def test_refusals_answer_a_generic_body_and_log_the_reason(
    url: str,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    mangle: Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]],
    status: int,
    error: str,
) -> None:
    body, headers = mangle(envelope(), signed(envelope()))
    with caplog.at_level(logging.WARNING, logger="workers.webhooks"):
        response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=headers)
    assert response.status_code == status
    assert response.json() == {"ok": False, "error": error}  # which check failed: not said
    assert recorder.events == []
    [record] = [r for r in caplog.records if r.name == "workers.webhooks"]
    assert record.levelno == logging.WARNING
    assert f"webhook refused ({status})" in record.getMessage()
    assert SECRET not in caplog.text


def test_a_stale_signature_is_refused(url: str, recorder: Recorder) -> None:
    body = envelope()
    headers = signed_headers("b", SECRET, "evt_old", body, int(time.time()) - 301)
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=headers)
    assert response.status_code == 401
    assert recorder.events == []


def _raw_request(url: str, head: bytes, body_part: bytes) -> tuple[int, float]:
    """Send a request head and part of a body, never the rest; the status and how long it took."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body_part)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, time.monotonic() - started


def test_a_content_length_over_the_limit_is_413_before_reading_the_body(
    url: str, recorder: Recorder
) -> None:
    head = (
        b"POST /webhooks/mintfax HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n"
    )
    # Only 10 bytes of the 50 MB ever arrive: a receiver reading the body would wait forever.
    status, took = _raw_request(url, head, b'{"event":1')
    assert status == 413
    assert took < 5
    assert recorder.events == []


def test_a_chunked_body_is_413_as_soon_as_it_passes_the_limit(url: str, recorder: Recorder) -> None:
    head = (
        b"POST /webhooks/mintfax HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b"x" * (64 * 1024)
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n"
        for _ in range(MAX_BODY_BYTES // len(part) + 1)
    )
    # No terminating chunk: the body never ends, so only a reader that stops at the limit answers.
    status, took = _raw_request(url, head, chunks)
    assert status == 413
    assert took < 5
    assert recorder.events == []


def test_a_body_of_exactly_one_megabyte_is_accepted(url: str, recorder: Recorder) -> None:
    body = envelope(note="")
    body = envelope(note="x" * (MAX_BODY_BYTES - len(body)))
    assert len(body) == MAX_BODY_BYTES
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body))
    assert response.status_code == 200
    assert len(recorder.events) == 1


def test_a_failing_handler_is_503_so_mintfax_retries(
    url: str, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.fail = RuntimeError("database is down, +12125550123")
    body = envelope()
    with caplog.at_level(logging.ERROR, logger="workers.webhooks"):
        response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body))
    assert response.status_code == 503
    assert response.json() == {"ok": False, "error": "unavailable"}
    assert "RuntimeError" in caplog.text
    assert "+12125550123" not in caplog.text  # the exception's text is not logged at ERROR


def test_health_and_methods(url: str) -> None:
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{url}/webhooks/mintfax").status_code == 405


def test_secrets_are_read_per_request_so_a_rotation_needs_no_restart(
    url: str, recorder: Recorder, secrets: list[SecretStr]
) -> None:
    new = new_secret()
    body = envelope("evt_rotated")
    assert httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body, "b", new))
    assert recorder.events == []
    secrets.insert(0, SecretStr(new))
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body, "b", new))
    assert response.status_code == 200
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body, "a"))
    assert response.json() == {"ok": True, "result": "duplicate"}  # the old one still works


def test_it_mounts_under_a_prefix_in_another_asgi_app(
    serve: Callable[[Starlette], str], recorder: Recorder, secrets: list[SecretStr]
) -> None:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the user's own app")

    host = Starlette(
        routes=[
            Route("/", home),
            Mount("/integrations/mintfax", app=create_receiver(recorder, lambda: secrets)),
        ]
    )
    url = serve(host)
    body = envelope("evt_mounted")
    response = httpx.post(
        f"{url}/integrations/mintfax/webhooks/mintfax", content=body, headers=signed(body)
    )
    assert response.json() == {"ok": True, "result": "applied"}
    assert [e.event_id for e in recorder.events] == ["evt_mounted"]
    assert httpx.get(f"{url}/integrations/mintfax/healthz").json() == {"ok": True}
    assert httpx.get(f"{url}/").text == "the user's own app"
    forged = httpx.post(f"{url}/integrations/mintfax/webhooks/mintfax", content=body)
    assert forged.status_code == 401


def test_the_clock_judges_the_timestamp(
    serve: Callable[[Starlette], str], recorder: Recorder, secrets: list[SecretStr]
) -> None:
    url = serve(
        create_receiver(recorder, lambda: secrets, clock=lambda: datetime(2020, 1, 1, tzinfo=UTC))
    )
    body = envelope()
    response = httpx.post(f"{url}/webhooks/mintfax", content=body, headers=signed(body))
    assert response.status_code == 401  # signed now, judged in 2020: far in the future


@pytest.mark.parametrize("writer", ["thread", "loop"])
def test_events_that_arrive_together_are_written_together_each_answered_its_own(
    serve: Callable[[Starlette], str], secrets: list[SecretStr], writer: str
) -> None:
    # Group commit (`handle_many`): while a batch is being written, arrivals wait and go in the
    # next; each request still gets its own event's result, and one event's failure is only
    # that request's 503. The batch is written in a worker thread (a plain `handle_many`) or
    # awaited on the server's loop (a coroutine function, as `faxout webhooks serve` has it).
    batches: list[list[str]] = []

    def results(events: Sequence[FaxEvent]) -> list[object]:
        batches.append([e.event_id for e in events])
        return [
            RuntimeError("refused") if e.event_id.endswith("_7") else f"applied:{e.event_id}"
            for e in events
        ]

    def in_thread(events: Sequence[FaxEvent]) -> list[object]:
        time.sleep(0.05)  # a commit
        return results(events)

    async def on_loop(events: Sequence[FaxEvent]) -> list[object]:
        await asyncio.sleep(0.05)  # a commit
        return results(events)

    handle_many = in_thread if writer == "thread" else on_loop

    def unused(event: FaxEvent) -> str:
        raise AssertionError("with handle_many, events go through it")

    url = serve(create_receiver(unused, lambda: secrets, handle_many=handle_many))
    answers: dict[str, httpx.Response] = {}

    def post(n: int) -> None:
        body = envelope(f"evt_g_{n}")
        answers[f"evt_g_{n}"] = httpx.post(
            f"{url}/webhooks/mintfax", content=body, headers=signed(body), timeout=10
        )

    threads = [threading.Thread(target=post, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 40
    for event_id, response in answers.items():
        if event_id == "evt_g_7":
            assert response.status_code == 503
        else:
            assert response.json() == {"ok": True, "result": f"applied:{event_id}"}
    written = [event_id for batch in batches for event_id in batch]
    assert sorted(written) == sorted(answers)  # each event written once
    assert max(len(batch) for batch in batches) > 1  # and not one commit each
    assert len(batches) < 40
