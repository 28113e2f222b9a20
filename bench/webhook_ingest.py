"""Benchmark: the webhook receiver vs a bare Starlette endpoint on the same uvicorn server.

    .venv/bin/python bench/webhook_ingest.py [--quick] [--events 3000] [--rounds 5]
        [--concurrency 16] [--rate 200] [--rate-seconds 10]

One uvicorn server process (`workers.webhooks.serve`, what `faxout webhooks serve` runs: one
event loop, h11) serves both `POST /webhooks/mintfax`, the real receiver
(`workers.webhooks.create_receiver` with `Reconciler(...).handle_event` and
`handle_events_async`, built as `faxout webhooks serve` builds it: events that arrive together
share one statement and one commit, awaited on the loop, on a fresh migrated database of the
run; the engine for anything else is sized as `workers.runtime.Runtime` sizes it: pool 2 +
overflow 2), and `POST /bare`, a plain Starlette endpoint on the same app that reads the body
and answers 200. The ratio isolates what the receiver adds: verification (generation A: hex
HMAC-SHA256 of `{ts}.{body}`, the timestamp tolerance, the envelope) and the database work
(`fax_events_ingest_batch`: the locks on the fax ids, each event recorded once, the
forward-only transition of `fax_outbox`, one commit per batch).

The faxes exist as `submitted` rows with a `mintfax_fax_id` (bulk-inserted with
`SET LOCAL faxout.allow_system_columns = on`). Events, as mintfax sends them: per fax
`fax.sending` then `fax.delivered`, and every 10th fax's `fax.delivered` again later (a
duplicate: same event id and body, freshly signed), so a stream is ~2.1 events per fax; every
round of the receiver gets faxes of its own, so each event meets the state it would meet in
production. Both endpoints receive the same signed requests, byte for byte.

Load comes from a separate process (spawn) on raw asyncio streams (a few microseconds a
request, unlike httpx's hundreds), signing each request just before it is sent:

- throughput: `--concurrency` keep-alive connections, one request in flight on each, as fast
  as they are answered; events/second over `--events` events;
- latency: an open-loop schedule of `--rate` events/second for `--rate-seconds` (requests go
  out at their scheduled time on an idle connection of a pool; latency counts from the
  scheduled time, so a stalled server is not hidden by a stalled client); p50/p99.

Rounds interleave (which endpoint goes first alternates); the table shows medians over rounds.
Targets (issue 9): receiver throughput >= 0.4x the bare endpoint's, receiver p99 <= 50 ms at
200 events/s. Needs no Redis (the reconciler gets no fleet control: no balance events are sent).
Prints a table and writes `bench/results/webhook_ingest.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # bench/harness.py

THROUGHPUT_TARGET = 0.4
P99_TARGET_MS = 50.0
SECRET = "whsec_bench_0123456789abcdef"
RECEIVER_PATH = "/webhooks/mintfax"
BARE_PATH = "/bare"
DUPLICATE_EVERY = 10  # every 10th fax's fax.delivered is sent twice
BLOCK = 64  # faxes whose fax.sending go out before their fax.delivered (keeps order)
WARMUP_EVENTS = 300

_LOAD = """
INSERT INTO fax_outbox (to_number, document, filename, reference, status, attempts,
                        mintfax_fax_id, mintfax_status, first_attempt_at, submitted_at,
                        next_attempt_at)
SELECT '+15005550001', %(doc)s, 'doc.pdf', 'wh-' || g, 'submitted', 1,
       'fax_wh_' || g, 'queued', now() - interval '1 minute', now() - interval '1 minute',
       now() - interval '1 minute'
FROM generate_series(1, %(count)s) AS g
"""


# --- server mode: this script re-run as the server process -----------------------------------


def serve(database_url: str, port: int, pool_size: int) -> None:
    """The receiver and `/bare` on one uvicorn server (this process), until SIGTERM."""
    from pydantic import SecretStr
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from outbox.alerts import Alerter
    from outbox.clock import SystemClock
    from outbox.db import make_engine
    from outbox.reconcile import Reconciler
    from workers.webhooks import create_receiver
    from workers.webhooks import serve as serve_forever

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Sized as workers.runtime.Runtime sizes the engine `faxout webhooks serve` uses.
    engine = make_engine(database_url, pool_size=pool_size, max_overflow=2)
    reconciler = Reconciler(engine, Alerter(SystemClock()), None, SystemClock())
    secrets = [SecretStr(SECRET)]
    app = create_receiver(
        reconciler.handle_event,
        lambda: secrets,
        handle_many=reconciler.handle_events_async,
        on_shutdown=reconciler.aclose,
    )

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"ok": True})

    app.add_route(BARE_PATH, bare, methods=["POST"])
    try:
        serve_forever(app, "127.0.0.1", port)
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    database_url: str, log_path: Path, pool_size: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", database_url, str(port), str(pool_size)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in sock.recv(1024):
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("server did not answer /healthz within 30 s")


# --- events ------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def event_stream(first_fax: int, count: int) -> tuple[list[bytes], int]:
    """`count` event bodies for faxes `first_fax`...; returns them and how many faxes they use.

    Faxes go in blocks of BLOCK: the block's `fax.sending` events, then its `fax.delivered`
    events, then the duplicates of the block's every DUPLICATE_EVERY-th `fax.delivered`.
    """
    bodies: list[bytes] = []
    fax = first_fax
    base = datetime.now(UTC) - timedelta(seconds=30)
    while len(bodies) < count:
        block = range(fax, fax + BLOCK)
        delivered: dict[int, bytes] = {}
        for n in block:
            fax_id = f"fax_wh_{n}"
            sending = {
                "event_id": f"evt_wh_{n}_sending",
                "event": "fax.sending",
                "timestamp": _iso(base + timedelta(milliseconds=n)),
                "data": {"id": fax_id, "status": "sending", "to": "+15005550001", "pages": None,
                         "retries_remaining": 3, "error_code": None, "error_message": None,
                         "completed_at": None},
            }  # fmt: skip
            bodies.append(json.dumps(sending, separators=(",", ":")).encode())
            done_at = _iso(base + timedelta(seconds=20, milliseconds=n))
            final = {
                "event_id": f"evt_wh_{n}_delivered",
                "event": "fax.delivered",
                "timestamp": done_at,
                "data": {"id": fax_id, "status": "delivered", "to": "+15005550001", "pages": 1,
                         "retries_remaining": 3, "error_code": None, "error_message": None,
                         "completed_at": done_at},
            }  # fmt: skip
            delivered[n] = json.dumps(final, separators=(",", ":")).encode()
        bodies += delivered.values()
        bodies += [body for n, body in delivered.items() if n % DUPLICATE_EVERY == 0]
        fax += BLOCK
    return bodies[:count], fax - first_fax


# --- load generator (a separate process) -------------------------------------------------------


def _request(path: str, body: bytes) -> bytes:
    timestamp = str(int(time.time()))
    signature = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"User-Agent: mintfax-bench\r\nX-Mintfax-Timestamp: {timestamp}\r\n"
        f"X-Mintfax-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, bytes]:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    payload = await reader.readexactly(length)
    parts = status_line.split()
    return (parts[1] if len(parts) > 1 else b"?"), payload


def _outcome(status: bytes, payload: bytes) -> str:
    if status != b"200":
        return f"http {status.decode()}"
    try:
        return str(json.loads(payload).get("result", "ok"))
    except ValueError:
        return "unreadable"


async def _throughput(port: int, path: str, bodies: list[bytes], concurrency: int) -> dict:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    outcomes: Counter[str] = Counter()
    position = 0

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal position
        while position < len(bodies):
            body = bodies[position]
            position += 1
            outcomes[_outcome(*await _exchange(reader, writer, _request(path, body)))] += 1

    started = time.perf_counter()
    await asyncio.gather(*(run(r, w) for r, w in connections))
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return {"events": len(bodies), "seconds": elapsed, "outcomes": dict(outcomes)}


async def _at_rate(port: int, path: str, bodies: list[bytes], rate: float, pool: int) -> dict:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = []
    for _ in range(pool):
        connection = await asyncio.open_connection("127.0.0.1", port)
        opened.append(connection)
        idle.put_nowait(connection)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def one(scheduled: float, body: bytes) -> None:
        reader, writer = await idle.get()
        status, payload = await _exchange(reader, writer, _request(path, body))
        latencies.append((time.perf_counter() - scheduled) * 1000)
        outcomes[_outcome(status, payload)] += 1
        idle.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter() + 0.05
    for index, body in enumerate(bodies):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, body)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in opened:
        writer.close()
    return {
        "events": len(bodies),
        "seconds": elapsed,
        "latencies_ms": latencies,
        "outcomes": dict(outcomes),
    }


def _client(job: dict[str, Any], queue: Any) -> None:
    if job["mode"] == "throughput":
        coroutine = _throughput(job["port"], job["path"], job["bodies"], job["concurrency"])
    else:
        coroutine = _at_rate(job["port"], job["path"], job["bodies"], job["rate"], job["pool"])
    queue.put(asyncio.run(coroutine))


def load(**job: Any) -> dict[str, Any]:
    """Run one load job in a fresh process (not in the server's nor this process's GIL)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client, args=(job, queue))
    proc.start()
    result: dict[str, Any] = queue.get(timeout=600)
    proc.join()
    return result


# --- the run -----------------------------------------------------------------------------------


def insert_faxes(database_url: str, count: int) -> None:
    import psycopg

    from outbox.settings import libpq_url

    with psycopg.connect(libpq_url(database_url)) as conn:
        # Rows mintfax accepted: columns the system owns, which fixtures may set when they say so.
        conn.execute("SET LOCAL faxout.allow_system_columns = on")
        conn.execute(_LOAD, {"doc": harness.PDF, "count": count})
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE fax_outbox")


def final_counts(database_url: str) -> dict[str, Any]:
    import psycopg

    from outbox.settings import libpq_url

    with psycopg.connect(libpq_url(database_url)) as conn:
        statuses = dict(conn.execute("SELECT status::text, count(*) FROM fax_outbox GROUP BY 1"))
        events = dict(conn.execute("SELECT outcome, count(*) FROM fax_events GROUP BY 1"))
    return {"fax_outbox": statuses, "fax_events": events}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rate_events = int(args.rate * args.rate_seconds)
    # Plan every receiver stream first: each gets faxes of its own.
    plan: list[tuple[str, int, list[bytes]]] = []
    next_fax = 1
    for label, count in [("warmup", WARMUP_EVENTS)] + [
        (kind, n) for _ in range(args.rounds) for kind, n in
        (("throughput", args.events), ("rate", rate_events))
    ]:  # fmt: skip
        bodies, used = event_stream(next_fax, count)
        plan.append((label, next_fax, bodies))
        next_fax += used
    faxes = next_fax - 1
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        "throughput": {"receiver": [], "bare": []},
        "rate": {"receiver": [], "bare": []},
    }
    with (
        harness.services(need_redis=False) as urls,
        harness.scratch_database(urls.database_url, "webhook") as database_url,
    ):
        started = time.perf_counter()
        insert_faxes(database_url, faxes)
        print(f"  {faxes:,} submitted faxes inserted in {time.perf_counter() - started:.1f} s")
        log_path = Path(tempfile.mkstemp(prefix="faxout-bench-webhook-", suffix=".log")[1])
        server, port = start_server(database_url, log_path, args.db_pool)
        try:
            streams = iter(plan)
            _, _, warm = next(streams)
            for path in (RECEIVER_PATH, BARE_PATH):  # connections, caches, the thread pool
                load(mode="throughput", port=port, path=path, bodies=warm,
                     concurrency=args.concurrency)  # fmt: skip
            for index in range(args.rounds):
                for kind in ("throughput", "rate"):
                    _, _, bodies = next(streams)
                    order = ["receiver", "bare"] if index % 2 == 0 else ["bare", "receiver"]
                    for who in order:
                        path = RECEIVER_PATH if who == "receiver" else BARE_PATH
                        cpu_before = harness.cpu_seconds(server.pid)
                        if kind == "throughput":
                            result = load(mode="throughput", port=port, path=path,
                                          bodies=bodies, concurrency=args.concurrency)  # fmt: skip
                        else:
                            result = load(mode="rate", port=port, path=path, bodies=bodies,
                                          rate=args.rate, pool=args.pool)  # fmt: skip
                        result["server_cpu_s"] = harness.cpu_seconds(server.pid) - cpu_before
                        runs[kind][who].append(result)
                        print(f"  round {index + 1} {kind:<10} {who:<8} {summarise(result)}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        counts = final_counts(database_url)
        server_log = log_path.read_text(errors="replace")
        log_path.unlink()
    return report(args, runs, faxes, counts, server_log)


def summarise(result: dict[str, Any]) -> str:
    rate = result["events"] / result["seconds"]
    text = f"{rate:8.1f} events/s"
    if "latencies_ms" in result:
        lat = result["latencies_ms"]
        text += f"  p50 {statistics.median(lat):6.2f} ms  p99 {harness.quantile(lat, 0.99):6.2f} ms"
    return text + f"  {dict(sorted(result['outcomes'].items()))}"


def report(
    args: argparse.Namespace,
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    faxes: int,
    counts: dict[str, Any],
    server_log: str,
) -> dict[str, Any]:
    def throughput(who: str) -> list[float]:
        return [r["events"] / r["seconds"] for r in runs["throughput"][who]]

    def latency(who: str, q: float) -> list[float]:
        return [harness.quantile(r["latencies_ms"], q) for r in runs["rate"][who]]

    def outcomes(who: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for kind in runs.values():
            for r in kind[who]:
                total.update(r["outcomes"])
        return dict(sorted(total.items()))

    measures: dict[str, Any] = {}
    for who in ("receiver", "bare"):
        rounds_p50, rounds_p99 = latency(who, 0.5), latency(who, 0.99)
        achieved = [r["events"] / r["seconds"] for r in runs["rate"][who]]
        measures[who] = {
            "events_per_s_rounds": [round(v, 1) for v in throughput(who)],
            "events_per_s": round(statistics.median(throughput(who)), 1),
            "p50_ms_rounds": [round(v, 2) for v in rounds_p50],
            "p99_ms_rounds": [round(v, 2) for v in rounds_p99],
            "p50_ms": round(statistics.median(rounds_p50), 2),
            "p99_ms": round(statistics.median(rounds_p99), 2),
            "max_ms": round(max(max(r["latencies_ms"]) for r in runs["rate"][who]), 2),
            "achieved_rate": round(statistics.median(achieved), 1),
            # CPU of the server process per event (it includes the load job's start-up wait,
            # when the server is idle, so it is comparable between the endpoints only).
            "server_cpu_ms_per_event": round(
                statistics.median(
                    r["server_cpu_s"] * 1000 / r["events"] for r in runs["throughput"][who]
                ),
                3,
            ),
            "outcomes": outcomes(who),
        }
    receiver, bare = measures["receiver"], measures["bare"]
    ratio = receiver["events_per_s"] / bare["events_per_s"]
    ratios_per_round = [
        round(a / b, 3) for a, b in zip(throughput("receiver"), throughput("bare"), strict=True)
    ]
    errors = {k: v for k, v in receiver["outcomes"].items() if k.startswith("http")}
    refused = [line for line in server_log.splitlines() if "WARNING" in line or "ERROR" in line]
    met_throughput = ratio >= THROUGHPUT_TARGET
    met_latency = receiver["p99_ms"] <= P99_TARGET_MS
    return {
        "config": {
            "events_per_throughput_round": args.events,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "rate_seconds": args.rate_seconds,
            "rate_pool": args.pool,
            "faxes": faxes,
            "duplicate_every": DUPLICATE_EVERY,
            "engine": f"pool_size={args.db_pool}, max_overflow=2 (workers.runtime: 2 + 2)",
            "server": "uvicorn via workers.webhooks.serve, one process",
            **harness.machine(),
        },
        "measures": measures,
        "throughput_ratio": round(ratio, 3),
        "throughput_ratio_rounds": ratios_per_round,
        "p99_ratio": round(receiver["p99_ms"] / bare["p99_ms"], 2),
        "database_after": counts,
        "receiver_errors": errors,
        "server_log_warnings": refused[:20],
        "target_throughput_ratio": THROUGHPUT_TARGET,
        "target_p99_ms": P99_TARGET_MS,
        "met": met_throughput and met_latency and not errors,
    }


def table(result: dict[str, Any]) -> str:
    c, m = result["config"], result["measures"]
    r, b = m["receiver"], m["bare"]
    lines = [
        f"webhook ingest benchmark: receiver (real database) vs bare Starlette endpoint, one "
        f"uvicorn process, {c['rounds']} interleaved rounds (medians), {c['cpus']} CPUs",
        f"throughput: {c['events_per_throughput_round']} events/round on {c['concurrency']} "
        f"connections; latency: {c['rate']:g} events/s for {c['rate_seconds']:g} s "
        f"(open loop, pool of {c['rate_pool']})",
        "",
        "| measure                        | receiver |     bare | ratio receiver/bare |",
        "|--------------------------------|----------|----------|---------------------|",
        f"| throughput (events/s)          | {r['events_per_s']:>8.1f} | {b['events_per_s']:>8.1f}"
        f" | {result['throughput_ratio']:>19.3f} |",
        f"| p50 at {c['rate']:g}/s (ms)              | {r['p50_ms']:>8.2f} | {b['p50_ms']:>8.2f}"
        f" | {r['p50_ms'] / b['p50_ms']:>19.2f} |",
        f"| p99 at {c['rate']:g}/s (ms)              | {r['p99_ms']:>8.2f} | {b['p99_ms']:>8.2f}"
        f" | {result['p99_ratio']:>19.2f} |",
        f"| max at {c['rate']:g}/s (ms)              | {r['max_ms']:>8.2f} | {b['max_ms']:>8.2f}"
        f" |                     |",
        f"| server CPU per event (ms)      | {r['server_cpu_ms_per_event']:>8.3f} | "
        f"{b['server_cpu_ms_per_event']:>8.3f} | "
        f"{r['server_cpu_ms_per_event'] / b['server_cpu_ms_per_event']:>19.2f} |",
        f"| achieved rate (events/s)       | {r['achieved_rate']:>8.1f} | "
        f"{b['achieved_rate']:>8.1f} |                     |",
        "",
        f"per round: throughput ratio {result['throughput_ratio_rounds']}; receiver p99 "
        f"{r['p99_ms_rounds']} ms",
        f"receiver answers: {r['outcomes']}",
        f"database after: {result['database_after']}",
        "",
        f"target: throughput >= {THROUGHPUT_TARGET}x bare: {result['throughput_ratio']:.3f}x "
        f"({'met' if result['throughput_ratio'] >= THROUGHPUT_TARGET else 'NOT met'}); "
        f"p99 <= {P99_TARGET_MS:g} ms at {c['rate']:g}/s: {r['p99_ms']:.2f} ms "
        f"({'met' if r['p99_ms'] <= P99_TARGET_MS else 'NOT met'})",
    ]
    if result["receiver_errors"]:
        lines.append(f"receiver errors: {result['receiver_errors']}")
    if result["server_log_warnings"]:
        lines += ["server log warnings:", *result["server_log_warnings"]]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1000 events, 4 s at rate")
    parser.add_argument("--events", type=int, default=None, help="events per throughput round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections, throughput")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s, latency phase")
    parser.add_argument("--rate-seconds", type=float, default=None, help="latency phase (10)")
    parser.add_argument("--pool", type=int, default=64, help="connections, latency phase")
    parser.add_argument(
        "--db-pool", type=int, default=2, help="the receiver engine's pool_size (2, as Runtime)"
    )
    args = parser.parse_args()
    if args.events is None:
        args.events = 1000 if args.quick else 3000
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rate_seconds is None:
        args.rate_seconds = 4.0 if args.quick else 10.0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = measure(args)
    print(table(result))
    print(f"\nwritten to {harness.write_results('webhook_ingest', result)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
