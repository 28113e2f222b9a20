"""Retention on real Postgres at 100 k rows: the right bytes and rows go and nothing else,
sends are never blocked by a pass, two passes at once share the work, a pass killed midway
leaves every row whole; and the schema keeps a row without its bytes from ever being sent.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import psycopg
import pytest
from sqlalchemy import Engine, text

from outbox import enqueue_fax, repository
from outbox.clock import DatabaseClock, FrozenClock
from outbox.models import FaxStatus
from outbox.retention import DAY_SECONDS, RetentionPolicy, RetentionService
from outbox.settings import sqlalchemy_url

ROWS = 100_000


def database_clock(engine: Engine) -> DatabaseClock:
    def read() -> datetime:
        with engine.connect() as conn:
            return repository.database_now(conn)

    return DatabaseClock(read)


def generate(
    engine: Engine,
    count: int,
    *,
    prefix: str,
    status: str,
    final_days_ago: float | None = None,
    with_history: bool = False,
) -> None:
    """`count` rows in `status` (final `final_days_ago` days ago), fast: one INSERT ... SELECT
    over generate_series (fixtures only may set system columns; README "Writing a fax")."""
    accepted = status in ("submitted", "delivered", "failed")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        conn.execute(
            text(
                """
                INSERT INTO fax_outbox (to_number, document, filename, reference, status,
                                        mintfax_fax_id, submitted_at, completed_at, final_at)
                SELECT '+1212555' || lpad((g % 10000)::text, 4, '0'),
                       convert_to(:prefix || ' document ' || g, 'UTF8'), 'doc.txt',
                       :prefix || '-' || g, CAST(:status AS fax_status),
                       CASE WHEN :accepted THEN :prefix || '-fax-' || g END,
                       CASE WHEN :accepted THEN now() - interval '400 days' END,
                       now() - make_interval(secs => :age),
                       CASE WHEN :final THEN now() - make_interval(secs => :age) END
                FROM generate_series(1, :count) AS g
                """
            ),
            {
                "prefix": prefix,
                "status": status,
                "accepted": accepted,
                "age": (final_days_ago or 0) * DAY_SECONDS,
                "final": final_days_ago is not None,
                "count": count,
            },
        )
        if with_history:
            conn.execute(
                text(
                    """
                    INSERT INTO fax_attempts (fax_id, attempt, started_at, finished_at,
                                              duration_ms, outcome, http_status)
                    SELECT id, 1, now(), now(), 5, 'submitted', 201 FROM fax_outbox
                    WHERE reference LIKE :prefix || '-%'
                    """
                ),
                {"prefix": prefix},
            )
            conn.execute(
                text(
                    """
                    INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, outbox_id,
                                            occurred_at, payload, outcome)
                    SELECT 'evt-' || id, 'fax.delivered', mintfax_fax_id, id, now(), '{}',
                           'applied'
                    FROM fax_outbox WHERE reference LIKE :prefix || '-%'
                    """
                ),
                {"prefix": prefix},
            )
            conn.execute(
                text(
                    """
                    INSERT INTO alerts (kind, dedupe_key, message, fax_id, created_at)
                    SELECT 'test', 'test:' || id, 'about a fax', id, now() FROM fax_outbox
                    WHERE reference LIKE :prefix || '-%'
                    """
                ),
                {"prefix": prefix},
            )


def counts(engine: Engine, prefix: str) -> dict[str, int]:
    """How many rows of `prefix` exist, hold their bytes, have history."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                """
                SELECT count(*), count(document), count(document_purged_at),
                       (SELECT count(*) FROM fax_attempts a JOIN fax_outbox f ON f.id = a.fax_id
                        WHERE f.reference LIKE :p),
                       (SELECT count(*) FROM fax_events WHERE event_id IN (
                            SELECT 'evt-' || id FROM fax_outbox WHERE reference LIKE :p)),
                       (SELECT count(*) FROM alerts al JOIN fax_outbox f ON f.id = al.fax_id
                        WHERE f.reference LIKE :p)
                FROM fax_outbox WHERE reference LIKE :p
                """
            ),
            {"p": prefix + "-%"},
        ).one()
    return dict(
        zip(("rows", "documents", "purged", "attempts", "events", "alerts"), row, strict=True)
    )


@pytest.fixture
def big_table(engine: Engine) -> Engine:
    """100 k rows: old and young final rows of each final status, and rows not final."""
    generate(engine, 40_000, prefix="old-delivered", status="delivered", final_days_ago=40)
    generate(engine, 10_000, prefix="old-rejected", status="rejected", final_days_ago=35)
    generate(engine, 5_000, prefix="old-cancelled", status="cancelled", final_days_ago=31)
    generate(engine, 20_000, prefix="young-failed", status="failed", final_days_ago=10)
    generate(engine, 15_000, prefix="pending", status="pending")
    generate(engine, 5_000, prefix="review", status="needs_review")
    generate(engine, 5_000, prefix="submitted", status="submitted")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE fax_outbox"))
        conn.commit()
    return engine


def test_documents_of_old_final_rows_go_and_nothing_else(big_table: Engine) -> None:
    engine = big_table
    with engine.connect() as conn:
        keys_before: dict[int, str] = dict(
            conn.execute(
                text("SELECT id, idempotency_key || document_sha256 FROM fax_outbox")
            ).all()
        )
    service = RetentionService(
        engine, database_clock(engine), RetentionPolicy(document_age=30 * DAY_SECONDS)
    )
    started = time.perf_counter()
    report = service.run_once()
    elapsed = time.perf_counter() - started
    print(f"retention pass over {ROWS} rows: {report.documents_removed} removed in {elapsed:.2f}s")

    assert report.documents_removed == 55_000 and report.complete
    for prefix in ("old-delivered", "old-rejected", "old-cancelled"):
        c = counts(engine, prefix)
        assert c["documents"] == 0 and c["purged"] == c["rows"] > 0, prefix
    for prefix in ("young-failed", "pending", "review", "submitted"):
        c = counts(engine, prefix)
        assert c["documents"] == c["rows"] > 0 and c["purged"] == 0, prefix
    with engine.connect() as conn:
        keys_after: dict[int, str] = dict(
            conn.execute(
                text("SELECT id, idempotency_key || document_sha256 FROM fax_outbox")
            ).all()
        )
        statuses: dict[str, int] = dict(
            conn.execute(text("SELECT status::text, count(*) FROM fax_outbox GROUP BY 1")).all()
        )
    assert keys_after == keys_before  # every key and fingerprint stays
    assert statuses == {
        "delivered": 40_000,
        "rejected": 10_000,
        "cancelled": 5_000,
        "failed": 20_000,
        "pending": 15_000,
        "needs_review": 5_000,
        "submitted": 5_000,
    }
    assert service.run_once().documents_removed == 0  # nothing left: one index probe


def test_selection_walks_the_retention_index(big_table: Engine) -> None:
    # Steady state: most old final rows have lost their bytes already. The selection must
    # not walk them (the row purge's index would, filtering): it takes the partial index
    # that holds only the rows still due.
    policy = RetentionPolicy(document_age=30 * DAY_SECONDS)
    RetentionService(big_table, database_clock(big_table), policy).run_once()
    generate(big_table, 1_000, prefix="later", status="delivered", final_days_ago=32)
    with big_table.connect() as conn:
        conn.execute(text("ANALYZE fax_outbox"))
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT id FROM fax_outbox WHERE final_at IS NOT NULL "
                    "AND document IS NOT NULL AND final_at <= now() - interval '30 days' "
                    "ORDER BY final_at, id LIMIT 500 FOR UPDATE SKIP LOCKED"
                )
            ).scalars()
        )
    assert "fax_outbox_retention_due_idx" in plan, plan


def test_a_reenqueue_of_a_purged_intent_is_the_same_row_and_never_sent(engine: Engine) -> None:
    document = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    with engine.begin() as conn:
        first = enqueue_fax(
            conn, to="+12125550123", document=document, filename="a.pdf", reference="r-1"
        )
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        conn.execute(
            text("UPDATE fax_outbox SET status = 'cancelled' WHERE id = :id"), {"id": first.id}
        )
    service = RetentionService(engine, database_clock(engine), RetentionPolicy(document_age=0))
    assert service.run_once().documents_removed == 1
    with engine.begin() as conn:
        again = enqueue_fax(
            conn, to="+12125550123", document=document, filename="a.pdf", reference="r-1"
        )
        row = repository.fax_row(conn, first.id)
    assert again.id == first.id and not again.created
    assert row is not None and row["status"] == FaxStatus.CANCELLED
    assert row["document_purged_at"] is not None and row["final_at"] is not None


def test_zero_footprint_drops_bytes_as_soon_as_a_row_is_final(engine: Engine) -> None:
    generate(engine, 3, prefix="live", status="submitted")
    with engine.begin() as conn:
        ids = list(conn.execute(text("SELECT id FROM fax_outbox ORDER BY id")).scalars())
        # The real transition function, as a webhook or a poll applies it.
        for fax_id in ids[:2]:
            mintfax_id = conn.execute(
                text("SELECT mintfax_fax_id FROM fax_outbox WHERE id = :id"), {"id": fax_id}
            ).scalar_one()
            conn.execute(
                text(
                    "SELECT fax_outbox_apply_observation(:f, 'delivered', now(), 1, 1, NULL, "
                    "NULL, now())"
                ),
                {"f": mintfax_id},
            )
    policy = RetentionPolicy.from_days(
        retention_days=30, purge_days=None, zero_footprint=True, delete_at_mintfax=False
    )
    assert policy.document_age == 0 and policy.interval == 5.0
    report = RetentionService(engine, database_clock(engine), policy).run_once()
    assert report.documents_removed == 2
    with engine.connect() as conn:
        held: dict[int, bool] = dict(
            conn.execute(text("SELECT id, document IS NOT NULL FROM fax_outbox")).all()
        )
    assert held == {ids[0]: False, ids[1]: False, ids[2]: True}


def test_rows_and_their_history_go_after_purge_days_and_nothing_else(engine: Engine) -> None:
    generate(
        engine, 30_000, prefix="ancient", status="delivered", final_days_ago=400, with_history=True
    )
    generate(
        engine, 30_000, prefix="recent", status="delivered", final_days_ago=100, with_history=True
    )
    generate(engine, 20_000, prefix="open", status="submitted", with_history=True)
    generate(engine, 20_000, prefix="waiting", status="pending")
    with engine.begin() as conn:  # an alert about no fax, and one event of no row
        conn.execute(
            text(
                "INSERT INTO alerts (kind, dedupe_key, message, created_at) "
                "VALUES ('pause', 'pause:1', 'fleet', now())"
            )
        )
    policy = RetentionPolicy.from_days(
        retention_days=30, purge_days=365, zero_footprint=False, delete_at_mintfax=False
    )
    report = RetentionService(engine, database_clock(engine), policy).run_once()
    assert report.rows_deleted == 30_000
    assert report.documents_removed == 30_000  # the recent ones (rows go before bytes)
    assert counts(engine, "ancient")["rows"] == 0
    with engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM fax_attempts WHERE fax_id NOT IN "
                "        (SELECT id FROM fax_outbox)),"
                "       (SELECT count(*) FROM fax_events WHERE event_id LIKE 'evt-%' "
                "        AND outbox_id IS NULL),"
                "       (SELECT count(*) FROM alerts WHERE fax_id IS NULL)"
            )
        ).one()
    assert tuple(orphans) == (0, 0, 1)  # no history left behind; the fleet alert stays
    recent, still_open = counts(engine, "recent"), counts(engine, "open")
    assert recent == {
        "rows": 30_000,
        "documents": 0,
        "purged": 30_000,
        "attempts": 30_000,
        "events": 30_000,
        "alerts": 30_000,
    }
    assert still_open == {
        "rows": 20_000,
        "documents": 20_000,
        "purged": 0,
        "attempts": 20_000,
        "events": 20_000,
        "alerts": 20_000,
    }
    assert counts(engine, "waiting")["rows"] == 20_000


def test_an_injected_clock_decides_what_is_due(engine: Engine) -> None:
    generate(engine, 10, prefix="done", status="delivered", final_days_ago=0)
    with engine.connect() as conn:
        now = repository.database_now(conn)
    clock = FrozenClock(now + timedelta(days=29))
    service = RetentionService(engine, clock, RetentionPolicy(document_age=30 * DAY_SECONDS))
    assert service.run_once().documents_removed == 0
    clock.advance(2 * DAY_SECONDS)
    assert service.run_once().documents_removed == 10


def _claim_latencies(
    url: str, ids: list[int], stop: threading.Event, out: list[float], errors: list[str]
) -> None:
    """Claim pending rows one at a time, as workers do, and note each claim's duration. A
    claim that would wait for a lock fails at once (lock_timeout): a pass must never block one."""
    from sqlalchemy import create_engine

    eng = create_engine(sqlalchemy_url(url), connect_args={"options": "-c lock_timeout=200"})
    try:
        for fax_id in ids:
            if stop.is_set():
                break
            started = time.perf_counter()
            try:
                with eng.begin() as conn:
                    conn.execute(
                        text("UPDATE fax_outbox SET dispatched_at = now() WHERE id = :id"),
                        {"id": fax_id},
                    )
                    claimed = repository.claim_for_submit(
                        conn, fax_id, owner="test:1", now=None, lease_seconds=60
                    )
            except Exception as exc:  # a lock timeout, or anything else: the test fails
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            out.append(time.perf_counter() - started)
            if claimed is None:
                errors.append(f"fax {fax_id} was not claimable")
    finally:
        eng.dispose()


def test_sends_are_not_blocked_by_a_pass(big_table: Engine, database_url: str) -> None:
    engine = big_table
    with engine.connect() as conn:
        pending = list(
            conn.execute(
                text("SELECT id FROM fax_outbox WHERE status = 'pending' ORDER BY id")
            ).scalars()
        )
    baseline: list[float] = []
    errors: list[str] = []
    _claim_latencies(database_url, pending[:300], threading.Event(), baseline, errors)

    during: list[float] = []
    stop = threading.Event()
    claimer = threading.Thread(
        target=_claim_latencies, args=(database_url, pending[300:], stop, during, errors)
    )
    service = RetentionService(
        engine, database_clock(engine), RetentionPolicy(document_age=30 * DAY_SECONDS)
    )
    claimer.start()
    try:
        report = service.run_once()
    finally:
        stop.set()
        claimer.join()
    assert errors == []
    assert report.documents_removed == 55_000
    assert len(during) >= 50, "the pass ended before the claims could be measured"
    p50 = statistics.median(during) * 1000
    p99 = sorted(during)[int(len(during) * 0.99) - 1] * 1000
    base = statistics.median(baseline) * 1000
    worst = max(during) * 1000
    print(
        f"claim latency: baseline p50 {base:.1f} ms; during a pass p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {worst:.1f} ms over {len(during)} claims"
    )
    # No claim ever waited for a lock (lock_timeout above); the rest is I/O on 2 cores.
    assert max(during) < 1.0


def test_two_passes_at_once_share_the_work(big_table: Engine) -> None:
    engine = big_table
    policy = RetentionPolicy(document_age=30 * DAY_SECONDS)
    reports = []
    failures: list[BaseException] = []

    def run() -> None:
        service = RetentionService(engine, database_clock(engine), policy)
        try:
            reports.append(service.run_once())
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(r.documents_removed for r in reports) == 55_000  # each row once
    assert all(r.documents_removed > 0 for r in reports), reports  # both took part
    assert counts(engine, "old-delivered")["documents"] == 0
    assert counts(engine, "young-failed")["purged"] == 0


_KILLABLE_PASS = """
import sys
from sqlalchemy import create_engine
from outbox.clock import FrozenClock
from outbox.retention import RetentionPolicy, RetentionService
from datetime import datetime, UTC, timedelta
engine = create_engine(sys.argv[1])
clock = FrozenClock(datetime.now(UTC) + timedelta(days=1))
service = RetentionService(engine, clock, RetentionPolicy(document_age=30 * 86400))
service.document_batch = 100
print("ready", flush=True)
service.run_once()
"""


def test_a_pass_killed_midway_leaves_every_row_whole(big_table: Engine, database_url: str) -> None:
    engine = big_table
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_PASS, sqlalchemy_url(database_url)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        purged = 0
        while purged < 2_000:
            assert time.monotonic() < deadline and process.poll() is None
            purged = counts(engine, "old-delivered")["purged"]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    with psycopg.connect(database_url, autocommit=True) as conn:  # its backend goes too
        for _ in range(100):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state <> 'idle'"
            ).fetchone()
            if left and left[0] == 0:
                break
            time.sleep(0.05)
    with engine.connect() as conn:
        torn = conn.execute(
            text(
                "SELECT count(*) FROM fax_outbox "
                "WHERE (document IS NULL) <> (document_purged_at IS NOT NULL)"
            )
        ).scalar_one()
        purged_now = conn.execute(
            text("SELECT count(*) FROM fax_outbox WHERE document IS NULL")
        ).scalar_one()
    assert torn == 0
    assert 0 < purged_now < 55_000 and purged_now % 100 == 0  # whole batches, none torn
    report = RetentionService(
        engine, database_clock(engine), RetentionPolicy(document_age=30 * DAY_SECONDS)
    ).run_once()
    assert report.documents_removed == 55_000 - purged_now  # the next pass finishes the job


def test_a_pass_stops_at_its_time_budget_and_the_next_carries_on(big_table: Engine) -> None:
    ticks = iter(range(1_000_000))
    service = RetentionService(
        big_table,
        database_clock(big_table),
        RetentionPolicy(document_age=30 * DAY_SECONDS),
        monotonic=lambda: float(next(ticks)),  # one "second" per look at the clock
    )
    service.time_budget = 3.0
    first = service.run_once()
    assert not first.complete and 0 < first.documents_removed < 55_000
    rest = 0
    while True:
        report = service.run_once()
        rest += report.documents_removed
        if report.complete:
            break
    assert first.documents_removed + rest == 55_000


# --- the schema keeps a row without its bytes from ever being sent ---------------------------


def _one(engine: Engine, status: str) -> int:
    generate(
        engine,
        1,
        prefix=f"one-{status}",
        status=status,
        final_days_ago=1 if status in ("delivered", "cancelled") else None,
    )
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT id FROM fax_outbox WHERE reference = :r"), {"r": f"one-{status}-1"}
            ).scalar_one()
        )


@pytest.mark.parametrize("status", ["pending", "submitted", "needs_review"])
def test_bytes_of_a_row_not_final_cannot_be_removed(engine: Engine, status: str) -> None:
    fax_id = _one(engine, status)
    with (
        pytest.raises(Exception, match=r"never change|document_purged_only_when_final"),
        engine.begin() as conn,
    ):
        conn.execute(
            text(
                "UPDATE fax_outbox SET document = NULL, document_purged_at = now() WHERE id = :id"
            ),
            {"id": fax_id},
        )


def test_a_purged_row_never_gets_bytes_back_nor_goes_back_to_pending(engine: Engine) -> None:
    fax_id = _one(engine, "cancelled")
    RetentionService(engine, database_clock(engine), RetentionPolicy(document_age=0)).run_once()
    for statement in (
        "UPDATE fax_outbox SET document = 'x', document_purged_at = NULL WHERE id = :id",
        "UPDATE fax_outbox SET status = 'pending' WHERE id = :id",
        "UPDATE fax_outbox SET document_purged_at = NULL WHERE id = :id",
    ):
        with (
            pytest.raises(Exception, match=r"cannot|never change|purged_iff_null"),
            engine.begin() as conn,
        ):
            conn.execute(text(statement), {"id": fax_id})
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE fax_outbox SET dispatched_at = now() WHERE id = :id"), {"id": fax_id}
        )
        assert (
            repository.claim_for_submit(conn, fax_id, owner="t", now=None, lease_seconds=60) is None
        )


def test_a_final_row_with_bytes_still_cannot_take_other_bytes(engine: Engine) -> None:
    fax_id = _one(engine, "delivered")
    with pytest.raises(Exception, match=r"never change|cannot be changed"), engine.begin() as conn:
        conn.execute(
            text("UPDATE fax_outbox SET document = 'other' WHERE id = :id"), {"id": fax_id}
        )


@pytest.mark.parametrize("column", ["final_at", "document_purged_at", "mintfax_deleted_at"])
def test_an_insert_cannot_set_the_retention_columns(engine: Engine, column: str) -> None:
    with pytest.raises(Exception, match=f"{column} is set by the system"), engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO fax_outbox (to_number, document, filename, reference, {column}) "
                "VALUES ('+12125550123', 'x', 'a.txt', 'r', now())"
            )
        )


def test_an_insert_without_a_document_is_still_refused(engine: Engine) -> None:
    with (
        pytest.raises(Exception, match=r"document and reference are required"),
        engine.begin() as conn,
    ):
        conn.execute(
            text(
                "INSERT INTO fax_outbox (to_number, document, filename, reference) "
                "VALUES ('+12125550123', NULL, 'a.txt', 'r')"
            )
        )


def test_the_final_moment_is_set_by_the_transition(engine: Engine) -> None:
    fax_id = _one(engine, "pending")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE fax_outbox SET status = 'cancelled' WHERE id = :id"), {"id": fax_id}
        )
        row = repository.fax_row(conn, fax_id)
        now = repository.database_now(conn)
    assert row is not None and row["final_at"] == now


def test_a_downgrade_past_retention_is_refused_while_bytes_are_gone(engine: Engine) -> None:
    from outbox import schema

    fax_id = _one(engine, "cancelled")
    RetentionService(engine, database_clock(engine), RetentionPolicy(document_age=0)).run_once()
    with pytest.raises(RuntimeError, match="removed by retention"):
        schema.downgrade(engine, "0009_polling")
    with engine.connect() as conn:  # nothing half-done: the downgrade was one transaction
        assert schema.current_revision(engine) == schema.head_revision(engine)
        assert repository.fax_row(conn, fax_id) is not None
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM fax_outbox WHERE id = :id"), {"id": fax_id})
    schema.downgrade(engine, "0009_polling")
    schema.upgrade(engine)


def test_a_batch_stops_at_its_byte_budget(engine: Engine) -> None:
    # Big documents make long transactions (their TOAST chunks go with them): a batch takes
    # rows up to `document_batch_bytes`, the first one always, and the pass goes on.
    generate(engine, 50, prefix="big", status="delivered", final_days_ago=2)
    ticks = iter(range(1_000_000))
    service = RetentionService(
        engine,
        database_clock(engine),
        RetentionPolicy(document_age=DAY_SECONDS),
        monotonic=lambda: float(next(ticks)),  # one "second" per look at the clock
    )
    service.document_batch_bytes = 1  # every document is over it: one row per batch
    service.time_budget = 3.0
    first = service.run_once()
    assert first.documents_removed == 3 and not first.complete  # three batches of one row
    service.document_batch_bytes = 200  # about ten of these small documents per batch
    service.time_budget = 1_000.0
    rest = service.run_once()
    assert rest.complete and first.documents_removed + rest.documents_removed == 50
