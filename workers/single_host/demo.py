"""`faxout demo` (`make demo`): the whole system on one machine, in under a minute.

Starts Postgres and Redis (embedded when `DATABASE_URL` / `REDIS_URL` are unset), migrates,
starts the mintfax sandbox, a relay, two Celery workers and beat as real processes, shows that
bad input is refused, enqueues a few hundred faxes across the sandbox's magic numbers, lets the
sandbox run out of balance mid-run (a 402 pauses the fleet and raises one alert), tops the
balance up and resumes, and ends with a summary. Exit 0 only if every fax reached mintfax
exactly once.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Engine

from outbox import FaxIntent, enqueue_fax, enqueue_faxes, schema
from outbox.alerts import Alerter
from outbox.clock import SystemClock
from outbox.db import make_engine
from outbox.errors import ValidationFailed
from outbox.models import FaxStatus
from outbox.pause import FleetControl, PauseMirror
from outbox.repository import count_by_status, open_pauses, recent_alerts
from outbox.throttle import FleetThrottle
from workers.single_host import embedded
from workers.single_host.stack import Stack, fleet_env

DEMO_KEY = "fx_test_demo_key_not_secret"
RATE_LIMIT = 1500  # per minute: the sandbox enforces it, the fleet throttle respects it
PRICE_PER_PAGE = 10  # cents, the sandbox's default
# Magic numbers and how many of each (section 9 of mintfax-api.md).
MIX = {
    "+15005550001": 0.55,  # delivered, 1 page
    "+15005550007": 0.10,  # delivered, 3 pages
    "+15005550004": 0.10,  # transient carrier failure, then delivered
    "+15005550002": 0.08,  # busy on every attempt
    "+15005550003": 0.07,  # no answer
    "+15005550005": 0.05,  # line quality
    "+15005550008": 0.05,  # invalid number, terminal
}
SAMPLE_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    # Wall-clock start, so alerts of earlier runs in a reused database do not count.
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    pause_seen_at: float | None = None
    resumed_at: float | None = None
    topped_up: bool = False
    refusals: list[str] = field(default_factory=list)
    history: list[tuple[float, int]] = field(default_factory=list)

    def rate(self, submitted: int) -> float:
        now = time.monotonic()
        self.history.append((now, submitted))
        self.history = [(t, n) for t, n in self.history if now - t <= 3.0]
        first_t, first_n = self.history[0]
        return (submitted - first_n) / (now - first_t) if now > first_t else 0.0


def run(
    *,
    database_url: str | None,
    redis_url: str | None,
    faxes: int = 300,
    flower: bool = False,
    timeout: float = 90.0,
) -> int:
    """Run the demo on these services (embedded ones where None); returns the exit code."""
    console = Console()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"demo-{run_id}-"
    with contextlib.ExitStack() as stack:
        console.print("[bold]fax-outbox demo[/bold]: starting services...")
        urls = stack.enter_context(embedded.services(database_url, redis_url))
        embedded_note = []
        if not database_url:
            embedded_note.append("Postgres")
        if not redis_url:
            embedded_note.append("Redis")
        if embedded_note:
            console.print(f"  embedded {' and '.join(embedded_note)} (URLs unset)")
        engine = make_engine(urls.database_url)
        stack.callback(engine.dispose)
        schema.upgrade(engine)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faxout-demo-")))
        fleet = Stack(_fleet_env(urls), logs)
        stack.callback(fleet.stop_all, 20.0)

        sandbox_url = fleet.start_sandbox(
            "--rate-limit-per-minute",
            str(RATE_LIMIT),
            "--faults",
            "error_503=0.03,error_500=0.01,reset=0.02,commit_then_drop=0.02,latency_ms=5-25,seed=7",
        )
        control = sandbox_url.removesuffix("/v1") + "/sandbox"
        fleet.env["MINTFAX_BASE_URL"] = sandbox_url
        # Enough credit for about a third of the run: the rest waits for the top-up.
        _post(control, "balance", available=faxes // 3 * PRICE_PER_PAGE)
        console.print(f"  sandbox at {sandbox_url} (faults: 3% 503, 1% 500, 2% resets, 2% drops)")
        for n in range(2):
            fleet.start_worker(f"worker{n}", concurrency=3)
        fleet.start_relay()
        fleet.start_beat()
        if flower:
            console.print(f"  Flower at [link]{fleet.start_flower()}[/link]")
        for n in range(2):
            fleet.wait_for_worker_ready(f"worker{n}")
        console.print("  relay, 2 workers (3 processes each) and beat are up\n")

        state = DemoState()
        _show_refusals(console, engine, state)
        _enqueue(engine, faxes, prefix)
        console.print(f"enqueued {faxes} faxes across {len(MIX)} sandbox scenarios\n")

        rds = redis.Redis.from_url(urls.redis_url)
        stack.callback(rds.close)
        throttle = FleetThrottle(rds, RATE_LIMIT)
        clock = SystemClock()
        control_plane = FleetControl(engine, PauseMirror(rds), Alerter(clock), clock)
        done = _watch(
            console, engine, throttle, control_plane, control, prefix, faxes, state, timeout
        )
        console.print()
        code = _summary(console, engine, control, prefix, faxes, state, done, fleet)
        if flower and sys.stdin.isatty():
            # Leave the fleet up so the operator can browse Flower's task history.
            console.print("Flower and the fleet stay up; press Ctrl-C to stop them.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
        return code


def _fleet_env(urls: embedded.ServiceURLs) -> dict[str, str]:
    return fleet_env(
        urls.database_url,
        urls.redis_url,
        DEMO_KEY,
        FAXOUT_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT),
        FAXOUT_LEASE_SECONDS="30",
        # The sandbox answers in milliseconds; a short timeout lets the short lease stand.
        FAXOUT_HTTP_TIMEOUT_SECONDS="10",
        FAXOUT_REDISPATCH_SECONDS="10",
    )


def _show_refusals(console: Console, engine: Engine, state: DemoState) -> None:
    bad: list[tuple[str, dict[str, Any]]] = [
        (
            "a number that is not E.164",
            {"to": "212-555-0123", "document": SAMPLE_PDF, "filename": "a.pdf"},
        ),
        (
            "a PNG named .pdf",
            {
                "to": "+15005550001",
                "document": b"\x89PNG\r\n\x1a\n" + b"0" * 64,
                "filename": "scan.pdf",
            },
        ),
        (
            "an empty file, 11 retries",
            {"to": "+15005550001", "document": b"", "filename": "empty.pdf", "retries": 11},
        ),
    ]
    console.print("[bold]bad input is refused, and nothing is written:[/bold]")
    for label, fields in bad:
        try:
            with engine.begin() as conn:
                enqueue_fax(conn, reference="demo-bad", environment="sandbox", **fields)
        except ValidationFailed as exc:
            state.refusals.append(label)
            console.print(f"  [red]refused[/red] {label}: {exc}")
    console.print()


def _enqueue(engine: Engine, count: int, prefix: str) -> None:
    numbers: list[str] = []
    for number, share in MIX.items():
        numbers += [number] * round(share * count)
    numbers = (numbers + ["+15005550001"] * count)[:count]
    # Interleave so every scenario runs throughout.
    numbers = numbers[::2] + numbers[1::2]
    intents = [
        FaxIntent(to=n, document=SAMPLE_PDF, filename="letter.pdf", reference=f"{prefix}{i}")
        for i, n in enumerate(numbers)
    ]
    with engine.begin() as conn:
        enqueue_faxes(conn, intents, environment="sandbox")


def _watch(
    console: Console,
    engine: Engine,
    throttle: FleetThrottle,
    control_plane: FleetControl,
    control: str,
    prefix: str,
    total: int,
    state: DemoState,
    timeout: float,
) -> bool:
    deadline = time.monotonic() + timeout
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                counts = count_by_status(conn, reference_prefix=prefix)
                pauses = open_pauses(conn)
            if pauses and state.pause_seen_at is None:
                state.pause_seen_at = time.monotonic()
            seen = state.pause_seen_at
            if pauses and seen is not None and not state.topped_up and time.monotonic() - seen > 2:
                # What an operator does on the top-up alert: add credit, then resume.
                _post(control, "balance", top_up=1_000_000)
                state.topped_up = True
                control_plane.resume(by="demo")
                state.resumed_at = time.monotonic()
            live.update(_progress(counts, throttle, pauses, state, total))
            if counts[FaxStatus.PENDING] + counts[FaxStatus.SENDING] == 0:
                return True
            time.sleep(0.25)
    return False


def _progress(
    counts: dict[FaxStatus, int],
    throttle: FleetThrottle,
    pauses: list[Any],
    state: DemoState,
    total: int,
) -> Panel:
    table = Table.grid(padding=(0, 2))
    for st in FaxStatus:
        if counts[st] or st in (FaxStatus.PENDING, FaxStatus.SENDING, FaxStatus.SUBMITTED):
            table.add_row(st.value, str(counts[st]))
    snap = throttle.snapshot()
    done = total - counts[FaxStatus.PENDING] - counts[FaxStatus.SENDING]
    lines = [
        f"progress  {done}/{total}   rate {state.rate(counts[FaxStatus.SUBMITTED]):5.1f} fax/s",
        f"throttle  {snap['limit_per_minute']:.0f}/min, next token in "
        f"{snap['next_free_in']:.2f}s, 429 cooldown {snap['cooldown_remaining']:.1f}s",
        "fleet     "
        + (
            "[red]PAUSED: " + ", ".join(p.reason for p in pauses) + "[/red] (top-up alert raised)"
            if pauses
            else "[green]sending[/green]"
        ),
    ]
    return Panel(
        Group(table, *lines), title=f"fax_outbox  {time.monotonic() - state.started:4.1f}s"
    )


def _summary(
    console: Console,
    engine: Engine,
    control: str,
    prefix: str,
    total: int,
    state: DemoState,
    finished: bool,
    fleet: Stack,
) -> int:
    stats = _get(control, "stats")
    faxes = _get(control, "faxes")
    faxes = faxes["data"] if isinstance(faxes, dict) else faxes
    with engine.connect() as conn:
        counts = count_by_status(conn, reference_prefix=prefix)
        alerts = [
            a
            for a in recent_alerts(conn, 50)
            if a["kind"] == "fleet_paused" and a["created_at"] >= state.started_at
        ]
    carrier: dict[str, int] = {}
    for fax in faxes:
        carrier[fax["status"]] = carrier.get(fax["status"], 0) + 1

    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("faxes enqueued", str(total))
    table.add_row("bad intents refused at enqueue", str(len(state.refusals)))
    for st in FaxStatus:
        if counts[st]:
            table.add_row(f"rows {st.value}", str(counts[st]))
    table.add_row("faxes created at mintfax (sandbox)", str(stats["faxes_created"]))
    table.add_row("duplicate creations", str(stats["duplicate_creations"]))
    table.add_row("idempotent replays (after dropped 201s)", str(stats["idempotent_replays"]))
    by_status = stats["requests_by_status"]
    table.add_row(
        "sandbox answers",
        ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())),
    )
    table.add_row("402 pause alerts", str(len(alerts)))
    table.add_row(
        "mintfax carrier outcome so far",
        ", ".join(f"{k}: {v}" for k, v in sorted(carrier.items())),
    )
    table.add_row("elapsed", f"{time.monotonic() - state.started:.1f}s")
    console.print(table)

    problems = []
    if not finished:
        problems.append("not every fax left the outbox in time")
    if stats["duplicate_creations"]:
        problems.append("mintfax created a fax twice")
    if stats["faxes_created"] != counts[FaxStatus.SUBMITTED]:
        problems.append("rows submitted and faxes created differ")
    if state.pause_seen_at is None:
        problems.append("the 402 episode did not happen")
    if len(alerts) < 1:
        problems.append("no top-up alert was raised")
    if problems:
        for line in problems:
            console.print(f"[red]demo failed:[/red] {line}")
        console.print(f"process logs were in {fleet.log_dir}")
        return 1
    console.print("[green]every fax reached mintfax exactly once[/green]")
    return 0


def _post(control: str, path: str, **body: Any) -> Any:
    response = httpx.post(f"{control}/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _get(control: str, path: str) -> Any:
    response = httpx.get(f"{control}/{path}", timeout=30)
    response.raise_for_status()
    return response.json()
