"""Benchmark: drain throughput and CPU per fax of the real system vs a minimal send loop.

    .venv/bin/python bench/drain.py [--quick] [--faxes 2000] [--rounds 3]

System: one relay and 2 Celery workers x 2 prefork processes (4 concurrent senders), started
as real processes by `workers.single_host.stack`, with `FAXOUT_RATE_LIMIT_PER_MINUTE` at its maximum
(100,000/min, far above what two cores can send) so the throttle is consulted on every fax but
never makes anyone wait. Minimal loop: 4 processes, each repeating "claim one due row with plain
psycopg (`UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`), POST
it with plain httpx, mark it submitted with plain psycopg" until no row is due. Both send to
the same sandbox process (rate limit 0, no faults), each side on its own fresh database of the
same server (so the relay never sees the loop's rows), in one run.

A round inserts N due rows in one transaction (plain SQL) and is timed from that COMMIT to the
last row's final update (`max(updated_at)`, database clock; the insert's commit time is read
from the same clock). Rounds alternate which side goes first; every round has fresh rows (the
tables are truncated in between) and fresh idempotency keys. One small warm-up round per side
runs first and is not counted.

CPU per fax: user + system CPU seconds, from /proc, of every process of a side, divided by N.
System: the relay, both Celery parent processes and their pool children. Minimal loop: its 4
processes. Excluded from both sides alike: the sandbox, Postgres and Redis (shared servers doing
the same requests for both), and this driver process.

Targets (issue 4): system throughput >= 0.6x the minimal loop; system CPU per fax <= 1.7x.
Prints a table and writes `bench/results/drain.json`.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from multiprocessing.connection import Connection as Pipe
from typing import Any

import harness  # bench/harness.py (the script's directory is on sys.path)
import httpx
import psycopg

from outbox.settings import libpq_url

THROUGHPUT_TARGET = 0.6
CPU_TARGET = 1.7
SENDERS = 4
REDIS_DB = 11
ROUND_TIMEOUT = 600.0

# The minimal loop's three statements: what any hand-written outbox drainer would run.
_MINIMAL_CLAIM = """
    UPDATE fax_outbox
    SET status = 'sending', lease_owner = %(owner)s, lease_token = gen_random_uuid(),
        lease_expires_at = now() + interval '120 seconds',
        first_attempt_at = coalesce(first_attempt_at, now())
    WHERE id = (
        SELECT id FROM fax_outbox
        WHERE status = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        FOR UPDATE SKIP LOCKED
        LIMIT 1
    )
    RETURNING id, idempotency_key, to_number, document, filename, retries
"""
_MINIMAL_DONE = """
    UPDATE fax_outbox
    SET status = 'submitted', mintfax_fax_id = %(fax_id)s, mintfax_status = %(status)s,
        submitted_at = now(), attempts = attempts + 1,
        lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
    WHERE id = %(id)s
"""


def minimal_sender(database_url: str, base_url: str, owner: str, pipe: Pipe) -> None:
    """One process of the minimal loop: on each "go", drain due rows until none is left."""
    with (
        psycopg.connect(database_url) as conn,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {harness.API_KEY}"}
        ) as http,
    ):
        pipe.send("ready")
        while pipe.recv() == "go":
            sent = 0
            while True:
                row = conn.execute(_MINIMAL_CLAIM, {"owner": owner}).fetchone()
                conn.commit()
                if row is None:
                    break
                fax_id, key, to, document, filename, retries = row
                response = http.post(
                    "/fax",
                    data={"to": to, "retries": str(retries)},
                    files={"file": (filename, document, "application/pdf")},
                    headers={"Idempotency-Key": key},
                )
                response.raise_for_status()
                body = response.json()
                conn.execute(
                    _MINIMAL_DONE, {"fax_id": body["id"], "status": body["status"], "id": fax_id}
                )
                conn.commit()
                sent += 1
            pipe.send(sent)


class MinimalLoop:
    """The 4 minimal-loop processes, started once and driven round by round."""

    def __init__(self, database_url: str, base_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.processes = []
        for n in range(SENDERS):
            parent, child = context.Pipe()
            process = context.Process(
                target=minimal_sender,
                args=(database_url, base_url, f"minimal-{n}", child),
                daemon=True,
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("minimal loop process did not start")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def drain(self) -> int:
        """Let every process drain the due rows; returns how many they sent."""
        for pipe in self.pipes:
            pipe.send("go")
        sent = 0
        for pipe in self.pipes:
            if not pipe.poll(ROUND_TIMEOUT):
                raise RuntimeError("minimal loop round timed out")
            sent += int(pipe.recv())
        return sent

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


class Side(abc.ABC):
    """One side of the comparison: its database, its processes, and how a round runs."""

    def __init__(self, name: str, database_url: str) -> None:
        self.name = name
        self.conn = psycopg.connect(libpq_url(database_url))
        self.rounds: list[dict[str, Any]] = []

    def reset(self) -> None:
        # CASCADE: every table that references fax_outbox (fax_events since migration 0008,
        # and any added later), not a list that falls behind the schema.
        self.conn.execute("TRUNCATE fax_outbox, alerts CASCADE")
        self.conn.commit()

    def round(self, count: int, label: str, *, record: bool = True) -> dict[str, Any]:
        self.reset()
        before = self._cpu()
        # The commit time, read from the database clock (the end is read from it too).
        started = self._insert(count, label)
        self._run()
        self._wait_drained(count)
        after = self._cpu()
        finished = self._last_update()
        seconds = (finished - started).total_seconds()
        by_role = {
            role: sum(after[role][pid] - before[role].get(pid, 0.0) for pid in after[role])
            for role in after
        }
        cpu = sum(by_role.values())
        result: dict[str, Any] = {
            "faxes": count,
            "seconds": round(seconds, 3),
            "faxes_per_s": round(count / seconds, 1),
            "cpu_s": round(cpu, 3),
            "cpu_ms_per_fax": round(cpu / count * 1000, 3),
            "cpu_ms_per_fax_by_role": {
                role: round(value / count * 1000, 3) for role, value in by_role.items()
            },
        }
        if record:
            self.rounds.append(result)
        return result

    def _cpu(self) -> dict[str, dict[int, float]]:
        return {
            role: {pid: harness.cpu_seconds(pid) for pid in pids}
            for role, pids in self.roles().items()
        }

    def _insert(self, count: int, label: str) -> datetime:
        self.conn.execute(
            "INSERT INTO fax_outbox (to_number, document, filename, reference)"
            " SELECT %s, %s, 'doc.pdf', %s || g FROM generate_series(1, %s) AS g",
            (harness.DELIVERED_NUMBER, harness.PDF, f"{self.name}-{label}-", count),
        )
        row = self.conn.execute("SELECT clock_timestamp()").fetchone()
        self.conn.commit()
        assert row is not None
        started: datetime = row[0]
        return started

    def _wait_drained(self, count: int) -> None:
        deadline = time.monotonic() + ROUND_TIMEOUT
        while time.monotonic() < deadline:
            row = self.conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'submitted'), count(*) FROM fax_outbox"
            ).fetchone()
            self.conn.commit()
            assert row is not None
            if row[0] == count:
                return
            if row[1] != count:
                raise RuntimeError(f"{self.name}: expected {count} rows, found {row[1]}")
            time.sleep(0.01)
        raise RuntimeError(f"{self.name}: not drained after {ROUND_TIMEOUT:.0f}s")

    def _last_update(self) -> datetime:
        row = self.conn.execute("SELECT max(updated_at) FROM fax_outbox").fetchone()
        self.conn.commit()
        assert row is not None
        finished: datetime = row[0]
        return finished

    @abc.abstractmethod
    def roles(self) -> dict[str, list[int]]:
        """The processes whose CPU this side is charged with, by role."""

    @abc.abstractmethod
    def _run(self) -> None:
        """Make the side drain the rows just inserted (it may do so by itself)."""


class SystemSide(Side):
    """The relay and Celery workers: a round runs by itself once the rows commit."""

    def __init__(self, database_url: str, relay: int, workers: list[int]) -> None:
        super().__init__("system", database_url)
        self.relay = relay
        self.workers = workers

    def roles(self) -> dict[str, list[int]]:
        children = [
            pid for worker in self.workers for pid in harness.process_tree(worker) if pid != worker
        ]
        return {
            "relay": harness.process_tree(self.relay),
            "celery_parents": self.workers,
            "celery_children": children,
        }

    def _run(self) -> None:
        pass  # the relay is woken by the insert's NOTIFY


class MinimalSide(Side):
    """The minimal loop: a round runs when its processes are told to go."""

    def __init__(self, database_url: str, loop: MinimalLoop) -> None:
        super().__init__("minimal", database_url)
        self.loop = loop

    def roles(self) -> dict[str, list[int]]:
        return {"senders": self.loop.pids}

    def _run(self) -> None:
        self.loop.drain()


@contextlib.contextmanager
def sides(args: argparse.Namespace) -> Iterator[tuple[SystemSide, MinimalSide]]:
    with (
        harness.services() as urls,
        harness.scratch_database(urls.database_url, "drain_sys") as system_db,
        harness.scratch_database(urls.database_url, "drain_min") as minimal_db,
    ):
        redis_url = harness.redis_database(urls.redis_url, REDIS_DB)
        env = harness.fleet_env(
            system_db,
            redis_url,
            FAXOUT_RATE_LIMIT_PER_MINUTE="100000",
        )
        with harness.stack(env, "drain") as running:
            base_url = running.start_sandbox("--rate-limit-per-minute", "0")
            running.env["MINTFAX_BASE_URL"] = base_url
            harness.start_fleet(running, workers=2, concurrency=SENDERS // 2)
            relay, *workers = harness.stack_pids(running, ["relay", "worker0", "worker1"])
            system = SystemSide(system_db, relay, workers)
            loop = MinimalLoop(libpq_url(minimal_db), base_url)
            minimal = MinimalSide(minimal_db, loop)
            try:
                yield system, minimal
            finally:
                loop.close()
                system.conn.close()
                minimal.conn.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with sides(args) as (system, minimal):
        for side in (system, minimal):
            side.round(args.warmup, "warmup", record=False)
        for index in range(args.rounds):
            order = (system, minimal) if index % 2 == 0 else (minimal, system)
            for side in order:
                result = side.round(args.faxes, f"r{index}")
                print(
                    f"  round {index + 1} {side.name:>7}: {result['faxes_per_s']:7.1f} faxes/s, "
                    f"{result['cpu_ms_per_fax']:6.2f} ms CPU/fax "
                    f"{result['cpu_ms_per_fax_by_role']}",
                    flush=True,
                )
        return summarise(args, system.rounds, minimal.rounds)


def summarise(
    args: argparse.Namespace, system: list[dict[str, Any]], minimal: list[dict[str, Any]]
) -> dict[str, Any]:
    def median(rounds: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rounds)

    sys_rate, min_rate = median(system, "faxes_per_s"), median(minimal, "faxes_per_s")
    sys_cpu, min_cpu = median(system, "cpu_ms_per_fax"), median(minimal, "cpu_ms_per_fax")
    throughput_ratio = sys_rate / min_rate
    cpu_ratio = sys_cpu / min_cpu
    return {
        "config": {
            "faxes_per_round": args.faxes,
            "rounds": args.rounds,
            "senders": SENDERS,
            "system": "1 relay + 2 Celery workers x 2 prefork processes",
            "minimal": f"{SENDERS} processes: psycopg claim/update + httpx POST",
            "cpu_counted": {
                "system": "relay, Celery worker parents and pool children",
                "minimal": "its 4 processes",
                "excluded": "sandbox, Postgres, Redis, the benchmark driver",
            },
            **harness.machine(),
        },
        "system_rounds": system,
        "minimal_rounds": minimal,
        "throughput": {
            "system_median_faxes_per_s": round(sys_rate, 1),
            "minimal_median_faxes_per_s": round(min_rate, 1),
            "ratio": round(throughput_ratio, 3),
            "target_min_ratio": THROUGHPUT_TARGET,
            "met": throughput_ratio >= THROUGHPUT_TARGET,
        },
        "cpu_per_fax": {
            "system_median_ms": round(sys_cpu, 3),
            "minimal_median_ms": round(min_cpu, 3),
            "ratio": round(cpu_ratio, 3),
            "target_max_ratio": CPU_TARGET,
            "met": cpu_ratio <= CPU_TARGET,
        },
    }


def table(result: dict[str, Any]) -> str:
    c, t, u = result["config"], result["throughput"], result["cpu_per_fax"]
    return "\n".join(
        [
            f"drain benchmark: {c['faxes_per_round']} faxes per round, {c['rounds']} interleaved "
            f"rounds, {c['senders']} concurrent senders, {c['cpus']} CPUs",
            "",
            "| measure (median)        | system   | minimal  | ratio | target  | met |",
            "|-------------------------|----------|----------|-------|---------|-----|",
            f"| throughput, faxes/s     | {t['system_median_faxes_per_s']:>8.1f} | "
            f"{t['minimal_median_faxes_per_s']:>8.1f} | {t['ratio']:>5.2f} | "
            f">= {THROUGHPUT_TARGET:<4} | {'yes' if t['met'] else 'NO ':3} |",
            f"| CPU per fax, ms         | {u['system_median_ms']:>8.2f} | "
            f"{u['minimal_median_ms']:>8.2f} | {u['ratio']:>5.2f} | <= {CPU_TARGET:<4} | "
            f"{'yes' if u['met'] else 'NO ':3} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 faxes per round")
    parser.add_argument("--faxes", type=int, default=None, help="faxes per round (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    parser.add_argument("--warmup", type=int, default=100, help="faxes of the warm-up round")
    args = parser.parse_args()
    if args.faxes is None:
        args.faxes = 500 if args.quick else 2000
    result = measure(args)
    print()
    print(table(result))
    print(f"\nwritten to {harness.write_results('drain', result)}")
    return 0 if result["throughput"]["met"] and result["cpu_per_fax"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
