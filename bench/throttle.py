"""Measure the fleet throttle on a real Redis: achieved rate and the busiest sliding window.

    python bench/throttle.py --limit 1200 --processes 4 --threads 2 --seconds 10

Uses `REDIS_URL` when set (DB index included), otherwise starts the embedded Redis. Every
grant is timed by the Redis clock the script decided it with, so the numbers are exact.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import redis

from outbox.throttle import FleetThrottle
from workers.single_host import embedded


def _worker(
    redis_url: str, limit: int, burst: int, threads: int, start_at: float, stop_at: float
) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    throttle = FleetThrottle(client, limit, burst=burst, key_prefix="faxout-bench")
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
    return grants


def _busiest(grants: list[int], window_us: int) -> int:
    return max(bisect.bisect_right(grants, g + window_us) - i for i, g in enumerate(grants))


def run(redis_url: str, args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(redis_url)
    throttle = FleetThrottle(client, args.limit, burst=args.burst, key_prefix="faxout-bench")
    client.delete(*throttle.keys)  # start from an idle bucket
    start_at = time.time() + 2.0
    stop_at = start_at + args.seconds
    context = multiprocessing.get_context("spawn")
    job = (redis_url, args.limit, args.burst, args.threads, start_at, stop_at)
    with context.Pool(args.processes) as pool:
        results = pool.starmap(_worker, [job] * args.processes)
    grants = sorted(g for worker in results for g in worker)
    interval, slack = throttle.emission_interval, throttle.slack_seconds
    per_minute = (len(grants) - 1) / ((grants[-1] - grants[0]) / 1e6) * 60
    print(f"limit {args.limit}/min, burst {args.burst}, interval {interval:.6f} s")
    print(f"{args.processes} processes x {args.threads} threads, {args.seconds:.0f} s")
    print(f"grants: {len(grants)} ({[len(w) for w in results]} per process)")
    print(f"achieved: {per_minute:.1f}/min = {per_minute / args.limit:.2%} of the limit")
    for window in (1, 10, 60):
        if window <= args.seconds:
            busiest = _busiest(grants, window * 1_000_000)
            bound = args.burst + int((window + slack) // interval)
            print(f"busiest {window:>2} s window: {busiest} (GCRA bound {bound})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if os.environ.get("REDIS_URL"):
        run(os.environ["REDIS_URL"], args)
        return
    with tempfile.TemporaryDirectory() as tmp, embedded.embedded_redis(Path(tmp)) as url:
        run(url, args)


if __name__ == "__main__":
    main()
