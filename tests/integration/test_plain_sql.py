"""Any language can enqueue with plain SQL: the database derives the same key as Python."""

from __future__ import annotations

import os
import select
import subprocess
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from outbox import ValidationFailed, derive_idempotency_key, document_sha256, enqueue_fax
from outbox.models import NOTIFY_CHANNEL
from tests import fixtures_files as files

DOC = files.pdf("plain sql")


def _psql(database_url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """Run `sql` through the real psql client, as a non-Python service would."""
    env = {**os.environ, "PGCLIENTENCODING": "UTF8"}
    return subprocess.run(
        ["psql", database_url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _minimal_insert(to_number: str, document: bytes, reference: str) -> str:
    quoted_reference = reference.replace("'", "''")
    return (
        "INSERT INTO fax_outbox (to_number, document, filename, reference) VALUES "
        f"('{to_number}', '\\x{document.hex()}'::bytea, 'letter.pdf', '{quoted_reference}') "
        "RETURNING id, idempotency_key, status, retries"
    )


@pytest.mark.parametrize(
    ("to_number", "reference"),
    [
        ("+12127365000", "order-42"),
        ("+4930901820", "Rechnung \u00e4\u00f6\u00fc \u2116 7 \u2013 O'Brien"),  # UTF-8, a quote
    ],
)
def test_plain_insert_gets_the_key_the_helper_derives(
    database_url: str, to_number: str, reference: str
) -> None:
    done = _psql(database_url, _minimal_insert(to_number, DOC, reference))
    assert done.returncode == 0, done.stderr
    row_id, key, status, retries = done.stdout.strip().splitlines()[0].split("|")
    assert key == derive_idempotency_key(to_number, document_sha256(DOC), reference)
    assert (status, retries) == ("pending", "3")
    assert int(row_id) > 0


def test_second_identical_plain_insert_is_refused_by_the_unique_index(database_url: str) -> None:
    sql = _minimal_insert("+12127365000", DOC, "order-42")
    assert _psql(database_url, sql).returncode == 0
    again = _psql(database_url, sql)
    assert again.returncode != 0
    assert "duplicate key value violates unique constraint" in again.stderr
    assert "fax_outbox_idempotency_key_key" in again.stderr
    count = _psql(database_url, "SELECT count(*) FROM fax_outbox")
    assert count.stdout.strip() == "1"


def test_plain_insert_and_helper_dedupe_against_each_other(
    database_url: str, engine: Engine
) -> None:
    done = _psql(database_url, _minimal_insert("+12127365000", DOC, "order-7"))
    assert done.returncode == 0, done.stderr
    row_id, key = done.stdout.strip().splitlines()[0].split("|")[:2]
    with engine.begin() as conn:
        result = enqueue_fax(
            conn,
            to="+12127365000",
            document=DOC,
            filename="letter.pdf",
            reference="order-7",
            environment="sandbox",
        )
    assert (result.id, result.idempotency_key, result.created) == (int(row_id), key, False)


def test_plain_insert_of_a_bad_number_is_refused_with_the_constraint_name(
    database_url: str,
) -> None:
    done = _psql(database_url, _minimal_insert("+1 212 736 5000", DOC, "order-9"))
    assert done.returncode != 0
    assert "fax_outbox_to_number_e164_check" in done.stderr


def test_a_plain_insert_cannot_set_the_columns_the_system_owns(database_url: str) -> None:
    # Issue 8, item 7: the trigger refuses them (naming each) instead of trusting them.
    sql = (
        "INSERT INTO fax_outbox (to_number, document, filename, reference, status,"
        " mintfax_fax_id, attempts) VALUES ('+12127365000', "
        f"'\\x{DOC.hex()}'::bytea, 'letter.pdf', 'sneaky', 'submitted', 'fax_1', 2)"
    )
    done = _psql(database_url, sql)
    assert done.returncode != 0
    assert (
        "fax_outbox: status, attempts, mintfax_fax_id are set by the system, not by an insert"
        in done.stderr
    )
    assert "An insert sets to_number, document, filename and reference" in done.stderr
    count = _psql(database_url, "SELECT count(*) FROM fax_outbox")
    assert count.stdout.strip() == "0"


def test_a_plain_insert_with_a_key_the_client_could_not_send_is_refused(
    database_url: str,
) -> None:
    sql = (
        "INSERT INTO fax_outbox (to_number, document, filename, reference, idempotency_key)"
        f" VALUES ('+12127365000', '\\x{DOC.hex()}'::bytea, 'letter.pdf', 'k', 'my key')"
    )
    done = _psql(database_url, sql)
    assert done.returncode != 0
    assert "fax_outbox_idempotency_key_header_safe_check" in done.stderr


def test_a_non_canonical_number_is_stored_and_keyed_as_written_and_the_helper_refuses_it(
    database_url: str, engine: Engine
) -> None:
    # The database cannot tell +44 0... from a canonical number (that needs numbering plans),
    # so it keys and stores the string as written, exactly as the helper would: never another
    # string. The helper refuses that spelling, and the worker rejects the row before sending.
    done = _psql(database_url, _minimal_insert("+4402071234567", DOC, "uk-1"))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[0].split("|")[1]
    assert key == derive_idempotency_key("+4402071234567", document_sha256(DOC), "uk-1")
    stored = _psql(database_url, "SELECT to_number FROM fax_outbox")
    assert stored.stdout.strip() == "+4402071234567"
    with engine.begin() as conn, pytest.raises(ValidationFailed) as caught:
        enqueue_fax(
            conn,
            to="+4402071234567",
            document=DOC,
            filename="letter.pdf",
            reference="uk-1",
            environment="sandbox",
        )
    assert "did you mean +442071234567?" in str(caught.value)


def _wait_for_notification(listener: psycopg.Connection[Any], timeout: float) -> list[str]:
    """Channels notified on `listener` within `timeout` seconds."""
    ready, _, _ = select.select([listener.fileno()], [], [], timeout)
    if not ready:
        return []
    return [n.channel for n in listener.notifies(timeout=0.5, stop_after=10)]


def test_insert_notifies_the_wake_up_channel(database_url: str) -> None:
    assert NOTIFY_CHANNEL == "fax_outbox_new"
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with psycopg.connect(database_url) as writer:
            writer.execute(
                "INSERT INTO fax_outbox (to_number, document, filename, reference)"
                " VALUES (%s, %s, %s, %s)",
                ["+12127365000", DOC, "letter.pdf", "notify-1"],
            )
            # Nothing is announced before the commit: a woken worker must find the row.
            assert _wait_for_notification(listener, 0.3) == []
            writer.commit()
        assert _wait_for_notification(listener, 5) == [NOTIFY_CHANNEL]


def test_a_rolled_back_insert_does_not_notify(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with psycopg.connect(database_url) as writer:
            writer.execute(
                "INSERT INTO fax_outbox (to_number, document, filename, reference)"
                " VALUES (%s, %s, %s, %s)",
                ["+12127365000", DOC, "letter.pdf", "notify-2"],
            )
            writer.rollback()
        assert _wait_for_notification(listener, 0.5) == []
