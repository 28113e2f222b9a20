"""The batch ingest (migration 0016's `fax_events_ingest_batch`) against the per-event one (0015's
`fax_events_ingest`), on real Postgres.

The receiver's group commit hands a batch of webhook events to one function call. Every event
must get exactly the outcome, and leave exactly the rows, that calling the per-event function
for each event one at a time, in the batch's order, would: the batch function repeats the
state-transition rule by set, so this file applies the same events both ways and compares.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from outbox import repository
from outbox.db import make_engine
from outbox.events import FaxEvent, FaxObservation
from outbox.reconcile import _observation
from outbox.settings import libpq_url
from tests.integration.test_reconcile import submitted
from tests.integration.test_submit import Harness, accepted, harness  # noqa: F401
from workers.single_host.embedded import ServiceURLs

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# Every fixture row's wall-clock columns: fixed, so both databases hold the same values.
ROWS_AT = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
PDF = b"%PDF-1.4\n%%EOF\n"

Item = tuple[FaxEvent, FaxObservation | None]

_STATUS_OF = {
    "fax.queued": "queued",
    "fax.submitted": "submitted",
    "fax.sending": "in_progress",
    "fax.retry_scheduled": "in_progress",
    "fax.delivered": "delivered",
    "fax.failed": "failed",
}
FAX_KINDS = tuple(_STATUS_OF)
_SAME_RANK = {"fax.sending": "fax.retry_scheduled", "fax.retry_scheduled": "fax.sending"}


# --- events and rows ---------------------------------------------------------------------------


def make_event(kind: str, at: datetime, data: dict[str, Any]) -> FaxEvent:
    """A verified webhook event as the receiver parses it (generation A envelope)."""
    event_id = f"evt_{uuid.uuid4().hex}"
    envelope = {"event_id": event_id, "event": kind, "timestamp": at.isoformat(), "data": data}
    return FaxEvent(event_id, kind, at, data, envelope)


def fax_event(kind: str, fax_id: str, at: datetime, **data: Any) -> FaxEvent:
    return make_event(kind, at, {"id": fax_id, "status": _STATUS_OF.get(kind), **data})


def items(events: Sequence[FaxEvent]) -> list[Item]:
    """Events with what they say about their fax, as the Reconciler passes them."""
    return [(e, _observation(e)) for e in events]


def row_spec(reference: str, status: str, fax_id: str | None, **columns: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "reference": reference,
        "status": status,
        "fax_id": fax_id,
        "status_reason": None,
        "mintfax_status": "queued",
        "pages": None,
        "error_code": None,
        "error_message": None,
        "mintfax_attempt": None,
        "next_poll_at": None,
        "last_event_at": None,
        "completed_at": None,
        "review_count": 0,
        "outcome_unknown": False,
    }
    spec.update(columns)
    return spec


_INSERT_ROW = text(
    """
    INSERT INTO fax_outbox (
        to_number, document, filename, reference, status, status_reason, attempts,
        mintfax_fax_id, mintfax_status, pages, error_code, error_message, mintfax_attempt,
        next_poll_at, last_event_at, completed_at, first_attempt_at, submitted_at,
        next_attempt_at, created_at, updated_at, review_count, outcome_unknown)
    VALUES (
        '+15005550001', :document, 'a.pdf', :reference, CAST(:status AS fax_status),
        :status_reason, 1, :fax_id, :mintfax_status, :pages, :error_code, :error_message,
        :mintfax_attempt, :next_poll_at, :last_event_at, :completed_at, :rows_at, :rows_at,
        :rows_at, :rows_at, :rows_at, :review_count, :outcome_unknown)
    """
)


def insert_rows(engine: Engine, specs: Sequence[dict[str, Any]]) -> None:
    """Rows in any state, straight in SQL (a fixture's privilege: the system columns)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        for spec in specs:
            conn.execute(_INSERT_ROW, {**spec, "document": PDF, "rows_at": ROWS_AT})


def autocommit(engine: Engine) -> Connection:
    # As the Reconciler runs them: each statement its own transaction.
    return engine.execution_options(isolation_level="AUTOCOMMIT").connect()


def one_at_a_time(engine: Engine, events: Sequence[FaxEvent]) -> list[str]:
    with autocommit(engine) as conn:
        return [repository.ingest_event(conn, e, o) for e, o in items(events)]


def in_batches(engine: Engine, events: Sequence[FaxEvent], sizes: Sequence[int]) -> list[str]:
    outcomes: list[str] = []
    with autocommit(engine) as conn:
        start = 0
        for size in sizes:
            outcomes += repository.ingest_events(conn, items(events[start : start + size]))
            start += size
    assert start == len(events)
    return outcomes


# --- what is compared --------------------------------------------------------------------------

# Every column, by the row's reference, except those that hold the wall clock of the write
# (updated_at, final_at: compared as whether the row was ever updated, whether it is final)
# and the id (the fixture rows get the same ids in both databases, yet no reason to rely on it).
_OUTBOX_STATE = text(
    """
    SELECT f.reference,
           to_jsonb(f) - 'id' - 'updated_at' - 'final_at'
           || jsonb_build_object('final', f.final_at IS NOT NULL,
                                 'touched', f.updated_at <> f.created_at) AS state
    FROM fax_outbox AS f
    """
)

# Every event by its id, with the row it points at by reference. `place` is the event's rank
# among its fax's events by `id`: the pending-events trigger replays a fax's events in
# (occurred_at, id) order, and balance episodes are found by (occurred_at, id) too.
_EVENTS_STATE = text(
    """
    SELECT e.event_id,
           jsonb_build_object(
               'event_type', e.event_type, 'mintfax_fax_id', e.mintfax_fax_id,
               'occurred_at', e.occurred_at, 'observation', e.observation,
               'payload', e.payload, 'outcome', e.outcome,
               'applied', e.applied_at IS NOT NULL, 'outbox', o.reference,
               'place', row_number() OVER (PARTITION BY e.mintfax_fax_id ORDER BY e.id)) AS state
    FROM fax_events AS e LEFT JOIN fax_outbox AS o ON o.id = e.outbox_id
    """
)


def state(engine: Engine, query: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return {str(key): value for key, value in conn.execute(query).all()}


def differences(one: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The first few keys whose values differ (a readable failure, not two 300-row dumps)."""
    keys = sorted(one.keys() | other.keys())
    return [(k, one.get(k), other.get(k)) for k in keys if one.get(k) != other.get(k)][:5]


# --- a second database ---------------------------------------------------------------------------


@pytest.fixture
def twin_engine(service_urls: ServiceURLs, template_database: str) -> Iterator[Engine]:
    """A second migrated database, cloned from the template `engine`'s database came from."""
    name = f"faxout_t_{uuid.uuid4().hex[:12]}"
    admin_url = libpq_url(service_urls.database_url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = libpq_url(make_url(admin_url).set(database=name).render_as_string(False))
    eng = make_engine(url)
    yield eng
    eng.dispose()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- 1. the randomized equivalence ---------------------------------------------------------------


def random_fleet(rng: random.Random) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows mintfax owns (submitted, needs_review), final rows, and fax ids no row holds."""

    def maybe(value: Any, p: float = 0.5) -> Any:
        return value if rng.random() < p else None

    def news() -> dict[str, Any]:
        # What earlier news may already have left on a row.
        code = maybe("busy", 0.3)
        return {
            "mintfax_status": rng.choice([None, "queued", "submitted", "in_progress"]),
            "last_event_at": maybe(moment(rng)),
            "pages": maybe(rng.randint(1, 9)),
            "mintfax_attempt": maybe(rng.randint(1, 3)),
            "error_code": code,
            "error_message": code and maybe("Line busy"),
            "next_poll_at": maybe(T0 + timedelta(hours=1)),
        }

    specs = [row_spec(f"ref-s{n}", "submitted", f"fax-s{n}", **news()) for n in range(24)]
    specs += [
        row_spec(
            f"ref-r{n}",
            "needs_review",
            f"fax-r{n}",
            status_reason="outcome_unknown",
            review_count=1,
            outcome_unknown=True,
            **news(),
        )
        for n in range(12)
    ]
    specs += [
        row_spec(
            f"ref-d{n}",
            "delivered",
            f"fax-d{n}",
            mintfax_status="delivered",
            pages=2,
            last_event_at=T0,
            completed_at=T0,
        )
        for n in range(6)
    ]
    specs += [
        row_spec(
            f"ref-f{n}",
            "failed",
            f"fax-f{n}",
            status_reason="busy",
            mintfax_status="failed",
            error_code="busy",
            last_event_at=T0,
            completed_at=T0,
        )
        for n in range(4)
    ]
    # Rows that hold a fax id but are not mintfax's to move (an operator cancelled them).
    specs += [
        row_spec(f"ref-c{n}", "cancelled", f"fax-c{n}", status_reason="operator", **news())
        for n in range(2)
    ]
    rowless = [f"fax-x{n}" for n in range(14)]
    return specs, rowless


def moment(rng: random.Random) -> datetime:
    # Whole seconds over two minutes: ties at one rank happen (the later copy must be stale),
    # and events arrive in no particular order of their times (older news after newer).
    at = T0 + timedelta(seconds=rng.randrange(120))
    return at + timedelta(microseconds=rng.randrange(1_000_000)) if rng.random() < 0.2 else at


def random_fax_event(rng: random.Random, fax_id: str) -> FaxEvent:
    # Progress news mostly, a final one now and then (as mintfax sends them): a row that
    # went final early would leave every later event merely stale.
    kind = rng.choices(FAX_KINDS, weights=[2, 2, 3, 3, 1, 1])[0]
    data: dict[str, Any] = {}
    if rng.random() < 0.4:
        data["pages"] = rng.randint(1, 12)
    if rng.random() < 0.5:
        data["attempts"] = [{"n": k} for k in range(rng.randint(1, 4))]
    if kind in ("fax.failed", "fax.retry_scheduled") or rng.random() < 0.1:
        if rng.random() < 0.7:
            data["error_code"] = rng.choice(["busy", "no_answer", "fax_tone_missing"])
        if rng.random() < 0.5:
            data["error_message"] = rng.choice(["Line busy", "No answer"])
    if kind in ("fax.delivered", "fax.failed") and rng.random() < 0.5:
        data["completed_at"] = moment(rng).isoformat().replace("+00:00", "Z")
    # Now and then a status mintfax never documented: rank -1, 'ignored'.
    status = "teleported" if rng.random() < 0.06 else _STATUS_OF[kind]
    return make_event(kind, moment(rng), {"id": fax_id, "status": status, **data})


def random_stream(rng: random.Random, fax_ids: Sequence[str], count: int) -> list[FaxEvent]:
    stream: list[FaxEvent] = []
    while len(stream) < count:
        roll = rng.random()
        if stream and roll < 0.12:
            # An exact copy (same id, same body): of a recent event, most likely in the same
            # batch, or of any earlier one, most likely in an earlier batch.
            stream.append(rng.choice(stream[-4:] if rng.random() < 0.5 else stream))
        elif stream and roll < 0.20:
            # Another event with the same moment and rank as an earlier one about its fax
            # (sending and retry_scheduled both say in_progress): a tie, the later one stale.
            # A recent one mostly, so the tie is with what the row holds now.
            earlier = rng.choice(stream[-30:] if rng.random() < 0.7 else stream)
            fax_id = earlier.data.get("id")
            if _observation(earlier) is not None and isinstance(fax_id, str):
                kind = _SAME_RANK.get(earlier.event_type, earlier.event_type)
                pages = {"pages": rng.randint(1, 12)} if rng.random() < 0.5 else {}
                stream.append(fax_event(kind, fax_id, earlier.occurred_at, **pages))
        elif roll < 0.25:
            kind = rng.choice(["balance.topup", "balance.low"])
            stream.append(make_event(kind, moment(rng), {"available": 5000, "held": 0}))
        elif roll < 0.29:  # an event type this code does not know, about a known fax
            data = {"id": rng.choice(fax_ids), "status": "delivered"}
            stream.append(make_event("fax.mystery", moment(rng), data))
        elif roll < 0.31:  # a fax event that names no fax: no observation
            stream.append(make_event("fax.delivered", moment(rng), {"status": "delivered"}))
        else:
            fax_id = rng.choice(fax_ids)
            # Often news of one fax comes in a burst: the same fax named again in a batch.
            for _ in range(rng.choice([1, 1, 1, 1, 1, 2, 3])):
                stream.append(random_fax_event(rng, fax_id))
    return stream[:count]


def batch_sizes(rng: random.Random, total: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        # Small batches as often as large ones: in a large one most faxes are named twice,
        # and go one by one; the by-set path is what needs the comparison most.
        size = rng.randint(1, 8) if rng.random() < 0.5 else rng.randint(1, 40)
        sizes.append(min(size, total - sum(sizes)))
    return sizes


_STORE_FAX_ID = text("UPDATE fax_outbox SET mintfax_fax_id = :fax_id WHERE reference = :reference")


def store_fax_ids(engine: Engine, fax_ids: Sequence[str]) -> None:
    """Rows that learn their fax id only now: their pending events are replayed by trigger."""
    insert_rows(engine, [row_spec(f"ref-{f}", "needs_review", None) for f in fax_ids])
    for fax_id in fax_ids:
        with engine.begin() as conn:
            conn.execute(_STORE_FAX_ID, {"fax_id": fax_id, "reference": f"ref-{fax_id}"})


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_stream_in_batches_ends_exactly_as_one_event_at_a_time(
    engine: Engine, twin_engine: Engine, seed: int
) -> None:
    """Whatever mix of batches the receiver makes of a stream (reordered news, duplicates
    within and across batches, a fax named several times in a batch, unknown statuses and
    types, faxes no row holds yet), each event gets the outcome and leaves the rows that the
    per-event function, called once per event in order, gives."""
    rng = random.Random(seed)
    specs, rowless = random_fleet(rng)
    fax_ids = [s["fax_id"] for s in specs] + rowless
    stream = random_stream(rng, fax_ids, 400)
    sizes = batch_sizes(rng, len(stream))
    insert_rows(engine, specs)
    insert_rows(twin_engine, specs)

    alone = one_at_a_time(engine, stream)
    batched = in_batches(twin_engine, stream, sizes)
    starts = list(itertools.accumulate(sizes, initial=0))

    mismatch = next(
        (n for n, (a, b) in enumerate(zip(alone, batched, strict=True)) if a != b), None
    )
    if mismatch is not None:
        culprit = stream[mismatch]
        story = [
            (n, e.event_id[-6:], e.event_type, e.data.get("status"), e.occurred_at, alone[n])
            for n, e in enumerate(stream[: mismatch + 1])
            if e.data.get("id") == culprit.data.get("id") or e.event_id == culprit.event_id
        ]
        pytest.fail(
            f"event {mismatch}: one at a time {alone[mismatch]!r}, batched {batched[mismatch]!r}; "
            f"batch starts {[s for s in starts if s <= mismatch][-1]}; "
            f"its fax's events so far (n, id, type, status, at, outcome alone): {story}"
        )
    # The stream exercised what it is meant to (a generator change cannot quietly weaken it).
    assert set(alone) == {"applied", "stale", "pending", "ignored", "duplicate"}
    by_set = by_one = 0
    for start, size in zip(starts[:-1], sizes, strict=True):
        named = Counter(e.data.get("id") for e in stream[start : start + size] if _observation(e))
        by_one += sum(count for count in named.values() if count > 1)
        by_set += sum(count for count in named.values() if count == 1)
    assert by_set >= 100 and by_one >= 50, (by_set, by_one)

    outbox = state(engine, _OUTBOX_STATE), state(twin_engine, _OUTBOX_STATE)
    assert not differences(*outbox), differences(*outbox)
    events = state(engine, _EVENTS_STATE), state(twin_engine, _EVENTS_STATE)
    assert not differences(*events), differences(*events)
    # Events about a fax no row holds wait (or are ignored for an unknown status).
    waiting = {v["outcome"] for v in events[1].values() if v["mintfax_fax_id"] in rowless}
    assert "pending" in waiting and waiting <= {"pending", "ignored"}

    # What was left pending is the same too: replayed when the fax ids are stored, the two
    # databases end alike (the replay's order is the events' (occurred_at, id) order).
    store_fax_ids(engine, rowless)
    store_fax_ids(twin_engine, rowless)
    outbox = state(engine, _OUTBOX_STATE), state(twin_engine, _OUTBOX_STATE)
    assert not differences(*outbox), differences(*outbox)
    events = state(engine, _EVENTS_STATE), state(twin_engine, _EVENTS_STATE)
    assert not differences(*events), differences(*events)
    assert "pending" not in {v["outcome"] for v in events[1].values()}


# --- 2. focused cases ----------------------------------------------------------------------------


def test_a_pending_event_from_a_batch_is_applied_when_its_fax_id_is_stored(
    harness: Harness,  # noqa: F811
    engine: Engine,
) -> None:
    """A webhook that beats the worker is not lost, whichever way the batch function wrote it
    (a fax named once in the batch goes by set, one named twice goes one by one): it waits as
    `pending` and is applied the moment the submit path stores the fax id."""
    alone = fax_event("fax.delivered", "fax-early-1", T0, pages=2)
    first = fax_event("fax.sending", "fax-early-2", T0)
    last = fax_event("fax.failed", "fax-early-2", T0 + timedelta(seconds=5), error_code="busy")
    with autocommit(engine) as conn:
        assert repository.ingest_events(conn, items([alone, first, last])) == ["pending"] * 3

    rows = [submitted(harness, "fax-early-1", "early-1"), submitted(harness, "fax-early-2", "e2")]

    states = [harness.row(r) for r in rows]
    assert (states[0]["status"], states[0]["pages"]) == ("delivered", 2)
    assert (states[1]["status"], states[1]["status_reason"]) == ("failed", "busy")
    with engine.connect() as conn:
        recorded = conn.execute(
            text("SELECT event_id, outcome, outbox_id, applied_at IS NOT NULL FROM fax_events")
        ).all()
    assert sorted(tuple(r) for r in recorded) == sorted(
        [
            (alone.event_id, "applied", rows[0], True),
            (first.event_id, "applied", rows[1], True),
            (last.event_id, "applied", rows[1], True),
        ]
    )


_TWIN_STATE = text(
    """
    SELECT f.mintfax_fax_id, jsonb_build_object(
        'row', to_jsonb(f) - 'id' - 'reference' - 'idempotency_key' - 'mintfax_fax_id'
               - 'updated_at' - 'final_at',
        'final', f.final_at IS NOT NULL,
        'events', (SELECT jsonb_agg(jsonb_build_object('outcome', e.outcome,
                                                       'applied', e.applied_at IS NOT NULL,
                                                       'outbox', e.outbox_id = f.id)
                                    ORDER BY e.id)
                   FROM fax_events AS e WHERE e.mintfax_fax_id = f.mintfax_fax_id))
    FROM fax_outbox AS f
    """
)


@pytest.mark.parametrize(
    ("kind", "seconds", "expected"),
    [
        ("fax.delivered", 5, "applied"),
        ("fax.sending", -5, "stale"),
        ("fax.retry_scheduled", 0, "stale"),  # same rank, same moment: not newer
    ],
    ids=["then-newer-news", "then-older-news", "then-same-moment"],
)
def test_an_event_twice_in_a_batch_then_another_gets_what_one_at_a_time_gives(
    engine: Engine, kind: str, seconds: int, expected: str
) -> None:
    """mintfax retries a delivery it saw no answer to, so one event id can come twice in one
    batch, next to more news of its fax: the copy is `duplicate` and changes nothing, and the
    news after it is judged against what the first copy left, as one event at a time."""
    insert_rows(engine, [row_spec(f"ref-{f}", "submitted", f) for f in ("fax-b", "fax-a")])

    def story(fax_id: str) -> list[FaxEvent]:
        once = fax_event("fax.sending", fax_id, T0, pages=1, error_code="busy")
        return [once, once, fax_event(kind, fax_id, T0 + timedelta(seconds=seconds), pages=2)]

    with autocommit(engine) as conn:
        batched = repository.ingest_events(conn, items(story("fax-b")))
    alone = one_at_a_time(engine, story("fax-a"))

    assert batched == alone == ["applied", "duplicate", expected]
    twins = state(engine, _TWIN_STATE)
    assert twins["fax-b"] == twins["fax-a"]


# Everything a write would change, the row versions (xmin) included: a no-op UPDATE changes
# no column the function sets, but it does write a new version (and fire the triggers).
_EVERYTHING = text(
    """
    SELECT 'outbox ' || f.id, jsonb_build_object('xmin', f.xmin::text, 'row', to_jsonb(f))
    FROM fax_outbox AS f
    UNION ALL
    SELECT 'event ' || e.id, jsonb_build_object('xmin', e.xmin::text, 'row', to_jsonb(e))
    FROM fax_events AS e
    """
)


def test_a_batch_of_only_duplicates_changes_nothing(engine: Engine) -> None:
    """mintfax redelivers events it saw no answer to, sometimes a whole batch again: a batch
    of events already recorded answers `duplicate` for each and writes nothing, neither the
    faxes nor the events (nor a row version)."""
    insert_rows(engine, [row_spec(f"ref-{f}", "submitted", f) for f in ("fax-1", "fax-2")])
    first = [
        fax_event("fax.sending", "fax-1", T0),
        fax_event("fax.delivered", "fax-2", T0, pages=3),
        fax_event("fax.sending", "fax-3", T0),  # no row: pending
        fax_event("fax.failed", "fax-1", T0 + timedelta(seconds=5), error_code="busy"),
        make_event("balance.topup", T0, {"available": 5000, "held": 0}),
        make_event("fax.mystery", T0, {"id": "fax-2", "status": "delivered"}),
    ]
    with autocommit(engine) as conn:
        repository.ingest_events(conn, items(first))
    before = state(engine, _EVERYTHING)

    # Each event again, twice in the batch: the by-set path and the one-by-one path both.
    replay = first + first[::-1]
    with autocommit(engine) as conn:
        assert repository.ingest_events(conn, items(replay)) == ["duplicate"] * len(replay)
        assert repository.ingest_events(conn, items(first[1:2])) == ["duplicate"]

    after = state(engine, _EVERYTHING)
    assert not differences(before, after), differences(before, after)


# --- 3. the plan does not grow with fax_events ---------------------------------------------------

_GROW_EVENTS = text(
    """
    INSERT INTO fax_events (event_id, event_type, mintfax_fax_id, occurred_at, observation,
                            payload, outcome, applied_at)
    SELECT 'evt_bulk_' || g, 'fax.sending', 'fax-bulk-' || g % 5000,
           :t0 - g * interval '1 second',
           jsonb_build_object('status', 'in_progress', 'observed_at', :t0 - g * interval '1 s'),
           jsonb_build_object('event_id', 'evt_bulk_' || g, 'event', 'fax.sending',
                              'data', jsonb_build_object('id', 'fax-bulk-' || g % 5000,
                                                         'status', 'in_progress',
                                                         'note', repeat('x', 200))),
           CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'stale' END,
           CASE WHEN g % 10 = 0 THEN NULL ELSE now() END
    FROM generate_series(1, :count) AS g
    """
)

_SEQ_SCANS = text("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'fax_events'")


def test_a_batch_costs_no_more_when_fax_events_has_grown(engine: Engine) -> None:
    """The receiver's cost per batch must not grow with the event history (tens of thousands
    of events a day, kept for weeks). plpgsql plans a statement generically after five calls
    and keeps that plan for the session: a plan made when fax_events was tiny (a sequential
    scan is cheapest then) would be kept as the table grows, until an ANALYZE."""
    fax_ids = [f"fax-p{n}" for n in range(6)]
    insert_rows(engine, [row_spec(f"ref-{f}", "submitted", f) for f in fax_ids])
    tick = itertools.count(1)

    def batch() -> list[Item]:
        # Five faxes by set (each event newer: applied), one no row holds (pending), and one
        # fax named twice (one by one, through the per-event function).
        at = T0 + timedelta(seconds=next(tick))
        events = [fax_event("fax.sending", f, at) for f in fax_ids[:5]]
        events.append(fax_event("fax.sending", f"fax-none-{uuid.uuid4().hex[:8]}", at))
        events += [
            fax_event("fax.sending", fax_ids[5], at + timedelta(milliseconds=k)) for k in (1, 2)
        ]
        return items(events)

    # One connection throughout: the cached plans are the session's.
    with autocommit(engine) as conn:
        # Autovacuum's ANALYZE of the grown table would replan, and hide the very fault this
        # looks for. The ALTER itself invalidates plans, so it comes before the first call.
        conn.execute(text("ALTER TABLE fax_events SET (autovacuum_enabled = false)"))

        def timed() -> float:
            work = batch()
            start = time.perf_counter()
            outcomes = repository.ingest_events(conn, work)
            elapsed = time.perf_counter() - start
            assert outcomes == ["applied"] * 5 + ["pending", "applied", "applied"]
            return elapsed

        for _ in range(10):  # more than five calls: the generic plans are now the cached ones
            timed()
        before = statistics.median(timed() for _ in range(30))
        conn.execute(_GROW_EVENTS, {"t0": T0, "count": 50_000})  # no ANALYZE, on purpose
        after = statistics.median(timed() for _ in range(30))
        # And the cause, counted where EXPLAIN cannot reach: one batch's scans of fax_events.
        conn.exec_driver_sql("BEGIN")
        repository.ingest_events(conn, batch())
        scans = conn.execute(_SEQ_SCANS).scalar_one()
        conn.exec_driver_sql("COMMIT")

    assert after <= 3 * before, f"median per batch {before * 1e3:.2f} ms -> {after * 1e3:.2f} ms"
    assert scans == 0, f"{scans} sequential scans of fax_events in one batch of 8"
