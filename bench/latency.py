"""Benchmark: latency from an insert's COMMIT to its POST reaching mintfax, on an idle fleet.

    .venv/bin/python bench/latency.py [--quick] [--samples 200]

The fleet is the real one (one relay, 2 Celery workers x 2 prefork processes, started by
`workers.single_host.stack`) against the sandbox (rate limit 0, no faults) and idle between
samples: one row is inserted with plain psycopg and committed, the wall clock is read as soon as
COMMIT returns, and the next row follows after a random pause of 50-100 ms. The sandbox stamps every
`POST /v1/fax` arrival (`received_at`, wall clock, same host) before it reads the body; the
latency of a row is `received_at` of its idempotency key minus its commit time. Everything in
between is the system: NOTIFY, the relay's dispatch transaction and publish, the broker, the
Celery worker and pool child, the claim transaction, the pause and throttle checks, the request.

Targets (issue 4): p50 <= 20 ms, p99 <= 100 ms. Prints a table and writes
`bench/results/latency.json`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import harness  # bench/harness.py (the script's directory is on sys.path)
import httpx
import psycopg

from outbox.settings import libpq_url

P50_TARGET_MS = 20.0
P99_TARGET_MS = 100.0
REDIS_DB = 12


def sample(database_url: str, control: str, args: argparse.Namespace) -> list[float]:
    """Insert rows one at a time; returns each row's commit-to-POST latency in seconds."""
    rng = random.Random(args.seed)
    committed: dict[str, float] = {}
    with psycopg.connect(libpq_url(database_url)) as conn:
        for n in range(args.warmup + args.samples):
            row = conn.execute(
                "INSERT INTO fax_outbox (to_number, document, filename, reference)"
                " VALUES (%s, %s, 'doc.pdf', %s) RETURNING idempotency_key",
                (harness.DELIVERED_NUMBER, harness.PDF, f"latency-{n}"),
            ).fetchone()
            conn.commit()
            at = time.time()
            assert row is not None
            if n >= args.warmup:
                committed[row[0]] = at
            time.sleep(rng.uniform(0.05, 0.10))
    arrivals = wait_for_arrivals(control, set(committed), timeout=30)
    return [arrivals[key] - at for key, at in committed.items()]


def wait_for_arrivals(control: str, keys: set[str], timeout: float) -> dict[str, float]:
    """The first arrival time of each key at the sandbox (waits until all have arrived)."""
    deadline = time.monotonic() + timeout
    while True:
        log = httpx.get(f"{control}/requests", timeout=30).json()["data"]
        first: dict[str, float] = {}
        for entry in log:
            key = entry["idempotency_key"]
            if key in keys and key not in first:
                first[key] = entry["received_at"]
        if len(first) == len(keys):
            return first
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(keys) - len(first)} faxes never reached the sandbox")
        time.sleep(0.2)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with (
        harness.services() as urls,
        harness.scratch_database(urls.database_url, "latency") as database_url,
    ):
        redis_url = harness.redis_database(urls.redis_url, REDIS_DB)
        env = harness.fleet_env(database_url, redis_url, FAXOUT_RATE_LIMIT_PER_MINUTE="100000")
        with harness.stack(env, "latency") as running:
            base_url = running.start_sandbox("--rate-limit-per-minute", "0")
            running.env["MINTFAX_BASE_URL"] = base_url
            harness.start_fleet(running, workers=2, concurrency=2)
            latencies = sample(database_url, base_url.removesuffix("/v1") + "/sandbox", args)
    ms = sorted(value * 1000 for value in latencies)
    stats = {
        "p50_ms": round(harness.quantile(ms, 0.50), 2),
        "p90_ms": round(harness.quantile(ms, 0.90), 2),
        "p99_ms": round(harness.quantile(ms, 0.99), 2),
        "max_ms": round(ms[-1], 2),
        "min_ms": round(ms[0], 2),
    }
    return {
        "config": {
            "samples": args.samples,
            "warmup": args.warmup,
            "pause_ms": "uniform 50-100",
            "fleet": "1 relay + 2 Celery workers x 2 prefork processes",
            **harness.machine(),
        },
        "latency": stats,
        "targets": {"p50_ms": P50_TARGET_MS, "p99_ms": P99_TARGET_MS},
        "met": stats["p50_ms"] <= P50_TARGET_MS and stats["p99_ms"] <= P99_TARGET_MS,
    }


def table(result: dict[str, Any]) -> str:
    c, s = result["config"], result["latency"]
    met_50 = "yes" if s["p50_ms"] <= P50_TARGET_MS else "NO"
    met_99 = "yes" if s["p99_ms"] <= P99_TARGET_MS else "NO"
    return "\n".join(
        [
            f"latency benchmark: commit -> POST at the sandbox, {c['samples']} samples "
            f"({c['pause_ms']} ms apart), idle fleet, {c['cpus']} CPUs",
            "",
            "| quantile | ms       | target   | met |",
            "|----------|----------|----------|-----|",
            f"| p50      | {s['p50_ms']:>8.2f} | <= {P50_TARGET_MS:<5} | {met_50:<3} |",
            f"| p90      | {s['p90_ms']:>8.2f} |          |     |",
            f"| p99      | {s['p99_ms']:>8.2f} | <= {P99_TARGET_MS:<5} | {met_99:<3} |",
            f"| max      | {s['max_ms']:>8.2f} |          |     |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 samples")
    parser.add_argument("--samples", type=int, default=None, help="measured samples (200)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured samples first")
    parser.add_argument("--seed", type=int, default=4, help="seed of the pauses")
    args = parser.parse_args()
    if args.samples is None:
        args.samples = 60 if args.quick else 200
    result = measure(args)
    print(table(result))
    print(f"\nwritten to {harness.write_results('latency', result)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
