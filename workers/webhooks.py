"""The mintfax webhook receiver: a Starlette app over `outbox.webhooks.verify_webhook`.

`create_receiver(handle, secrets)` answers `POST /webhooks/mintfax` and `GET /healthz`, served
by `faxout webhooks serve` or mounted in an application's own ASGI app
(`Mount("/hooks", app=create_receiver(...))`). Per request: read at most `MAX_BODY_BYTES` (a
larger Content-Length is refused before reading), verify, then `handle(event)` in a worker
thread (one short database transaction: the event is recorded once and applied), then answer;
with `handle_many`, events that arrive together share that transaction (`GroupCommit`), written
on the event loop itself when `handle_many` is a coroutine function
(`Reconciler.handle_events_async`, what `faxout webhooks serve` uses).
Nothing else runs before the answer, so mintfax hears back well within its 5 s.

Answers: 200 `{"ok": true, "result": ...}` (a duplicate too: it was applied before);
401/413/400 with a generic body on a refusal, the real reason logged at WARNING; 503 when
`handle` fails, so mintfax retries the event later.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import cast

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from outbox.errors import ConfigurationError, DatabaseUnavailable, WebhookRefused
from outbox.events import FaxEvent
from outbox.webhooks import BAD_REQUEST, MAX_BODY_BYTES, TOO_LARGE, verify_webhook

log = logging.getLogger("workers.webhooks")

WEBHOOK_PATH = "/webhooks/mintfax"
HEALTH_PATH = "/healthz"

# What a refused sender is told: the status only, never which check failed.
_GENERIC_ERRORS = {401: "unauthorized", 413: "payload_too_large", 400: "bad_request"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


# Several events, one commit: each event's result or exception, in order. Synchronous (run in
# a worker thread) or a coroutine function (awaited on the loop).
_ManySync = Callable[[Sequence[FaxEvent]], Sequence[object]]
_ManyAsync = Callable[[Sequence[FaxEvent]], Awaitable[Sequence[object]]]
HandleMany = _ManySync | _ManyAsync


class GroupCommit:
    """Events that arrive while earlier ones are being written go together in the next write.

    Each request hands its verified event to `submit` and waits for its own result. At most
    `writers` batches are written at once (each one statement and one commit: awaited on the
    loop when `handle_many` is a coroutine function, else in a worker thread); whatever
    arrives meanwhile waits and goes in the next batch, up to `max_batch`.
    Nothing waits on a timer: an event alone is written at once, and under load the commits
    (the receiver's bottleneck) carry many events each.
    """

    def __init__(
        self,
        handle_many: HandleMany,
        *,
        writers: int = 2,
        max_batch: int = 64,
    ) -> None:
        # Told apart once: awaited on the loop, or run in a worker thread.
        self._many_async: _ManyAsync | None = None
        self._many_sync: _ManySync | None = None
        # An object with an `async def __call__` is awaited too (iscoroutinefunction says no).
        if inspect.iscoroutinefunction(handle_many) or inspect.iscoroutinefunction(
            getattr(handle_many, "__call__", None)  # noqa: B004 - the method itself is wanted
        ):
            self._many_async = cast(_ManyAsync, handle_many)
        else:
            self._many_sync = cast(_ManySync, handle_many)
        self._writers = writers
        self._max_batch = max_batch
        # Per event loop (an app can be served by more than one over its life, as tests do).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, event: FaxEvent) -> str:
        """Write `event` with whatever else is waiting; its result, or its exception raised."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        future: asyncio.Future[str] = loop.create_future()
        queue.waiting.append((event, future))
        if queue.writing < self._writers:
            queue.writing += 1
            task = loop.create_task(self._write(queue))
            queue.tasks.add(task)  # a task nobody references can be collected mid-run
            task.add_done_callback(queue.tasks.discard)
        return await future

    async def _write(self, queue: _LoopQueue) -> None:
        try:
            while queue.waiting:
                batch = queue.waiting[: self._max_batch]
                del queue.waiting[: self._max_batch]
                events = [event for event, _ in batch]
                try:
                    results: Sequence[object]
                    if self._many_async is not None:
                        results = await self._many_async(events)
                    else:
                        assert self._many_sync is not None
                        results = await run_in_threadpool(self._many_sync, events)
                    if len(results) != len(batch):  # never leave a request waiting for nothing
                        raise RuntimeError(
                            f"handle_many gave {len(results)} results for {len(batch)}"
                        )
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its request was cancelled (the sender hung up)
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(str(result))
        finally:
            queue.writing -= 1


@dataclass
class _LoopQueue:
    waiting: list[tuple[FaxEvent, asyncio.Future[str]]] = field(default_factory=list)
    writing: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def create_receiver(
    handle: Callable[[FaxEvent], str],
    secrets: Callable[[], Sequence[SecretStr]],
    clock: Callable[[], datetime] = _utc_now,
    *,
    handle_many: HandleMany | None = None,
    count: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The receiver app. `handle` applies one verified event and names the outcome ("applied",
    "duplicate", ...); `secrets` is asked on every request, so a rotation can add a secret
    without a restart; `clock` is what timestamps are judged against (injectable in tests).

    With `handle_many` (`Reconciler.handle_events_async`, or the synchronous
    `Reconciler.handle_events`: several events, one commit, each event's result or exception
    in order) concurrent events are written together (`GroupCommit`); `handle` is then unused.
    `on_shutdown` (`Reconciler.aclose`) runs when the server running the app stops.

    `count` is told of each event that leaves no row (`duplicate`, `refused_<status>`), for
    the fleet's metrics (`outbox.fleet_status.WebhookCounters`); its failure changes no answer.
    """
    group = GroupCommit(handle_many) if handle_many is not None else None

    async def apply(event: FaxEvent) -> str:
        if group is not None:
            return await group.submit(event)
        return await run_in_threadpool(handle, event)

    async def tally(what: str) -> None:
        if count is None:
            return
        try:
            await run_in_threadpool(count, what)
        except Exception as exc:  # a metric is not worth a 503: mintfax would resend
            log.debug(
                "webhook counter %s not counted: %s",
                what,
                type(exc).__name__,
                extra={"action": "webhook.counter_failed"},
            )

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await read_limited(request, MAX_BODY_BYTES)
            event = verify_webhook(body, request.headers, secrets(), clock())
        except WebhookRefused as refused:
            client = request.client.host if request.client else "?"
            log.warning(
                "webhook refused (%d) from %s: %s",
                refused.status,
                client,
                refused.reason,
                extra={"action": "webhook.refused", "http_status": refused.status},
            )
            await tally(f"refused_{refused.status}")
            return JSONResponse(
                {"ok": False, "error": _GENERIC_ERRORS.get(refused.status, "refused")},
                status_code=refused.status,
            )
        except ClientDisconnect:  # mintfax gave up mid-body; it retries the whole event
            log.info(
                "webhook sender disconnected before the body was read",
                extra={"action": "webhook.disconnected"},
            )
            return JSONResponse({"ok": False, "error": "bad_request"}, status_code=400)
        try:
            result = await apply(event)
        except DatabaseUnavailable:
            # The reconciler logged the outage once; mintfax sends the event again.
            return JSONResponse({"ok": False, "error": "unavailable"}, status_code=503)
        except Exception as exc:
            # Type only at ERROR: a database error's text can hold the event's data (numbers).
            log.error(
                "webhook %s (%s) not applied: %s; answering 503 so mintfax retries",
                event.event_id,
                event.event_type,
                type(exc).__name__,
                extra={
                    "action": "webhook.not_applied",
                    "event_id": event.event_id,
                    "mintfax_fax_id": event.mintfax_fax_id,
                },
            )
            log.debug(
                "webhook %s failure",
                event.event_id,
                exc_info=True,
                extra={
                    "action": "webhook.failure",
                    "event_id": event.event_id,
                    "mintfax_fax_id": event.mintfax_fax_id,
                },
            )
            return JSONResponse({"ok": False, "error": "unavailable"}, status_code=503)
        log.debug(
            "webhook %s (%s): %s",
            event.event_id,
            event.event_type,
            result,
            extra={
                "action": "webhook.applied",
                "event_id": event.event_id,
                "mintfax_fax_id": event.mintfax_fax_id,
                "result": result,
            },
        )
        if result == "duplicate":
            await tally("duplicate")
        return JSONResponse({"ok": True, "result": result})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await on_shutdown()

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route(HEALTH_PATH, healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class SteadySecrets:
    """The receiver's `secrets`: `read()` asked on every request (a secret file is read again
    only when it changed, so a rotation needs no restart), the last good answer kept when a
    read fails. A secrets manager replacing the file, or a mount briefly gone, must not turn
    mintfax's events away; the failure is logged once until a read succeeds again."""

    def __init__(self, read: Callable[[], Sequence[SecretStr]]) -> None:
        self._read = read
        self._last = tuple(read())  # the first read must work: the caller checked it
        self._failing = False

    def __call__(self) -> Sequence[SecretStr]:
        try:
            self._last = tuple(self._read())
        except ConfigurationError as exc:
            if not self._failing:
                log.warning(
                    "webhook secrets could not be read (%s); verifying with the last ones read",
                    exc,
                    extra={"action": "webhook.secrets_unreadable"},
                )
            self._failing = True
            return self._last
        if self._failing:
            log.info("webhook secrets can be read again", extra={"action": "webhook.secrets_back"})
            self._failing = False
        return self._last


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes.

    A Content-Length over the limit is refused before any of the body is read; otherwise
    reading stops at the first chunk that takes the body past the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise WebhookRefused("Content-Length is not a number", BAD_REQUEST)
        if int(declared) > limit:
            raise WebhookRefused(f"Content-Length {declared} exceeds {limit}", TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRefused(f"body exceeds {limit} bytes", TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def serve(app: Starlette, host: str, port: int) -> bool:
    """Serve `app` with uvicorn until SIGTERM/SIGINT, finishing the requests in flight (up to
    10 s). Returns whether the server started (False: e.g. the port was taken)."""
    import uvicorn

    class CleanExitServer(uvicorn.Server):
        # uvicorn re-raises the stopping signal after its graceful shutdown, so the process
        # would die with 128+15; a clean stop exits 0 (for scripts, supervisors and tests).
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    server = CleanExitServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    return bool(server.started)
