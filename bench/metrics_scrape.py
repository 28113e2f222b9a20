"""Benchmark: one metrics scrape (and one dashboard snapshot) on a million rows, vs a bare
`SELECT count(*) FROM fax_outbox` on the same table.

    .venv/bin/python bench/metrics_scrape.py [--quick] [--rows 1000000] [--rounds 30]

One fresh database of the run, loaded with `INSERT ... SELECT generate_series`
(`SET LOCAL faxout.allow_system_columns = on`) and `VACUUM ANALYZE`d: `--rows` rows over the
last 30 days (90 % delivered, 3 % failed, 2 % rejected, 1 % cancelled, 2 % submitted, 1.5 %
pending, 0.5 % needs_review), one attempt per row that reached mintfax plus a retry for one in
ten (`fax_attempts`, about as many rows again), one recorded webhook event per delivered or
failed row (`fax_events`). Redis is this run's own database index.

Timed, interleaved, `--rounds` times each (after warm-up):

- scrape: what `GET /metrics` does without the HTTP: `workers.admin.FleetCollector` over
  `outbox.fleet_status.take_snapshot` (Postgres and Redis), exposed by prometheus-client's
  `generate_latest`;
- dashboard: the snapshot the page takes (with the last hour per minute) and its HTML;
- baseline: `SELECT count(*) FROM fax_outbox`, the cheapest statement that looks at every row;
- each of the snapshot's statements alone, with its EXPLAIN (ANALYZE, BUFFERS), to show which
  costs what and that none reads a table of a million rows (`Seq Scan`).

Target: no sequential scan of fax_outbox, fax_attempts or fax_events in any statement, and a
scrape under 1 s (a Prometheus default interval is 15 s). The ratio to the baseline is shown:
a scrape counts every row of three tables (by index), so it cannot cost less than one count.
Prints a table and writes `bench/results/metrics_scrape.json`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import harness  # bench/harness.py (the script's directory is on sys.path)
import psycopg
import redis
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, text

from outbox import repository
from outbox.db import make_engine
from outbox.fleet_status import (
    LATENCY_BUCKETS,
    LATENCY_WINDOW_SECONDS,
    FleetSnapshot,
    redis_figures,
    take_snapshot,
)
from outbox.settings import libpq_url
from workers.admin import FleetCollector
from workers.dashboard import render_dashboard

TARGET_SECONDS = 1.0
BIG_TABLES = ("fax_outbox", "fax_attempts", "fax_events")

_LOAD_ROWS = """
INSERT INTO fax_outbox (to_number, document, filename, reference, status, status_reason,
                        attempts, mintfax_fax_id, mintfax_status, first_attempt_at,
                        submitted_at, completed_at, next_attempt_at, created_at, updated_at,
                        lease_owner, lease_token, lease_expires_at, error_code, error_message)
SELECT '+15005550001', %(doc)s, 'doc.pdf', 'r-' || g, s.status::fax_status,
       CASE s.status WHEN 'rejected' THEN 'invalid_number' WHEN 'failed' THEN 'busy'
                     WHEN 'needs_review' THEN 'unknown_outcome' END,
       CASE WHEN s.status IN ('pending', 'cancelled') THEN 0 ELSE 1 END,
       CASE WHEN s.accepted THEN 'fax_' || g END,
       CASE WHEN s.accepted THEN 'queued' END,
       CASE WHEN s.status NOT IN ('pending', 'cancelled') THEN t.at END,
       CASE WHEN s.accepted THEN t.at + interval '3 seconds' END,
       CASE WHEN s.status IN ('delivered', 'failed') THEN t.at + interval '90 seconds'
            WHEN s.status IN ('rejected', 'cancelled') THEN t.at + interval '2 seconds' END,
       t.at, t.at, t.at,
       CASE WHEN s.status = 'sending' THEN 'bench:1' END,
       CASE WHEN s.status = 'sending' THEN gen_random_uuid() END,
       CASE WHEN s.status = 'sending' THEN now() + interval '1 minute' END,
       CASE WHEN s.status = 'failed' THEN 'busy' END,
       CASE WHEN s.status = 'failed' THEN 'line busy' END
FROM generate_series(1, %(count)s) AS g
CROSS JOIN LATERAL (
    SELECT CASE WHEN g %% 200 = 0 THEN 'needs_review'
                WHEN g %% 200 < 4 THEN 'pending'
                WHEN g %% 200 = 4 THEN 'sending'
                WHEN g %% 200 < 9 THEN 'submitted'
                WHEN g %% 200 < 15 THEN 'failed'
                WHEN g %% 200 < 19 THEN 'rejected'
                WHEN g %% 200 < 21 THEN 'cancelled'
                ELSE 'delivered' END
) AS k(status)
CROSS JOIN LATERAL (
    SELECT k.status AS status, k.status IN ('submitted', 'delivered', 'failed') AS accepted
) AS s
CROSS JOIN LATERAL (
    SELECT now() - interval '30 days' * (1 - g::float / %(count)s)
) AS t(at)
"""
_LOAD_ATTEMPTS = """
INSERT INTO fax_attempts (fax_id, attempt, worker, started_at, finished_at, duration_ms,
                          outcome, http_status)
SELECT id, 1, 'bench', first_attempt_at, first_attempt_at, 120,
       CASE WHEN status = 'rejected' THEN 'rejected' WHEN status = 'needs_review'
            THEN 'needs_review' ELSE 'submitted' END,
       CASE WHEN status = 'rejected' THEN 422 WHEN status = 'needs_review' THEN NULL
            ELSE 201 END
FROM fax_outbox WHERE first_attempt_at IS NOT NULL
UNION ALL
SELECT id, 2, 'bench', first_attempt_at, first_attempt_at, 80,
       CASE WHEN id % 3 = 0 THEN 'rate_limited' ELSE 'retry_scheduled' END,
       CASE WHEN id % 3 = 0 THEN 429 ELSE 503 END
FROM fax_outbox WHERE first_attempt_at IS NOT NULL AND id % 10 = 0
"""
_LOAD_EVENTS = """
INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, outbox_id, occurred_at,
                        received_at, payload, outcome, applied_at)
SELECT 'evt_' || id, 'fax.' || status, mintfax_fax_id, id, completed_at, completed_at,
       '{}'::jsonb, 'applied', completed_at
FROM fax_outbox WHERE status IN ('delivered', 'failed')
"""


def load(url: str, rows: int) -> float:
    """Bulk-load the three tables; returns the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("SET LOCAL faxout.allow_system_columns = on")
        conn.execute(_LOAD_ROWS, {"doc": harness.PDF, "count": rows})
        conn.execute(_LOAD_ATTEMPTS)
        conn.execute(_LOAD_EVENTS)
        conn.commit()
        conn.autocommit = True
        for table in (*BIG_TABLES, "fleet_pauses", "alerts", "balance_snapshots"):
            conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def _statements() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each statement of a snapshot (SQL text and parameters), for timing and EXPLAIN."""
    return {
        "count_by_status": (
            "SELECT status, count(*) FROM fax_outbox GROUP BY status",
            {},
        ),
        "oldest_pending": (
            "SELECT id, created_at FROM fax_outbox WHERE status = 'pending' "
            "ORDER BY created_at, id LIMIT 1",
            {},
        ),
        "attempt_counts": (
            "SELECT outcome, http_status, count(*) FROM fax_attempts GROUP BY 1, 2",
            {},
        ),
        "event_counts": ("SELECT outcome, count(*) FROM fax_events GROUP BY 1", {}),
        "latency_counts": (
            str(repository._LATENCY.text),
            {
                "n": len(LATENCY_BUCKETS),
                "negated": [-b for b in reversed(LATENCY_BUCKETS)],
                "now": None,
                "window": LATENCY_WINDOW_SECONDS,
            },
        ),
        "per_minute": (str(repository._LAST_HOUR.text), {"now": None, "minutes": 60}),
        "rows_to_look_at": (str(repository._ROWS_TO_LOOK_AT.text), {"limit": 20}),
    }


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(harness.quantile(values, 0.99), 2),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with (
        harness.services() as urls,
        harness.scratch_database(urls.database_url, "metrics") as url,
    ):
        load_seconds = load(url, args.rows)
        print(f"  loaded {args.rows:,} rows in {load_seconds:.1f} s")
        redis_url = harness.redis_database(urls.redis_url, 9)
        client = redis.Redis.from_url(redis_url)
        engine: Engine = make_engine(url)
        try:

            def take(*, series_minutes: int) -> FleetSnapshot:
                return take_snapshot(
                    engine,
                    redis=lambda: redis_figures(
                        client, limit_per_minute=60, queues=("faxout", "faxout.maintenance")
                    ),
                    series_minutes=series_minutes,
                )

            registry = CollectorRegistry(auto_describe=False)
            registry.register(FleetCollector(take))
            statements = _statements()

            def baseline() -> None:
                with engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM fax_outbox")).scalar_one()

            def statement(sql: str, params: dict[str, Any]) -> Callable[[], None]:
                def run() -> None:
                    with engine.connect() as conn:
                        conn.execute(text(sql), params).all()

                return run

            runs: dict[str, Callable[[], object]] = {
                "scrape": lambda: generate_latest(registry),
                "dashboard": lambda: render_dashboard(take(series_minutes=60)),
                "baseline_count": baseline,
                **{f"sql:{name}": statement(*sql) for name, sql in statements.items()},
            }
            for _ in range(3):  # warm-up: connections, caches, buffers
                for run in runs.values():
                    run()
            ms: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for index in range(args.rounds):
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    ms[name].append(_timed(runs[name]))
            plans = {}
            with engine.connect() as conn:
                for name, (sql, params) in statements.items():
                    plan = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"), params).scalars()
                    plans[name] = "\n".join(plan)
                counts = repository.count_by_status(conn)
                attempts = conn.execute(text("SELECT count(*) FROM fax_attempts")).scalar_one()
                events = conn.execute(text("SELECT count(*) FROM fax_events")).scalar_one()
            exposition = generate_latest(registry)
        finally:
            engine.dispose()
            client.close()
    seq_scans = sorted(
        f"{name}: {table}"
        for name, plan in plans.items()
        for table in BIG_TABLES
        if f"Seq Scan on {table}" in plan
    )
    measures = {name: summary(values) for name, values in ms.items()}
    scrape, base = measures["scrape"], measures["baseline_count"]
    return {
        "config": {
            "rows": args.rows,
            "attempts": attempts,
            "events": events,
            "rounds": args.rounds,
            "load_seconds": round(load_seconds, 1),
            "status_counts": {str(k): v for k, v in counts.items()},
            "exposition_bytes": len(exposition),
            **harness.machine(),
        },
        "measures": measures,
        "scrape_vs_baseline": round(scrape["p50_ms"] / base["p50_ms"], 2),
        "sequential_scans": seq_scans,
        "explain": plans,
        "target_seconds": TARGET_SECONDS,
        "met": not seq_scans and scrape["p99_ms"] < TARGET_SECONDS * 1000,
    }


def table(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        f"metrics scrape benchmark: {c['rows']:,} rows, {c['attempts']:,} attempts, "
        f"{c['events']:,} events; {c['rounds']} interleaved rounds, {c['cpus']} CPUs",
        "",
        "| what                     |   p50 ms |   p99 ms |",
        "|--------------------------|----------|----------|",
    ]
    for name, m in result["measures"].items():
        lines.append(f"| {name:<24} | {m['p50_ms']:>8.2f} | {m['p99_ms']:>8.2f} |")
    lines += [
        "",
        f"scrape / bare count(*) of fax_outbox (p50): {result['scrape_vs_baseline']:.2f}x; "
        f"exposition {c['exposition_bytes']:,} bytes",
        "sequential scans of a big table: " + (", ".join(result["sequential_scans"]) or "none"),
        f"target: no sequential scan and a scrape under {result['target_seconds']:g} s (p99): "
        f"{'met' if result['met'] else 'NOT met'}",
        "",
    ]
    for name, plan in result["explain"].items():
        lines += [f"EXPLAIN (ANALYZE, BUFFERS) {name}:", plan, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 10 rounds")
    parser.add_argument("--rows", type=int, default=None, help="rows of fax_outbox (1M)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (30)")
    args = parser.parse_args()
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    if args.rounds is None:
        args.rounds = 10 if args.quick else 30
    result = measure(args)
    print(table(result))
    print(f"\nwritten to {harness.write_results('metrics_scrape', result)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
