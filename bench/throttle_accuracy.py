"""Benchmark: how close the whole fleet runs to mintfax's rate limit without ever hitting it.

    .venv/bin/python bench/throttle_accuracy.py [--quick] [--seconds 90] [--limit 600]

The full system as real processes (`workers.single_host.stack`): one relay, 2 Celery workers x
2 prefork processes (4 senders), beat, with `FAXOUT_RATE_LIMIT_PER_MINUTE=600`, against the sandbox
enforcing the same 600 requests per sliding 60 s window (it answers 429 beyond that). Enough
rows are enqueued up front (a third more than the limit allows in the run) that the fleet is
saturated for the whole run.

The sandbox's request log gives every `POST /v1/fax` arrival (`received_at`) and its status;
its stats count the 429s, which the gate refuses before they reach the log. Measured, over the
`--seconds` following the first arrival:

- achieved rate: accepted POSTs per minute, `(n - 1) / (last - first)` over the run, as % of
  the limit (target >= 98 %; the throttle's design rate is 98.3 %, see outbox/throttle.py);
- 429s from the sandbox (target 0);
- the busiest sliding 60 s window at the sandbox (must stay <= the limit).

Prints a table and writes `bench/results/throttle_accuracy.json`.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from typing import Any

import harness  # bench/harness.py (the script's directory is on sys.path)
import httpx
import psycopg

from outbox.settings import libpq_url
from outbox.throttle import emission_interval_us

RATE_TARGET = 0.98
REDIS_DB = 13
WINDOW = 60.0


def run_fleet(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the saturated fleet for the measured period; returns (arrivals, sandbox stats)."""
    rows = int(args.limit * args.seconds / WINDOW * 4 / 3) + 50
    with (
        harness.services() as urls,
        harness.scratch_database(urls.database_url, "throttle") as database_url,
    ):
        redis_url = harness.redis_database(urls.redis_url, REDIS_DB)
        env = harness.fleet_env(
            database_url, redis_url, FAXOUT_RATE_LIMIT_PER_MINUTE=str(args.limit)
        )
        with harness.stack(env, "throttle") as running:
            base_url = running.start_sandbox("--rate-limit-per-minute", str(args.limit))
            control = base_url.removesuffix("/v1") + "/sandbox"
            running.env["MINTFAX_BASE_URL"] = base_url
            harness.start_fleet(running, workers=2, concurrency=2, beat=True)
            with psycopg.connect(libpq_url(database_url)) as conn:
                harness.insert_pending(conn, rows, "throttle")
            first = wait_for_first_arrival(control)
            time.sleep(max(0.0, first + args.seconds - time.time()))
            log = httpx.get(f"{control}/requests", timeout=60).json()["data"]
            stats = httpx.get(f"{control}/stats", timeout=60).json()
    measured = [e for e in log if first <= e["received_at"] <= first + args.seconds]
    return measured, stats


def wait_for_first_arrival(control: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = httpx.get(f"{control}/requests", timeout=30).json()["data"]
        if log:
            return float(min(e["received_at"] for e in log))
        time.sleep(0.05)
    raise RuntimeError("no fax reached the sandbox")


def busiest_window(times: list[float], window: float) -> int:
    """The most arrivals in any `window` seconds (each window starting at an arrival)."""
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    arrivals, stats = run_fleet(args)
    accepted = sorted(e["received_at"] for e in arrivals if e["status"] == "201")
    other = sorted({e["status"] for e in arrivals if e["status"] != "201"})
    span = accepted[-1] - accepted[0]
    per_minute = (len(accepted) - 1) / span * WINDOW
    rate = per_minute / args.limit
    too_many = int(stats["requests_by_status"].get("429", 0))
    busiest = busiest_window(accepted, WINDOW) if args.seconds >= WINDOW else None
    design = design_rate(args.limit)
    return {
        "config": {
            "limit_per_minute": args.limit,
            "seconds": args.seconds,
            "fleet": "1 relay + 2 Celery workers x 2 prefork processes + beat",
            "sandbox": f"sliding 60 s window of {args.limit} requests",
            **harness.machine(),
        },
        "accepted_posts": len(accepted),
        "other_statuses": other,
        "span_seconds": round(span, 3),
        "achieved_per_minute": round(per_minute, 2),
        "achieved_pct_of_limit": round(rate * 100, 2),
        "throttle_design_pct_of_limit": round(design * 100, 2),
        "target_min_pct": RATE_TARGET * 100,
        "responses_429": too_many,
        "busiest_60s_window": busiest,
        "met": rate >= RATE_TARGET and too_many == 0 and not other,
    }


def design_rate(limit: int) -> float:
    """The sustained rate the fleet throttle is built for, as a fraction of `limit`."""
    return 1_000_000 / emission_interval_us(limit) * WINDOW / limit


def table(result: dict[str, Any]) -> str:
    c = result["config"]
    busiest = result["busiest_60s_window"]
    rate_met = "yes" if result["achieved_pct_of_limit"] >= RATE_TARGET * 100 else "NO"
    return "\n".join(
        [
            f"throttle accuracy: limit {c['limit_per_minute']}/min (fleet and sandbox), "
            f"{c['seconds']:.0f} s, 4 senders, {c['cpus']} CPUs",
            "",
            "| measure                         | value    | target     | met |",
            "|---------------------------------|----------|------------|-----|",
            f"| accepted POSTs                  | {result['accepted_posts']:>8} |"
            "            |     |",
            f"| achieved rate, /min             | {result['achieved_per_minute']:>8.1f} |"
            "            |     |",
            f"| achieved, % of limit            | {result['achieved_pct_of_limit']:>8.2f} |"
            f" >= {RATE_TARGET * 100:<7.0f} | {rate_met:<3} |",
            f"| throttle design rate, % limit   | {result['throttle_design_pct_of_limit']:>8.2f} |"
            "            |     |",
            f"| 429 responses                   | {result['responses_429']:>8} | 0          | "
            f"{'yes' if result['responses_429'] == 0 else 'NO':<3} |",
            f"| busiest sliding 60 s window     | {busiest if busiest is not None else '-':>8} |"
            f" <= {c['limit_per_minute']:<7} |     |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s instead of 90 s")
    parser.add_argument("--seconds", type=float, default=None, help="measured period (90)")
    parser.add_argument("--limit", type=int, default=600, help="requests per minute")
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 30.0 if args.quick else 90.0
    result = measure(args)
    print(table(result))
    print(f"\nwritten to {harness.write_results('throttle_accuracy', result)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
