"""Benchmark: what `enqueue_fax` / `enqueue_faxes` cost over raw psycopg inserts of the same rows.

    .venv/bin/python bench/enqueue.py [--single 400] [--bulk-rows 1000] [--rounds 7]

Runs against `DATABASE_URL` when set (in a scratch database it creates and drops), else an
embedded PostgreSQL. The helper and the raw insert alternate (which goes first alternates too),
so drift (autovacuum, cache warm-up, a noisy neighbour) hits both alike.

- single: one intent per transaction, commit included, interleaved per operation. Helper:
  `enqueue_fax(conn, ...)` then `conn.commit()` on one SQLAlchemy connection. Raw: psycopg
  `INSERT ... VALUES` then commit on one psycopg connection.
- bulk: N intents (10 KB documents) in one transaction. Helper: `enqueue_faxes`. Raw: psycopg
  `executemany`. Both commit.

Targets (issue 2): single helper latency within 1.5x of raw; bulk helper throughput >= 0.7x of
raw. Prints a table and writes `bench/results/enqueue.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness  # bench/harness.py (the script's directory is on sys.path)
import psycopg

from outbox import FaxIntent, enqueue_fax, enqueue_faxes
from outbox.db import make_engine
from workers.single_host import embedded

RESULTS = Path(__file__).resolve().parent / "results" / "enqueue.json"
RAW_INSERT = (
    "INSERT INTO fax_outbox (to_number, document, filename, reference, retries, metadata)"
    " VALUES (%s, %s, %s, %s, %s, '{}'::jsonb)"
)
SINGLE_TARGET = 1.5
BULK_TARGET = 0.7


def document(size: int) -> bytes:
    """A PDF-headed document of `size` bytes with incompressible (unique) content."""
    header = b"%PDF-1.4\n"
    return header + os.urandom(size - len(header))


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated database of our own on DATABASE_URL's server, or on an embedded one."""
    with (
        embedded.services(os.environ.get("DATABASE_URL") or None, "redis://unused") as urls,
        harness.scratch_database(urls.database_url, "enqueue") as url,
    ):
        yield url


class Bench:
    """Holds one SQLAlchemy connection (helper) and one psycopg connection (raw) for the run."""

    def __init__(self, url: str, doc_bytes: int, recipients: int) -> None:
        self.engine = make_engine(url)
        self.helper_conn = self.engine.connect()
        self.raw_conn = psycopg.connect(url)
        self.doc_bytes = doc_bytes
        self.recipients = recipients
        self.counter = 0

    def close(self) -> None:
        self.helper_conn.close()
        self.raw_conn.close()
        self.engine.dispose()

    def _next(self) -> tuple[str, str]:
        """A fresh (recipient, reference): a new intent each time, never a duplicate."""
        self.counter += 1
        # Valid New York numbers, cycled: 1 recipient, or up to 10000 distinct ones (more than
        # the validator's number cache holds, so every number is parsed afresh).
        return f"+1212736{self.counter % self.recipients:04d}", f"bench-{self.counter}"

    def check_rows(self, expected: int) -> None:
        found = self.raw_conn.execute("SELECT count(*) FROM fax_outbox").fetchone()
        self.raw_conn.commit()
        if found is None or found[0] != expected:
            raise SystemExit(f"expected {expected} committed rows, found {found}")

    def truncate(self) -> None:
        self.raw_conn.execute("TRUNCATE fax_outbox CASCADE")
        self.raw_conn.commit()

    def helper_single(self, doc: bytes) -> float:
        to, reference = self._next()
        start = time.perf_counter()
        enqueue_fax(
            self.helper_conn,
            to=to,
            document=doc,
            filename="letter.pdf",
            reference=reference,
            environment="sandbox",
        )
        self.helper_conn.commit()
        return time.perf_counter() - start

    def raw_single(self, doc: bytes) -> float:
        to, reference = self._next()
        start = time.perf_counter()
        self.raw_conn.execute(RAW_INSERT, (to, doc, "letter.pdf", reference, 3))
        self.raw_conn.commit()
        return time.perf_counter() - start

    def helper_bulk(self, docs: list[bytes]) -> float:
        intents = [
            FaxIntent(to=to, document=doc, filename="letter.pdf", reference=reference)
            for doc, (to, reference) in zip(docs, [self._next() for _ in docs], strict=True)
        ]
        start = time.perf_counter()
        enqueue_faxes(self.helper_conn, intents, environment="sandbox")
        self.helper_conn.commit()
        return time.perf_counter() - start

    def raw_bulk(self, docs: list[bytes]) -> float:
        rows = [
            (to, doc, "letter.pdf", reference, 3)
            for doc, (to, reference) in zip(docs, [self._next() for _ in docs], strict=True)
        ]
        start = time.perf_counter()
        with self.raw_conn.cursor() as cursor:
            cursor.executemany(RAW_INSERT, rows)
        self.raw_conn.commit()
        return time.perf_counter() - start


def interleaved(rounds: int, first: Callable[[], Any], second: Callable[[], Any]) -> None:
    """Run both in every round, alternating which goes first."""
    for index in range(rounds):
        pair = (first, second) if index % 2 == 0 else (second, first)
        for run in pair:
            run()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with scratch_database() as url:
        bench = Bench(url, args.doc_kb * 1024, args.recipients)
        try:
            return measure(bench, args)
        finally:
            bench.close()


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    size = args.doc_kb * 1024
    # Warm-up: imports, statement caches, server-side prepared statements.
    for doc in [document(size) for _ in range(20)]:
        bench.helper_single(doc)
        bench.raw_single(doc)
    bench.helper_bulk([document(size) for _ in range(50)])
    bench.raw_bulk([document(size) for _ in range(50)])
    bench.truncate()

    # Single: interleaved per operation (helper, raw, raw, helper, ...), the finest grain, so
    # a burst of load on a shared machine lands on both.
    single: dict[str, list[float]] = {"helper": [], "raw": []}
    single_docs = [document(size) for _ in range(args.single)]
    for round_index in range(args.rounds):
        for index, doc in enumerate(single_docs):
            order = ["helper", "raw"] if (index + round_index) % 2 == 0 else ["raw", "helper"]
            for kind in order:
                runner = bench.helper_single if kind == "helper" else bench.raw_single
                single[kind].append(runner(doc))
    # Every timed enqueue must have committed a row, or the numbers measure nothing.
    bench.check_rows(2 * args.rounds * args.single)
    bench.truncate()

    bulk: dict[str, list[float]] = {"helper": [], "raw": []}
    bulk_docs = [document(size) for _ in range(args.bulk_rows)]

    def bulk_round(kind: str, fn: Callable[[list[bytes]], float]) -> None:
        bulk[kind].append(args.bulk_rows / fn(bulk_docs))
        bench.check_rows(args.bulk_rows)
        bench.truncate()

    interleaved(
        args.rounds,
        lambda: bulk_round("helper", bench.helper_bulk),
        lambda: bulk_round("raw", bench.raw_bulk),
    )

    def ms(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 3)

    helper_ms = statistics.median(single["helper"]) * 1000
    raw_ms = statistics.median(single["raw"]) * 1000
    helper_rps = statistics.median(bulk["helper"])
    raw_rps = statistics.median(bulk["raw"])
    return {
        "config": {
            "document_bytes": size,
            "single_per_round": args.single,
            "bulk_rows": args.bulk_rows,
            "rounds": args.rounds,
            "distinct_recipients": args.recipients,
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "single": {
            "helper_median_ms": round(helper_ms, 3),
            "helper_p95_ms": ms(single["helper"], 95),
            "raw_median_ms": round(raw_ms, 3),
            "raw_p95_ms": ms(single["raw"], 95),
            "ratio": round(helper_ms / raw_ms, 3),
            "target_max_ratio": SINGLE_TARGET,
            "met": helper_ms / raw_ms <= SINGLE_TARGET,
        },
        "bulk": {
            "helper_median_rows_per_s": round(helper_rps, 1),
            "raw_median_rows_per_s": round(raw_rps, 1),
            "helper_rounds_rows_per_s": [round(v, 1) for v in bulk["helper"]],
            "raw_rounds_rows_per_s": [round(v, 1) for v in bulk["raw"]],
            "ratio": round(helper_rps / raw_rps, 3),
            "target_min_ratio": BULK_TARGET,
            "met": helper_rps / raw_rps >= BULK_TARGET,
        },
    }


def table(result: dict[str, Any]) -> str:
    s, b, c = result["single"], result["bulk"], result["config"]
    lines = [
        f"enqueue benchmark: {c['document_bytes'] // 1024} KB documents, {c['rounds']} "
        f"interleaved rounds, {c['distinct_recipients']} distinct recipient(s), "
        f"database {c['database']}",
        "",
        "| measure                          | helper      | raw psycopg | ratio | target  | met |",
        "|----------------------------------|-------------|-------------|-------|---------|-----|",
        f"| single enqueue, median ms        | {s['helper_median_ms']:>11.3f} | "
        f"{s['raw_median_ms']:>11.3f} | {s['ratio']:>5.2f} | <= {SINGLE_TARGET:<4} | "
        f"{'yes' if s['met'] else 'NO ':3} |",
        f"| single enqueue, p95 ms           | {s['helper_p95_ms']:>11.3f} | "
        f"{s['raw_p95_ms']:>11.3f} |       |         |     |",
        f"| bulk {c['bulk_rows']:>5} rows, median rows/s   | "
        f"{b['helper_median_rows_per_s']:>11.0f} | "
        f"{b['raw_median_rows_per_s']:>11.0f} | {b['ratio']:>5.2f} | >= {BULK_TARGET:<4} | "
        f"{'yes' if b['met'] else 'NO ':3} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single", type=int, default=400, help="single enqueues per round")
    parser.add_argument("--bulk-rows", type=int, default=1000, help="rows per bulk batch")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--doc-kb", type=int, default=10, help="document size in KB")
    parser.add_argument(
        "--recipients",
        type=int,
        default=1,
        choices=range(1, 10_001),
        metavar="1..10000",
        help="distinct recipient numbers, cycled (10000 defeats the validator's number cache)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    result = run(args)
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.output}")
    return 0 if result["single"]["met"] and result["bulk"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
