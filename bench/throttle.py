"""Measure the fleet throttle on a real Redis: achieved rate and the busiest sliding window.

    python bench/throttle.py --limit 1200 --processes 4 --threads 2 --seconds 10
    python bench/throttle.py --limit 1200 --provider-limit 600   # mintfax's lower figure followed

Uses `REDIS_URL` when set (DB index included), otherwise starts the embedded Redis. Every
grant is timed by the Redis clock the script decided it with, so the numbers are exact.
`saturate` is also what tests/integration/test_throttle_redis.py asserts on.

Target (the integration test's bar): achieved >= 95 % of the limit, and no 1/10/60 s window
over its GCRA bound. Prints the figures and writes `bench/results/throttle.json`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from outbox.throttle import FleetThrottle
from workers.single_host import embedded

KEY_PREFIX = "faxout-bench"
RESULTS = Path(__file__).resolve().parent / "results" / "throttle.json"
# tests/integration/test_throttle_redis.py's bar for the same load (a loaded machine's margin
# below the throttle's design rate of ~98 %).
RATE_TARGET = 0.95


def saturate(
    redis_url: str,
    limit: int,
    *,
    burst: int = 1,
    processes: int = 4,
    threads: int = 2,
    seconds: float = 10.0,
    start_delay: float = 2.0,
    key_prefix: str = KEY_PREFIX,
    provider_limit: int | None = None,
) -> list[list[int]]:
    """Workers in `processes` spawned processes x `threads` threads take tokens flat out for
    `seconds`, each sleeping what the throttle answers; returns, per process, the Redis time
    (µs) of every grant, as the script decided it.

    The run starts `start_delay` seconds from now, so every process is up and connected first,
    from an idle bucket. With `provider_limit`, the bucket follows that lower figure of mintfax's
    (outbox/provider_limit.py), as a fleet does once an answer has taught it.
    """
    client = redis.Redis.from_url(redis_url)
    throttle = FleetThrottle(client, limit, burst=burst, key_prefix=key_prefix)
    client.delete(*throttle.keys, throttle.provider_limit_key)
    if provider_limit is not None:
        throttle.follow_provider_limit(provider_limit)
        client.delete(*throttle.keys)  # an idle bucket all the same
    client.close()
    start_at = time.time() + start_delay
    job = (redis_url, limit, burst, key_prefix, threads, start_at, start_at + seconds)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.starmap(_take_tokens, [job] * processes)


def _take_tokens(
    redis_url: str,
    limit: int,
    burst: int,
    key_prefix: str,
    threads: int,
    start_at: float,
    stop_at: float,
) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    throttle = FleetThrottle(client, limit, burst=burst, key_prefix=key_prefix)
    grants: list[int] = []
    lock = threading.Lock()

    def loop() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            decision = throttle.try_acquire()
            if decision.granted:
                with lock:
                    grants.append(round(decision.redis_time * 1_000_000))
            else:
                time.sleep(decision.wait_seconds)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    client.close()
    return grants


def busiest_window(grants: Sequence[int], window_us: int) -> int:
    """The most grants in any closed window of `window_us` (sorted grants, µs)."""
    return max(bisect.bisect_right(grants, g + window_us) - i for i, g in enumerate(grants))


def per_minute(grants: Sequence[int]) -> float:
    """The rate of sorted grants (µs) over the span they cover, per minute."""
    return (len(grants) - 1) / ((grants[-1] - grants[0]) / 1e6) * 60


def run(redis_url: str, args: argparse.Namespace) -> None:
    results = saturate(
        redis_url,
        args.limit,
        burst=args.burst,
        processes=args.processes,
        threads=args.threads,
        seconds=args.seconds,
        provider_limit=args.provider_limit,
    )
    grants = sorted(g for worker in results for g in worker)
    limit = min(args.limit, args.provider_limit or args.limit)
    throttle = FleetThrottle(redis.Redis.from_url(redis_url), limit, burst=args.burst)
    interval, slack = throttle.emission_interval, throttle.slack_seconds
    achieved = per_minute(grants)
    if limit < args.limit:
        print(f"configured {args.limit}/min, mintfax's {limit}/min followed")
    print(f"limit {limit}/min, burst {args.burst}, interval {interval:.6f} s")
    print(f"{args.processes} processes x {args.threads} threads, {args.seconds:.0f} s")
    print(f"grants: {len(grants)} ({[len(w) for w in results]} per process)")
    print(f"achieved: {achieved:.1f}/min = {achieved / limit:.2%} of the limit")
    windows = []
    for window in (1, 10, 60):
        if window <= args.seconds:
            busiest = busiest_window(grants, window * 1_000_000)
            bound = args.burst + int((window + slack) // interval)
            print(f"busiest {window:>2} s window: {busiest} (GCRA bound {bound})")
            windows.append({"seconds": window, "busiest": busiest, "gcra_bound": bound})
    # The figures above as JSON, for bench/report.py (nothing more is measured for it).
    result = {
        "config": {
            "limit_per_minute": limit,
            "configured_limit_per_minute": args.limit,
            "burst": args.burst,
            "processes": args.processes,
            "threads": args.threads,
            "seconds": args.seconds,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "grants": len(grants),
        "grants_per_process": [len(w) for w in results],
        "achieved_per_minute": round(achieved, 2),
        "achieved_pct_of_limit": round(achieved / limit * 100, 2),
        "windows": windows,
        "target_min_pct": RATE_TARGET * 100,
        "met": achieved >= RATE_TARGET * limit
        and all(w["busiest"] <= w["gcra_bound"] for w in windows),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--provider-limit", type=int, default=None, help="mintfax's lower limit, followed"
    )
    args = parser.parse_args()
    if os.environ.get("REDIS_URL"):
        run(os.environ["REDIS_URL"], args)
        return
    with tempfile.TemporaryDirectory() as tmp, embedded.embedded_redis(Path(tmp)) as url:
        run(url, args)


if __name__ == "__main__":
    main()
