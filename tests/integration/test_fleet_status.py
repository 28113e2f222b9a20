"""`outbox.fleet_status.take_snapshot` on real Postgres and Redis: every figure matches what
the tables hold, the Redis half fails apart from the Postgres half, numbers are masked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import Engine, text

from outbox import repository
from outbox.fleet_status import (
    LATENCY_BUCKETS,
    RedisFigures,
    WebhookCounters,
    mask_numbers_in,
    redis_figures,
    take_snapshot,
)
from outbox.throttle import FleetThrottle
from tests.fleet_data import SECRET_NUMBER, cumulative, seed
from workers.single_host.embedded import free_port

NOW = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


def _figures(client: redis.Redis) -> RedisFigures:
    return redis_figures(client, limit_per_minute=60, queues=["faxout", "faxout.maintenance"])


def test_every_figure_matches_the_tables(engine: Engine, redis_url: str) -> None:
    seeded = seed(engine, NOW)
    client = redis.Redis.from_url(redis_url)
    FleetThrottle(client, 60).cooldown(30)
    client.rpush("faxout", "m1", "m2")
    counters = WebhookCounters(client)
    for what in ("duplicate", "duplicate", "refused_401", "refused_401", "refused_413"):
        counters.count(what)

    snap = take_snapshot(
        engine, redis=lambda: _figures(client), now=NOW, alerts=5, rows=10, series_minutes=60
    )

    assert snap.counts == seeded.counts
    assert snap.total == sum(seeded.counts.values()) and snap.in_flight == 1
    assert snap.oldest_pending is not None
    assert snap.oldest_pending["id"] == seeded.oldest_pending_id
    assert snap.oldest_pending["age_seconds"] == pytest.approx(seeded.oldest_pending_age)
    assert [p.reason for p in snap.pauses] == ["operator"]
    assert snap.balance is not None and (snap.balance.available, snap.balance.held) == (4321, 250)
    assert snap.attempts.submitted == seeded.submitted_attempts
    assert snap.attempts.retries == seeded.retries
    assert snap.attempts.rate_limited == seeded.http_429
    assert snap.attempts.insufficient_balance == seeded.http_402
    assert snap.events == seeded.events
    # Latencies of the last hour from the rows' own timestamps (the row of two hours ago left
    # out), a completion "before" submission counting as 0.
    assert snap.insert_to_submit.count == len(seeded.to_submit)
    assert [n for _, n in snap.insert_to_submit.buckets] == cumulative(
        seeded.to_submit, LATENCY_BUCKETS
    )
    assert snap.insert_to_submit.total_seconds == pytest.approx(sum(seeded.to_submit))
    assert snap.submit_to_final.count == len(seeded.to_final)
    assert [n for _, n in snap.submit_to_final.buckets] == cumulative(
        seeded.to_final, LATENCY_BUCKETS
    )
    assert snap.submit_to_final.total_seconds == pytest.approx(sum(seeded.to_final))
    assert [a["kind"] for a in snap.alerts] == ["fax_failed", "fleet_paused"]
    looked = {(r["status"], r["id"]) for r in snap.rows_to_look_at}
    assert looked == {
        (status, i) for status in ("needs_review", "failed", "rejected") for i in seeded.ids[status]
    }
    rejected = next(r for r in snap.rows_to_look_at if r["status"] == "rejected")
    assert rejected["last_error"]["request_id"].startswith("req_")
    # The last hour, per minute: every row created, submitted or finished in it, counted once.
    assert len(snap.series["enqueued"]) == 60
    assert sum(snap.series["enqueued"]) == sum(seeded.counts.values()) - 3  # 3 older than 1 h
    assert sum(snap.series["delivered"]) == 4 and sum(snap.series["failed"]) == 1
    assert sum(snap.series["rejected"]) == 2 and sum(snap.series["cancelled"]) == 0

    assert snap.heartbeats is not None
    assert {(b["role"], b["stopped_at"] is None) for b in snap.heartbeats} == {
        ("relay", True),
        ("worker", False),
    }
    relay = next(b for b in snap.heartbeats if b["role"] == "relay")
    assert relay["age_seconds"] == pytest.approx(3.0)
    assert snap.redis is not None and snap.redis_note is None
    assert snap.redis.throttle["cooldown_remaining"] == pytest.approx(30, abs=2)
    assert snap.redis.queues == {"faxout": 2, "faxout.maintenance": 0}
    assert snap.redis.webhook_duplicates == 2
    assert snap.redis.webhook_refused == {"401": 2, "413": 1}
    assert snap.redis.pause_mirror is False  # nobody published the seeded pause

    shown = json.dumps(snap.to_json())
    assert SECRET_NUMBER not in shown
    assert SECRET_NUMBER[:5] in shown  # masked, not dropped: +1212*****91
    client.close()


def test_redis_down_leaves_the_postgres_half_whole(engine: Engine) -> None:
    seeded = seed(engine, NOW)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    snap = take_snapshot(engine, redis=lambda: _figures(dead), now=NOW)
    assert snap.redis is None
    assert snap.redis_note is not None and snap.redis_note.startswith("unavailable (")
    assert snap.counts == seeded.counts
    assert snap.attempts.submitted == seeded.submitted_attempts


def test_without_a_redis_reader_the_note_says_why(engine: Engine) -> None:
    snap = take_snapshot(engine, redis=None, redis_note="needs the [worker] extra")
    assert snap.redis is None and snap.redis_note == "needs the [worker] extra"
    assert snap.total == 0 and snap.oldest_pending is None
    assert snap.insert_to_submit.count == 0


def test_an_empty_outbox_on_the_database_clock(engine: Engine, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    snap = take_snapshot(engine, redis=lambda: _figures(client), series_minutes=5)
    with engine.connect() as conn:
        db_now = conn.execute(text("SELECT now()")).scalar_one()
    assert abs((db_now - snap.taken_at).total_seconds()) < 5
    assert snap.series_start is not None
    assert snap.series_start <= snap.taken_at < snap.series_start + timedelta(minutes=5)
    assert all(sum(v) == 0 for v in snap.series.values())
    assert snap.redis is not None and snap.redis.webhook_duplicates == 0
    client.close()


def test_numbers_in_free_text_are_masked() -> None:
    assert mask_numbers_in("busy at +12125557391 now") == "busy at +1212*****91 now"
    assert mask_numbers_in("call +44 20 7123 4567.") == "call +44207*****67."
    assert mask_numbers_in("fax 12 failed (503)") == "fax 12 failed (503)"
    assert mask_numbers_in(None) is None


def test_counters_do_not_go_down_when_retention_deletes_rows(engine: Engine) -> None:
    seed(engine, NOW)
    before = take_snapshot(engine, redis=None, now=NOW)
    later = NOW + timedelta(days=30)
    with engine.begin() as conn:
        purged = repository.purge_rows(conn, now=later, age=86_400, limit=1000, after_mintfax=False)
    after = take_snapshot(engine, redis=None, now=NOW)
    # Every final row went, with its attempts and events; the gauges show it, the counters not.
    assert len(purged) == sum(before.counts[s] for s in before.finals) > 0
    assert all(after.counts[s] == 0 for s in after.finals)
    assert after.finals == before.finals
    assert after.attempts == before.attempts
    assert after.events == before.events
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM fax_attempts")).scalar_one()
    assert left == 0  # the seeded attempts all belonged to delivered rows
