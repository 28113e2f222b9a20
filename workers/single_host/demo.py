"""`faxout demo` (`make demo`): the whole system on one machine, in under a minute.

Starts Postgres and Redis (embedded when `DATABASE_URL` / `REDIS_URL` are unset), migrates,
starts the mintfax sandbox, a relay, two Celery workers and beat as real processes, shows that
bad input is refused, and sends a few hundred faxes across the sandbox's magic numbers:

1. a first stretch without webhooks (no endpoint registered yet): those rows stay `submitted`
   until status polling (beat) reads their final state;
2. then the webhook receiver (`faxout webhooks serve`) is registered at the sandbox and started
   with the signing secret the registration printed, and the rest is enqueued; the sandbox runs
   out of balance mid-run (a 402 pauses the fleet and raises one alert); the demo tops the
   sandbox up, and the `balance.topup` event lifts the pause (no `faxout resume`).

It ends when every row holds a final state, learned from webhooks and polling alone, and
compares them (delivered; failed, with their reasons) with the sandbox's truth. Exit 0 only if
every fax reached mintfax exactly once, every final state equals the sandbox's, the stretch
without webhooks was closed by polling and the top-up event lifted the pause.
"""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Engine, text

from outbox import FaxIntent, enqueue_fax, enqueue_faxes, redis_conn, schema
from outbox.db import make_engine
from outbox.errors import ValidationFailed
from outbox.fax_client import MintfaxClient
from outbox.models import FaxStatus
from outbox.repository import count_by_status, open_pauses, recent_alerts
from outbox.throttle import FleetThrottle
from workers.single_host import embedded
from workers.single_host.stack import Stack, fleet_env

FINAL = (FaxStatus.DELIVERED, FaxStatus.FAILED, FaxStatus.REJECTED, FaxStatus.CANCELLED)

DEMO_KEY = "fx_test_demo_key_not_secret"
RATE_LIMIT = 1500  # per minute: the sandbox enforces it, the fleet throttle respects it
PRICE_PER_PAGE = 10  # cents, the sandbox's default
# Rows accepted this long ago without a final state are polled (beat's pass runs every 30 s):
# short, so the stretch without webhooks closes within the demo.
POLL_AFTER_SECONDS = 10
STRETCH_SHARE = 0.2  # the share of the faxes sent before the webhook endpoint is registered
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
    topped_up_at: float | None = None
    resumed_at: float | None = None
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
        # Enough credit for the stretch without webhooks (3 pages a fax at most) and about a
        # third of the rest: the others wait for the top-up.
        stretch = round(faxes * STRETCH_SHARE)
        credit = 3 * stretch + (faxes - stretch) // 3
        _post(control, "balance", available=credit * PRICE_PER_PAGE)
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
        numbers = recipients(faxes)
        _enqueue(engine, numbers[:stretch], prefix, 0)
        console.print(
            f"[bold]without webhooks:[/bold] enqueued {stretch} faxes; no endpoint is "
            "registered, so only status polling can learn what became of them"
        )
        if not _wait_stretch(engine, control, prefix, stretch, timeout=30):
            console.print("[red]demo failed:[/red] the first faxes did not finish in time")
            console.print(f"process logs are in {fleet.log_dir}")
            return 1
        console.print(f"  {stretch} faxes accepted and finished at mintfax, rows `submitted`\n")

        receiver = _start_receiver(fleet, sandbox_url)
        console.print(f"[bold]webhooks:[/bold] receiver at {receiver}, registered at the sandbox")
        _enqueue(engine, numbers[stretch:], prefix, stretch)
        console.print(
            f"  enqueued {faxes - stretch} more faxes across {len(MIX)} sandbox scenarios\n"
        )

        rds = redis_conn.client(redis_conn.parse_redis_url(urls.redis_url))
        stack.callback(rds.close)
        throttle = FleetThrottle(rds, RATE_LIMIT)
        done = _watch(console, engine, throttle, control, prefix, faxes, state, timeout)
        console.print()
        code = _summary(console, engine, control, prefix, faxes, stretch, state, done, fleet)
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
        FAXOUT_POLL_AFTER_SECONDS=str(POLL_AFTER_SECONDS),
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


def recipients(count: int, seed: int = 7) -> list[str]:
    """`count` recipients in the proportions of MIX, shuffled so every scenario runs
    throughout (the stretch without webhooks included); the chaos run draws its own."""
    numbers: list[str] = []
    for number, share in MIX.items():
        numbers += [number] * round(share * count)
    numbers = (numbers + ["+15005550001"] * count)[:count]
    random.Random(seed).shuffle(numbers)
    return numbers


def _enqueue(engine: Engine, numbers: list[str], prefix: str, first: int) -> None:
    intents = [
        FaxIntent(to=n, document=SAMPLE_PDF, filename="letter.pdf", reference=f"{prefix}{i}")
        for i, n in enumerate(numbers, start=first)
    ]
    with engine.begin() as conn:
        enqueue_faxes(conn, intents, environment="sandbox")


def _wait_stretch(engine: Engine, control: str, prefix: str, count: int, timeout: float) -> bool:
    """Until the stretch's rows are all accepted and mintfax has finished every fax: from
    then on no event about them will ever come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            counts = count_by_status(conn, reference_prefix=prefix)
        faxes = _get(control, "faxes")
        faxes = faxes["data"] if isinstance(faxes, dict) else faxes
        accepted = sum(counts[s] for s in (FaxStatus.SUBMITTED, *FINAL))
        if (
            accepted == count
            and len(faxes) == count
            and all(f["status"] in ("delivered", "failed") for f in faxes)
        ):
            return True
        time.sleep(0.25)
    return False


def _start_receiver(fleet: Stack, sandbox_url: str) -> str:
    """What an operator does: register the endpoint (every event), store the signing secret
    the registration shows once where the receiver reads it, start `faxout webhooks serve`."""
    port = embedded.free_port()
    url = f"http://127.0.0.1:{port}/webhooks/mintfax"
    with MintfaxClient(sandbox_url, SecretStr(DEMO_KEY), timeout=10) as client:
        _, secret = client.create_webhook(url)
    fleet.env["MINTFAX_WEBHOOK_SECRET"] = secret.get_secret_value()
    return fleet.start_webhooks(port)


def _watch(
    console: Console,
    engine: Engine,
    throttle: FleetThrottle,
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
            waited = time.monotonic() - seen if seen is not None else 0.0
            if pauses and state.topped_up_at is None and waited > 2:
                # What an operator does on the alert: add credit. mintfax's balance.topup
                # event then lifts the pause; nobody runs `faxout resume`.
                _post(control, "balance", top_up=1_000_000)
                state.topped_up_at = time.monotonic()
            if not pauses and state.topped_up_at is not None and state.resumed_at is None:
                state.resumed_at = time.monotonic()
            live.update(_progress(counts, throttle, pauses, state, total))
            if sum(counts[s] for s in FINAL) + counts[FaxStatus.NEEDS_REVIEW] == total:
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
    final = sum(counts[s] for s in FINAL)
    accepted = counts[FaxStatus.SUBMITTED] + final
    lines = [
        f"progress  {done}/{total} sent, {final}/{total} final   "
        f"rate {state.rate(accepted):5.1f} fax/s",
        f"throttle  {snap['limit_per_minute']:.0f}/min, next token in "
        f"{snap['next_free_in']:.2f}s, 429 cooldown {snap['cooldown_remaining']:.1f}s",
        "fleet     "
        + (
            "[red]PAUSED: "
            + ", ".join(p.reason for p in pauses)
            + "[/red] (top-up alert raised"
            + ("; topped up, waiting for the balance.topup event)" if state.topped_up_at else ")")
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
    stretch: int,
    state: DemoState,
    finished: bool,
    fleet: Stack,
) -> int:
    stats = _get(control, "stats")
    faxes = _get(control, "faxes")
    faxes = faxes["data"] if isinstance(faxes, dict) else faxes
    truth = {f["id"]: (f["status"], f["error_code"]) for f in faxes}
    with engine.connect() as conn:
        counts = count_by_status(conn, reference_prefix=prefix)
        alerts = [
            a
            for a in recent_alerts(conn, 50)
            if a["kind"] == "fleet_paused" and a["created_at"] >= state.started_at
        ]
        rows = conn.execute(_ROWS, {"prefix": f"{prefix}%"}).all()
        pauses = conn.execute(_BALANCE_PAUSES, {"since": state.started_at}).all()
    learned = {r.mintfax_fax_id: (r.status, r.error_code) for r in rows if r.mintfax_fax_id}
    by_polling = [r for r in rows if r.status in ("delivered", "failed") and not r.final_events]
    stretch_polled = sum(1 for r in by_polling if int(r.reference.removeprefix(prefix)) < stretch)

    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("outbox (learned)", justify="right")
    table.add_column("mintfax (truth)", justify="right")
    table.add_row("faxes enqueued", str(total), "")
    table.add_row("bad intents refused at enqueue", str(len(state.refusals)), "")
    for outcome, count in sorted(_outcomes(learned.values()).items()):
        table.add_row(outcome, str(count), str(_outcomes(truth.values()).get(outcome, 0)))
    for st in FaxStatus:
        if counts[st] and st not in (FaxStatus.DELIVERED, FaxStatus.FAILED):
            table.add_row(f"rows {st.value}", str(counts[st]), "")
    table.add_row(
        "final states learned from webhooks / polling",
        f"{len(rows) - len(by_polling) - counts[FaxStatus.SUBMITTED]} / {len(by_polling)}",
        "",
    )
    table.add_row(f"  of the {stretch} sent without webhooks, by polling", str(stretch_polled), "")
    table.add_row("faxes created at mintfax", "", str(stats["faxes_created"]))
    table.add_row("duplicate creations", "", str(stats["duplicate_creations"]))
    table.add_row("idempotent replays (after dropped 201s)", "", str(stats["idempotent_replays"]))
    by_status = stats["requests_by_status"]
    table.add_row(
        "sandbox answers", "", ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    )
    table.add_row("webhooks delivered", "", str(stats["webhooks_delivered"]))
    table.add_row("402 pause alerts", str(len(alerts)), "")
    table.add_row("balance pause lifted by", ", ".join(str(p.ended_by) for p in pauses) or "-", "")
    table.add_row("elapsed", f"{time.monotonic() - state.started:.1f}s", "")
    console.print(table)

    problems = []
    if not finished:
        problems.append("not every fax reached a final state in time")
    if stats["duplicate_creations"]:
        problems.append("mintfax created a fax twice")
    if stats["faxes_created"] != len(learned):
        problems.append("rows accepted by mintfax and faxes created differ")
    wrong = {k: (learned.get(k), v) for k, v in truth.items() if learned.get(k) != v}
    if wrong:
        example = next(iter(wrong.items()))
        problems.append(f"{len(wrong)} final states differ from mintfax's, e.g. {example}")
    if stretch_polled != stretch:
        problems.append(
            f"polling closed {stretch_polled} of the {stretch} faxes sent without webhooks"
        )
    if state.pause_seen_at is None:
        problems.append("the 402 episode did not happen")
    if len(alerts) < 1:
        problems.append("no top-up alert was raised")
    if not pauses or any(p.ended_by != TOPUP_RESUME for p in pauses):
        problems.append("the balance pause was not lifted by the balance.topup event")
    if problems:
        for line in problems:
            console.print(f"[red]demo failed:[/red] {line}")
        console.print(f"process logs were in {fleet.log_dir}")
        return 1
    console.print(
        "[green]every fax reached mintfax exactly once, and every final state the outbox "
        "learned (webhooks, polling) equals mintfax's[/green]"
    )
    return 0


# Who ends a balance pause on mintfax's balance.topup event (outbox.reconcile.Reconciler).
TOPUP_RESUME = "mintfax:balance.topup"
_ROWS = text(
    """
    SELECT o.reference, o.mintfax_fax_id, o.status::text AS status, o.error_code,
           EXISTS (SELECT 1 FROM fax_events e WHERE e.mintfax_fax_id = o.mintfax_fax_id
                   AND e.event_type IN ('fax.delivered', 'fax.failed')) AS final_events
    FROM fax_outbox o WHERE o.reference LIKE :prefix
    """
)
_BALANCE_PAUSES = text(
    "SELECT ended_by FROM fleet_pauses WHERE reason = 'insufficient_balance' "
    "AND started_at >= :since ORDER BY started_at"
)


def _outcomes(states: Any) -> dict[str, int]:
    """`delivered`, `failed: <reason>` counts of (status, error code) pairs."""
    counts: dict[str, int] = {}
    for status, code in states:
        key = status if status != "failed" else f"failed: {code}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _post(control: str, path: str, **body: Any) -> Any:
    response = httpx.post(f"{control}/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _get(control: str, path: str) -> Any:
    response = httpx.get(f"{control}/{path}", timeout=30)
    response.raise_for_status()
    return response.json()
