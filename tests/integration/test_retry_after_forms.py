"""A 429's Retry-After as seconds, as an HTTP date, or as garbage: the real client over real
HTTP, the real submit path, and the fleet cooldown in real Redis."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mintfax_sandbox.server import ThreadedServer
from outbox import enqueue_fax, repository
from outbox.alerts import Alerter
from outbox.clock import SystemClock
from outbox.fax_client import MintfaxClient
from outbox.pause import PauseMirror
from outbox.submit import Outcome, SubmitContext, submit_fax
from outbox.throttle import FleetThrottle

PDF = b"%PDF-1.4\n%%EOF\n"


class TooMany:
    """A mintfax stand-in that answers every POST /v1/fax with 429 and a chosen Retry-After."""

    def __init__(self) -> None:
        self.retry_after = "10"
        self.hits = 0

    async def handle(self, request: Request) -> JSONResponse:
        await request.body()
        self.hits += 1
        return JSONResponse(
            {"error": "rate_limit_exceeded", "message": "slow down", "action": "wait_and_retry"},
            status_code=429,
            headers={"Retry-After": self.retry_after},
        )


@pytest.fixture
def limited() -> Iterator[tuple[TooMany, str]]:
    handler = TooMany()
    server = ThreadedServer(Starlette(routes=[Route("/v1/fax", handler.handle, methods=["POST"])]))
    server.start()
    yield handler, f"{server.url}/v1"
    server.stop()


@pytest.mark.parametrize(
    ("form", "expected"),
    [("seconds", 12.0), ("http-date", 40.0), ("garbage", 30.0), ("empty", 30.0)],
)
def test_every_retry_after_form_cools_the_fleet_down(
    engine: Engine, redis_url: str, limited: tuple[TooMany, str], form: str, expected: float
) -> None:
    handler, base_url = limited
    in_40s = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    # Garbage and missing values fall back to the policy's default (30 s).
    handler.retry_after = {"seconds": "12", "http-date": in_40s, "garbage": "soon-ish"}.get(
        form, ""
    )
    client = redis.Redis.from_url(redis_url)
    throttle = FleetThrottle(client, 60_000)
    clock = SystemClock()
    with MintfaxClient(base_url, SecretStr("fx_test_k"), timeout=5) as mintfax:
        ctx = SubmitContext(
            engine=engine,
            sender=mintfax,
            throttle=throttle,
            mirror=PauseMirror(client),
            alerter=Alerter(clock),
            clock=clock,
            rng=random.Random(1),
            api_key=lambda: SecretStr("fx_test_k"),
            environment="sandbox",
            worker_id="w",
        )
        with engine.begin() as conn:
            fax_id = enqueue_fax(
                conn,
                to="+15005550001",
                document=PDF,
                filename="a.pdf",
                reference="x",
                environment="sandbox",
            ).id
        with engine.begin() as conn:
            repository.dispatch_due(
                conn, now=clock.now() + timedelta(seconds=1), limit=10, redispatch_after=60
            )
        assert submit_fax(ctx, fax_id) is Outcome.RATE_LIMITED
    assert handler.hits == 1
    assert throttle.cooldown_remaining() == pytest.approx(expected, abs=2.5)
    assert throttle.acquire() == pytest.approx(expected, abs=2.5)  # every worker now waits
    with engine.connect() as conn:
        row = repository.fax_row(conn, fax_id)
    assert row is not None and row["attempts"] == 0 and row["status"] == "pending"
    client.close()
