"""enqueue_fax / enqueue_faxes on real Postgres: idempotent, transactional, validated first."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from outbox import (
    ConfigurationError,
    EnqueueResult,
    FaxIntent,
    IdempotencyConflict,
    ValidationFailed,
    derive_idempotency_key,
    document_sha256,
    enqueue_fax,
    enqueue_faxes,
)
from outbox.db import make_engine
from outbox.models import fax_outbox
from tests import fixtures_files as files

TO = "+12127365000"
DOC = files.pdf("integration")


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(fax_outbox)).scalar_one())


def _enqueue(conn: Connection | Session, **changes: Any) -> EnqueueResult:
    kwargs: dict[str, Any] = {
        "to": TO,
        "document": DOC,
        "filename": "letter.pdf",
        "reference": "order-1",
        "environment": "sandbox",
    }
    kwargs.update(changes)
    return enqueue_fax(conn, **kwargs)


def test_enqueue_returns_id_key_and_created_and_stores_the_intent(engine: Engine) -> None:
    with engine.begin() as conn:
        result = _enqueue(conn, retries=5, metadata={"patient": "p-1", "n": 2})
    assert result.created is True
    assert result.id > 0
    assert result.idempotency_key == derive_idempotency_key(TO, document_sha256(DOC), "order-1")
    with engine.connect() as conn:
        row = conn.execute(select(fax_outbox).where(fax_outbox.c.id == result.id)).mappings().one()
    assert row["to_number"] == TO
    assert bytes(row["document"]) == DOC
    assert row["document_sha256"] == document_sha256(DOC)
    assert (row["filename"], row["reference"], row["retries"]) == ("letter.pdf", "order-1", 5)
    assert row["metadata"] == {"patient": "p-1", "n": 2}
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["next_attempt_at"] is not None
    assert row["idempotency_key"] == result.idempotency_key


def test_enqueue_never_commits(engine: Engine) -> None:
    with engine.connect() as conn:
        result = _enqueue(conn)
        assert result.created
        assert _count(engine) == 0  # invisible to others until the caller commits
        conn.rollback()
    assert _count(engine) == 0


def test_same_intent_twice_returns_the_same_row(engine: Engine) -> None:
    with engine.begin() as conn:
        first = _enqueue(conn)
        again_same_tx = _enqueue(conn)
    with engine.begin() as conn:
        again_later = _enqueue(conn)
    assert first.created is True
    assert again_same_tx == EnqueueResult(first.id, first.idempotency_key, created=False)
    assert again_later == EnqueueResult(first.id, first.idempotency_key, created=False)
    assert _count(engine) == 1


@pytest.mark.parametrize(
    ("written", "canonical"),
    [("+4402071234567", "+442071234567"), ("+1 212 736 5000", TO), (f" {TO}", TO)],
)
def test_a_number_not_in_canonical_form_is_refused_not_rewritten(
    engine: Engine, written: str, canonical: str
) -> None:
    # Issue 8, item 5: the helper used to store (and key) the canonical form while a plain-SQL
    # insert of the same intent keyed the string as written: two rows, two faxes.
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        _enqueue(conn, to=written)
    [error] = caught.value.errors
    assert error.field == "to"
    assert error.reason.endswith(f"is not in canonical E.164 form; did you mean {canonical}?")
    assert _count(engine) == 0


def test_the_uk_trunk_prefix_message_is_the_documented_one(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        _enqueue(conn, to="+4402071234567")
    assert str(caught.value.errors[0]) == (
        "to: +4402071234567 is not in canonical E.164 form; did you mean +442071234567?"
    )


@pytest.mark.parametrize("key", ["my key", "my-key\n", "tab\tkey"])
def test_a_caller_key_the_client_could_not_send_is_refused(engine: Engine, key: str) -> None:
    # Issue 8, item 2: validation took any printable ASCII, so a key with a space was stored,
    # and the client then refused it on every attempt.
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        _enqueue(conn, idempotency_key=key)
    assert [e.field for e in caught.value.errors] == ["idempotency_key"]
    assert _count(engine) == 0


def test_a_different_reference_is_a_different_fax(engine: Engine) -> None:
    with engine.begin() as conn:
        first = _enqueue(conn)
        second = _enqueue(conn, reference="order-2")
    assert second.created
    assert second.id != first.id
    assert _count(engine) == 2


def test_explicit_key_with_different_content_is_a_conflict_and_writes_nothing(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        first = _enqueue(conn, idempotency_key="caller-key-1")
    with engine.begin() as conn:
        replay = _enqueue(conn, idempotency_key="caller-key-1")
        with pytest.raises(IdempotencyConflict) as caught:
            _enqueue(conn, idempotency_key="caller-key-1", reference="another-order")
        # The caller's transaction is still usable after the refusal.
        later = _enqueue(conn, reference="order-3")
    assert replay == EnqueueResult(first.id, "caller-key-1", created=False)
    assert caught.value.existing_id == first.id
    assert caught.value.idempotency_key == "caller-key-1"
    assert "idempotency_key" in str(caught.value)
    assert later.created
    assert _count(engine) == 2


def test_bulk_conflict_leaves_none_of_the_batch_behind(engine: Engine) -> None:
    with engine.begin() as conn:
        _enqueue(conn, idempotency_key="taken")
    # The caller catches the error and commits anyway: still nothing of the batch is kept.
    with engine.begin() as conn, pytest.raises(IdempotencyConflict):
        enqueue_faxes(
            conn,
            [
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="new-1"),
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="new-2"),
                FaxIntent(
                    to=TO,
                    document=DOC,
                    filename="a.pdf",
                    reference="other",
                    idempotency_key="taken",
                ),
            ],
            environment="sandbox",
        )
    assert _count(engine) == 1


def test_bulk_results_in_input_order_with_duplicates_inside_the_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        stored = _enqueue(conn, reference="stored-before")
    intents = [
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="b-1"),
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="stored-before"),
        FaxIntent(to=TO, document=DOC, filename="b.pdf", reference="b-1"),  # name: not the key
        FaxIntent(to=TO, document=files.png(), filename="scan.png", reference="b-2", retries=0),
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="b-1"),
    ]
    with engine.begin() as conn:
        results = enqueue_faxes(conn, intents, environment="sandbox")
    assert [r.created for r in results] == [True, False, False, True, False]
    assert results[1].id == stored.id
    assert results[0].id == results[2].id == results[4].id
    assert len({results[0].id, results[1].id, results[3].id}) == 3
    for intent, result in zip(intents, results, strict=True):
        assert isinstance(intent.document, bytes)
        assert result.idempotency_key == derive_idempotency_key(
            TO, document_sha256(intent.document), intent.reference
        )
    assert _count(engine) == 3


def test_bulk_with_one_key_for_two_different_intents_is_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        enqueue_faxes(
            conn,
            [
                FaxIntent(
                    to=TO, document=DOC, filename="a.pdf", reference="x", idempotency_key="k"
                ),
                FaxIntent(
                    to=TO, document=DOC, filename="a.pdf", reference="y", idempotency_key="k"
                ),
            ],
            environment="sandbox",
        )
    [error] = caught.value.errors
    assert (error.index, error.field) == (1, "idempotency_key")
    assert "intent [0]" in error.reason
    assert _count(engine) == 0


def test_bulk_with_one_bad_intent_lists_index_and_field_and_writes_nothing(
    engine: Engine,
) -> None:
    intents = [
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="ok-0"),
        FaxIntent(to="+1 212", document=files.png(), filename="scan.pdf", reference="bad-1"),
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="ok-2"),
        FaxIntent(to=TO, document=b"", filename="a.pdf", reference="bad-3", retries=11),
    ]
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        enqueue_faxes(conn, intents, environment="sandbox")
    found = {(e.index, e.field) for e in caught.value.errors}
    assert found == {(1, "to"), (1, "filename"), (3, "document"), (3, "retries")}
    assert "[1] to: " in str(caught.value)
    assert _count(engine) == 0


def test_empty_bulk_is_a_no_op(engine: Engine) -> None:
    with engine.begin() as conn:
        assert enqueue_faxes(conn, [], environment="sandbox") == []
    assert _count(engine) == 0


def test_works_with_a_session_and_joins_its_transaction(engine: Engine) -> None:
    with Session(engine) as session:
        result = _enqueue(session)
        assert result.created
        session.rollback()
    assert _count(engine) == 0
    with Session(engine) as session, session.begin():
        result = _enqueue(session)
        batch = enqueue_faxes(
            session,
            [
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference=f"s-{i}")
                for i in range(3)
            ],
            environment="sandbox",
        )
    assert result.created
    assert [r.created for r in batch] == [True, True, True]
    assert _count(engine) == 4


def test_document_may_be_a_path(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "referral.docx"
    path.write_bytes(files.docx())
    with engine.begin() as conn:
        result = _enqueue(conn, document=path, filename=None)
        by_str = _enqueue(conn, document=str(path), filename=None)
    assert result.created
    assert by_str.id == result.id
    with engine.connect() as conn:
        name = conn.execute(select(fax_outbox.c.filename)).scalar_one()
    assert name == "referral.docx"


def test_unreadable_path_is_one_clear_error(engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        _enqueue(conn, document=tmp_path / "missing.pdf", filename=None)
    assert [(e.field, e.reason) for e in caught.value.errors] == [
        ("document", "cannot read 'missing.pdf': No such file or directory")
    ]
    assert _count(engine) == 0


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (["not", "a", "mapping"], "JSON object"),
        ({"when": object()}, "not JSON-serialisable"),
        ({"score": float("nan")}, "not JSON-serialisable"),
        ({"note": "nul \x00 inside"}, "NUL"),
        ({"blob": "x" * 70_000}, "64 KB"),
    ],
)
def test_bad_metadata_is_refused_before_the_database_sees_it(
    engine: Engine, metadata: Any, reason: str
) -> None:
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        _enqueue(conn, metadata=metadata)
    [error] = caught.value.errors
    assert error.field == "metadata"
    assert reason in error.reason
    assert _count(engine) == 0


def test_environment_comes_from_faxout_environment_when_not_given(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAXOUT_ENVIRONMENT", "production")
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        enqueue_fax(conn, to="+15005550006", document=DOC, filename="a.pdf", reference="r")
    assert [e.field for e in caught.value.errors] == ["to"]
    monkeypatch.setenv("FAXOUT_ENVIRONMENT", "staging")
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="FAXOUT_ENVIRONMENT"):
        enqueue_fax(conn, to=TO, document=DOC, filename="a.pdf", reference="r")
    monkeypatch.delenv("FAXOUT_ENVIRONMENT")
    with engine.begin() as conn:
        assert enqueue_fax(
            conn, to="+15005550006", document=DOC, filename="a.pdf", reference="r"
        ).created
    assert _count(engine) == 1


@pytest.fixture
def wide_engine(database_url: str) -> Iterator[Engine]:
    """An engine with a connection for each of 20 threads, so they really run at once."""
    engine = make_engine(database_url, pool_size=20, max_overflow=0)
    yield engine
    engine.dispose()


def test_twenty_threads_enqueueing_the_same_intent_make_one_row(wide_engine: Engine) -> None:
    threads_count = 20
    barrier = threading.Barrier(threads_count)
    results: list[EnqueueResult] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            with wide_engine.connect() as conn:
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")  # connected and inside a transaction
                    barrier.wait(timeout=30)
                    result = _enqueue(conn, reference="race")
                with lock:
                    results.append(result)
        except BaseException as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert len(results) == threads_count
    assert len({r.id for r in results}) == 1
    assert len({r.idempotency_key for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert _count(wide_engine) == 1


def test_overlapping_batches_in_opposite_orders_do_not_deadlock(wide_engine: Engine) -> None:
    intents = [
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference=f"overlap-{i}")
        for i in range(400)
    ]
    batches = [intents, list(reversed(intents))] * 5
    barrier = threading.Barrier(len(batches))
    outcomes: list[list[EnqueueResult]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(batch: list[FaxIntent]) -> None:
        try:
            with wide_engine.connect() as conn:
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")
                    barrier.wait(timeout=30)
                    result = enqueue_faxes(conn, batch, environment="sandbox")
                with lock:
                    outcomes.append(sorted(result, key=lambda r: r.id))
        except BaseException as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert len(outcomes) == len(batches)
    assert len({tuple(r.id for r in outcome) for outcome in outcomes}) == 1
    assert sum(r.created for outcome in outcomes for r in outcome) == len(intents)
    assert _count(wide_engine) == len(intents)


def test_a_connection_without_a_transaction_yet_commits_the_row(engine: Engine) -> None:
    with engine.connect() as conn:
        assert not conn.in_transaction()
        first = _enqueue(conn, reference="autobegin-1")
        conn.commit()
        batch = enqueue_faxes(
            conn,
            [
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference=f"ab-{i}")
                for i in range(2)
            ],
            environment="sandbox",
        )
        conn.commit()
    assert first.created
    assert [r.created for r in batch] == [True, True]
    assert _count(engine) == 3


def test_drivers_other_than_psycopg_take_the_sqlalchemy_path(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fast path talks to psycopg's own cursor; any other driver goes through SQLAlchemy.
    monkeypatch.setattr(engine.dialect, "driver", "not-psycopg")
    with engine.begin() as conn:
        single = _enqueue(conn, reference="core-1")
        again = _enqueue(conn, reference="core-1")
        batch = enqueue_faxes(
            conn,
            [
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="core-2"),
                FaxIntent(to=TO, document=DOC, filename="a.pdf", reference="core-1"),
            ],
            environment="sandbox",
        )
    assert single.created
    assert not again.created
    assert [r.created for r in batch] == [True, False]
    assert batch[1].id == single.id
    assert _count(engine) == 2


@pytest.mark.parametrize("count", [1, 3])
def test_database_errors_surface_as_sqlalchemy_errors(empty_database_url: str, count: int) -> None:
    engine = make_engine(empty_database_url)  # no schema: the INSERT itself fails
    intents = [
        FaxIntent(to=TO, document=DOC, filename="a.pdf", reference=f"e-{i}") for i in range(count)
    ]
    try:
        with engine.connect() as conn, pytest.raises(sqlalchemy.exc.ProgrammingError) as caught:
            enqueue_faxes(conn, intents, environment="sandbox")
        assert isinstance(caught.value.orig, psycopg.errors.UndefinedTable)
    finally:
        engine.dispose()


def test_a_lost_connection_is_invalidated_not_reused(engine: Engine) -> None:
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with engine.connect() as killer:
            killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            _enqueue(conn, reference="lost")
        assert caught.value.connection_invalidated
        assert conn.invalidated
    with engine.begin() as conn:  # the pool hands out a working connection afterwards
        assert _enqueue(conn, reference="after").created
    assert _count(engine) == 1
