"""Benchmark: `POST /v1/fax` on the sandbox vs a bare Starlette endpoint on the same server.

    .venv/bin/python bench/sandbox.py [--seconds 3] [--rounds 5] [--concurrency 32] [--clients 1]

One uvicorn server process (the sandbox's own runner, h11, one event loop) serves both the
simulator and `POST /bare`, a plain Starlette endpoint that reads the same multipart body and
answers a small 201 JSON, so the ratio isolates what the simulator adds: auth, rate-limit
bookkeeping (limit 0), multipart parsing, file sniffing, idempotency, the hold, the fax record and
its carrier task. Load comes from `--clients` separate processes, each `--concurrency` keep-alive
connections on raw asyncio streams (the multipart body httpx encodes, sent as bytes, a fresh
Idempotency-Key each time), so the load generator is cheap and not in the server's GIL. Rounds
alternate which endpoint goes first; the state is reset before every sandbox round.

Target (issue 3): sandbox >= 0.5x the bare endpoint's requests/second. Prints a table and writes
`bench/results/sandbox.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"
TARGET = 0.5
API_KEY = "fx_test_bench"
PDF = b"%PDF-1.4\n" + b"1 0 obj<</Type/Catalog>>endobj\n" * 30 + b"%%EOF\n"  # ~1 KB


def serve() -> None:
    """Server mode: the sandbox plus `/bare` on one uvicorn server (this process)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from mintfax_sandbox import Sandbox, SandboxConfig, create_app
    from mintfax_sandbox.server import serve as serve_forever

    async def bare(request: Request) -> Response:
        await request.body()
        body = json.dumps(
            {"id": str(uuid.uuid4()), "status": "queued", "to": "+15005550001", "created_at": "x"}
        )
        return Response(body, 201, media_type="application/json")

    state = Sandbox(SandboxConfig(rate_limit_per_minute=0))
    app = create_app(sandbox=state, extra_routes=[Route("/bare", bare, methods=["POST"])])

    serve_forever(app, state.transports, "127.0.0.1", 0)  # prints "sandbox listening on URL"


def _multipart_body() -> tuple[bytes, str]:
    """The request body, encoded once (the same bytes httpx would send for `files=`/`data=`)."""
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"to": "+15005550001"},
        files={"file": ("doc.pdf", PDF, "application/pdf")},
    )
    return request.read(), request.headers["content-type"]


async def _load(url: str, path: str, seconds: float, concurrency: int) -> int:
    """Keep-alive HTTP/1.1 connections, one request in flight on each, for `seconds`.

    A minimal client on raw streams (a few microseconds a request, unlike httpx's hundreds), so
    the server, not the load generator, is what gets measured.
    """
    host, port = url.removeprefix("http://").split(":")
    body, content_type = _multipart_body()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    done = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                key = uuid.uuid4().hex.encode()
                writer.write(head + b"Idempotency-Key: " + key + b"\r\n\r\n" + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                if status_line.split()[1] != b"201":
                    raise RuntimeError(f"{path}: {status_line!r} {payload[:300]!r}")
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return done


def _client(args: tuple[str, str, float, int, Any]) -> None:
    url, path, seconds, concurrency, queue = args
    queue.put(asyncio.run(_load(url, path, seconds, concurrency)))


def measure(url: str, path: str, seconds: float, concurrency: int, clients: int) -> float:
    """Requests per second of `path` under `clients` processes of load."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=((url, path, seconds, concurrency, queue),))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    # Each client counts only its own load window (process start-up is not in it).
    total = sum(queue.get(timeout=seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), to price a request in CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "listening on " not in line:
            raise SystemExit("the benchmark server did not start")
        url = line.rsplit(" ", 1)[1].strip()
        bare: list[float] = []
        sandbox: list[float] = []
        cpu_us: dict[str, list[float]] = {"bare": [], "sandbox": []}
        measure(url, "/bare", 1.0, args.concurrency, args.clients)  # warm-up
        for n in range(args.rounds):
            order = ("bare", "sandbox") if n % 2 == 0 else ("sandbox", "bare")
            for which in order:
                if which == "sandbox":
                    httpx.post(f"{url}/sandbox/reset", timeout=30).raise_for_status()
                path = "/bare" if which == "bare" else "/v1/fax"
                before = _cpu_seconds(server.pid)
                rps = measure(url, path, args.seconds, args.concurrency, args.clients)
                # Server CPU per request: what throughput would be on an idle machine.
                cpu_us[which].append(
                    (_cpu_seconds(server.pid) - before) / (rps * args.seconds) * 1e6
                )
                (bare if which == "bare" else sandbox).append(rps)
        faxes = len(httpx.get(f"{url}/sandbox/faxes", timeout=60).json()["data"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)

    bare_rps, sandbox_rps = statistics.median(bare), statistics.median(sandbox)
    ratio = sandbox_rps / bare_rps
    # Each round's pair ran back to back, so its ratio cancels most machine-load drift.
    paired = statistics.median(s / b for s, b in zip(sandbox, bare, strict=True))
    cpu_bare, cpu_sandbox = statistics.median(cpu_us["bare"]), statistics.median(cpu_us["sandbox"])
    result = {
        "benchmark": "sandbox POST /v1/fax vs bare Starlette endpoint, same uvicorn server",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "clients": args.clients,
        "concurrency_per_client": args.concurrency,
        "bare_rps": {"median": round(bare_rps, 1), "rounds": [round(x, 1) for x in bare]},
        "sandbox_rps": {"median": round(sandbox_rps, 1), "rounds": [round(x, 1) for x in sandbox]},
        "faxes_in_last_round": faxes,
        "ratio": round(ratio, 3),
        "paired_ratio_median": round(paired, 3),
        "server_cpu_us_per_request": {
            "bare": round(cpu_bare, 1),
            "sandbox": round(cpu_sandbox, 1),
            "ratio_bare_over_sandbox": round(cpu_bare / cpu_sandbox, 3),
        },
        "target": TARGET,
        "meets_target": ratio >= TARGET,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'endpoint':<28}{'median req/s':>14}{'server CPU us/req':>19}  rounds (req/s)")
    print(
        f"{'bare Starlette POST /bare':<28}{bare_rps:>14.0f}{cpu_bare:>19.0f}"
        f"  {[round(x) for x in bare]}"
    )
    print(
        f"{'sandbox POST /v1/fax':<28}{sandbox_rps:>14.0f}{cpu_sandbox:>19.0f}"
        f"  {[round(x) for x in sandbox]}"
    )
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(
        f"ratio of medians {ratio:.2f}, median of per-round ratios {paired:.2f}, "
        f"CPU-cost ratio {cpu_bare / cpu_sandbox:.2f} ({verdict} the >= {TARGET}x target); "
        f"wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
