"""Invariant 7 with canaries (issue 10, item 4): a distinctive API key (from a key file) and the
webhook signing secret appear in no log at DEBUG (worker, relay, beat, receiver), no broker
message or other Redis value (read raw, during and after the run), nothing Flower's API serves,
no table of the database, and no exception a failing request raises (its whole chain)."""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mintfax_sandbox import ThreadedServer
from outbox.errors import FaxOutboxError
from outbox.fax_client import MintfaxClient
from outbox.settings import Settings
from tests.acceptance.fleet import Fleet
from tests.acceptance.test_credentials import write_key
from workers.single_host.embedded import free_port

pytestmark = pytest.mark.timeout(300)

CANARY_KEY = "fx_test_CANARYq7Zr4Kp2Wm9Xv3"
# sitecustomize for the fleet's processes: the root logger at DEBUG before the program sets up
# its own logging (which then adds nothing: basicConfig is a no-op once a handler exists).
DEBUG_EVERYWHERE = (
    "import logging\n"
    "logging.basicConfig(level=logging.DEBUG, "
    "format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
)


def forms(secret: str) -> list[str]:
    """A secret and the parts of it a careless mask or encoding would leave behind."""
    body = secret.split("_", 2)[-1]
    return [secret, body, body[:12], secret.encode().hex(), body[-12:]]


def assert_absent(where: str, haystack: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in haystack, f"a secret ({form[:4]}...) leaked into {where}"


class RedisRecorder:
    """Every key and value of the fleet's Redis, read raw, every 50 ms while the run lasts."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self.seen: list[bytes] = []
        self.keys: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RedisRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.dump()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.dump()

    def dump(self) -> None:
        r = self._redis
        for key in r.scan_iter(count=1000):
            self.keys.add(key)
            kind = r.type(key).decode()
            try:
                if kind == "string":
                    values = [r.get(key) or b""]
                elif kind == "list":
                    values = r.lrange(key, 0, -1)
                elif kind == "hash":
                    values = [k + b"=" + v for k, v in r.hgetall(key).items()]
                elif kind == "set":
                    values = list(r.smembers(key))
                elif kind == "zset":
                    values = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
                elif kind == "stream":
                    values = [repr(e).encode() for e in r.xrange(key)]
                else:
                    values = []
            except redis.ResponseError:  # the key changed type or vanished meanwhile
                continue
            self.seen.append(key + b" " + b" ".join(values))

    def text(self) -> str:
        return "\n".join(v.decode("utf-8", "replace") for v in self.seen)


def database_text(engine: Engine) -> str:
    """Every row of every table of the public schema, as Postgres prints it."""
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        return "\n".join(
            row
            for table in list(tables)
            for row in conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars()
        )


def flower_text(url: str) -> str:
    pages = [
        "/api/workers?refresh=1",
        "/api/workers?status=1",
        "/api/tasks",
        "/api/task/types",
        "/api/queues/length",
        "/dashboard?json=1",
        "/workers",
        "/tasks",
        "/broker",
    ]
    texts = [httpx.get(url + page, timeout=30).text for page in pages]
    tasks = httpx.get(f"{url}/api/tasks", params={"limit": 20}, timeout=30).json()
    for task_id in list(tasks)[:20]:
        texts.append(httpx.get(f"{url}/api/task/info/{task_id}", timeout=30).text)
        texts.append(httpx.get(f"{url}/task/{task_id}", timeout=30).text)
    return "\n".join(texts)


@pytest.fixture
def debug_everywhere(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DEBUG_EVERYWHERE)
    return site


def test_a_canary_key_and_secret_appear_nowhere(
    fleet: Fleet, tmp_path: Path, debug_everywhere: Path
) -> None:
    key_file = tmp_path / "mintfax.key"
    write_key(key_file, CANARY_KEY)
    env = fleet.stack.env
    del env["MINTFAX_API_KEY"]
    env.update(
        MINTFAX_API_KEY_FILE=str(key_file),
        FAXOUT_LOG_LEVEL="DEBUG",
        PYTHONPATH=":".join(p for p in (str(debug_everywhere), env.get("PYTHONPATH")) if p),
        FAXOUT_MAX_SUBMIT_ATTEMPTS="10",
    )
    fleet.start_sandbox(
        "--rate-limit-per-minute", "0",
        "--faults", "error_500=0.1,error_503=0.05,reset=0.05,commit_then_drop=0.05,seed=3",
    )  # fmt: skip
    port = free_port()
    receiver = f"http://127.0.0.1:{port}/webhooks/mintfax"
    with MintfaxClient(fleet.sandbox_url, SecretStr(CANARY_KEY), timeout=10) as client:
        _, signing = client.create_webhook(receiver)
    secret = signing.get_secret_value()
    secrets = [CANARY_KEY, secret]
    fleet.stack.start_webhooks(port, secret=secret)
    for n in range(2):
        fleet.stack.start_worker(f"worker{n}", 2, loglevel="DEBUG")
    fleet.stack.start_relay("relay0")
    fleet.stack.start_beat(loglevel="DEBUG")
    flower = fleet.stack.start_flower(api=True)
    for n in range(2):
        fleet.stack.wait_for_worker_ready(f"worker{n}")

    with RedisRecorder(fleet.redis_url) as recorded:
        # Delivered, failed at the carrier, and refused by mintfax (422): every path's logs.
        fleet.enqueue(60, numbers=("+15005550001", "+15005550002", "+15005550099"))
        fleet.wait_until(
            lambda: fleet.unfinished() == 0 and fleet.counts()["submitted"] == 0,
            150,
            "every fax final through the receiver",
        )
        # A forged webhook: refused, and the refusal is logged.
        assert httpx.post(receiver, content=b"{}", timeout=10).status_code == 401
        time.sleep(1)
    assert recorded.keys, "nothing was read from Redis"
    assert_absent("Redis", recorded.text(), secrets)

    served = flower_text(flower)
    assert "faxout.submit_fax" in served, "Flower showed no task: the check proves nothing"
    assert_absent("Flower's API", served, secrets)

    dump = database_text(fleet.engine)
    assert "+15005550001" in dump
    assert_absent("the database", dump, secrets)

    for name in ("worker0", "worker1", "relay0", "beat", "webhooks"):
        log = fleet.stack.log_text(name)
        assert " DEBUG " in log or "DEBUG/" in log, f"{name} did not log at DEBUG"
        assert_absent(f"{name}'s log", log, secrets)
    for name in fleet.stack.processes:
        assert_absent(f"{name}'s log", fleet.stack.log_text(name), secrets)


def _hostile_app() -> Starlette:
    """A server that hands back whatever it was sent, in every place an answer can carry it."""

    def echo(request: Request) -> str:
        return request.headers.get("authorization", "")

    async def error(request: Request) -> Response:
        said = echo(request)
        body = {
            "error": f"boom {said}",
            "message": said,
            "action": said,
            "request_id": said,
            "context": {"auth": said, "errors": {"to": [said]}},
        }
        return JSONResponse(
            body, int(request.path_params["status"]), headers={"x-request-id": said}
        )

    async def bare(request: Request) -> Response:
        status = int(request.path_params["status"])
        return Response(f"<html>{echo(request)}</html>", status, headers={"x-request-id": "x"})

    async def redirect(request: Request) -> Response:
        return Response(status_code=302, headers={"location": f"https://x.test/?k={echo(request)}"})

    async def unusable(request: Request) -> Response:
        return Response(f"not json {echo(request)}", status_code=201)

    async def slow(request: Request) -> Response:
        import asyncio

        await asyncio.sleep(2)
        return Response("{}")

    return Starlette(
        routes=[
            Route("/json/{status:int}/v1/{rest:path}", error, methods=["GET", "POST"]),
            Route("/bare/{status:int}/v1/{rest:path}", bare, methods=["GET", "POST"]),
            Route("/redirect/v1/{rest:path}", redirect, methods=["GET", "POST"]),
            Route("/unusable/v1/{rest:path}", unusable, methods=["GET", "POST"]),
            Route("/slow/v1/{rest:path}", slow, methods=["GET", "POST"]),
        ]
    )


def _chain_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc)), repr(exc), str(exc)]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [repr(seen), str(seen), repr(getattr(seen, "__dict__", {}))]
        if isinstance(seen, FaxOutboxError):
            parts.append(repr(seen.envelope()))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def test_no_failing_request_puts_the_key_in_its_exception_chain(tmp_path: Path) -> None:
    server = ThreadedServer(_hostile_app()).start()
    key = SecretStr(CANARY_KEY)
    calls = [
        *(f"{server.url}/json/{status}/v1" for status in (400, 401, 402, 403, 404, 409, 422)),
        *(f"{server.url}/json/{status}/v1" for status in (429, 500, 503)),
        *(f"{server.url}/bare/{status}/v1" for status in (404, 413, 502)),
        f"{server.url}/redirect/v1",
        f"{server.url}/unusable/v1",
        f"http://127.0.0.1:{free_port()}/v1",  # nothing listens: connection refused
    ]  # fmt: skip
    texts: list[str] = []
    try:
        for base in calls:
            with MintfaxClient(base, key, timeout=5) as client:
                for call in (
                    client.get_balance,
                    lambda c=client: c.send_fax(
                        to="+15005550001",
                        document=b"%PDF-1.4\n%%EOF\n",
                        filename="a.pdf",
                        idempotency_key="k-1",
                        retries=0,
                    ),
                ):
                    with pytest.raises(FaxOutboxError) as caught:
                        call()
                    texts.append(_chain_text(caught.value))
        with MintfaxClient(f"{server.url}/slow/v1", key, timeout=0.3) as client:
            with pytest.raises(FaxOutboxError) as caught:
                client.get_balance()
            texts.append(_chain_text(caught.value))
    finally:
        server.stop()
    assert len(texts) == 2 * len(calls) + 1
    assert_absent("an exception chain", "\n".join(texts), [CANARY_KEY])

    # A key file the client could not send: refused naming the variable, never the key.
    bad = tmp_path / "bad.key"
    bad.write_text(CANARY_KEY + " trailing words\n")
    with pytest.raises(FaxOutboxError) as caught:
        Settings.from_env({"MINTFAX_API_KEY_FILE": str(bad)}).api_key()
    assert_absent("a key file's refusal", _chain_text(caught.value), [CANARY_KEY])
    with pytest.raises(FaxOutboxError) as caught:
        Settings.from_env({"MINTFAX_API_KEY": CANARY_KEY + "\x00"})
    assert_absent("a key variable's refusal", _chain_text(caught.value), [CANARY_KEY])
