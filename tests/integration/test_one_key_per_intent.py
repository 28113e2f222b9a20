"""One intent, one key, whichever way it was written (issue 8, item 5), as a property.

For random valid and near-valid numbers, documents and references: either the helper refuses
the intent, or the database's insert trigger, given the same values through plain SQL, derives
the same key and stores the same number. And a number the helper refuses but the database
takes (it cannot judge numbering plans) is refused by the worker's check too, so it is never
sent under a key the helper would not have given it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from outbox import ValidationFailed, enqueue_fax
from outbox.validation import check_number

CANONICAL = [
    "+12127365000",
    "+442079460958",
    "+4930901820",
    "+33142685300",
    "+61293744000",
    "+15005550006",  # a sandbox magic number
    "+390612345678",  # Italy keeps its leading zero in E.164
]


@st.composite
def numbers(draw: st.DrawFn) -> str:
    """A canonical number, or one spelled nearly like one."""
    number = draw(st.sampled_from(CANONICAL))
    country = 2 if number.startswith("+1") else 3  # "+" and the country code
    spellings = [
        number,
        number[:country] + "0" + number[country:],  # a national trunk prefix kept
        number[:country] + " " + number[country:],
        number[:5] + "-" + number[5:],
        " " + number,
        number + "\n",
        number + " ",
        "00" + number[1:],
        number[:-1],  # a digit short
        number + "1",  # a digit long
        "+" + number,
        number.replace("+", "+ "),
    ]
    # Half canonical, so that accepted intents (the ones whose keys are compared) are common.
    return number if draw(st.booleans()) else draw(st.sampled_from(spellings))


PDF = b"%PDF-1.4\n"
pdfs = st.binary(min_size=0, max_size=64).map(lambda tail: PDF + tail)
documents = st.one_of(pdfs, pdfs, pdfs, st.binary(min_size=0, max_size=16))  # mostly PDFs
references = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet=" \t\r\n", min_size=1, max_size=3).flatmap(
        lambda pad: st.sampled_from([f"{pad}order-1", f"order-1{pad}", f"or{pad}der"])
    ),
    st.just("Rechnung \u00e4\u00f6\u00fc \u2116 7 \u2013 O'Brien"),
)

_PLAIN_INSERT = (
    "INSERT INTO fax_outbox (to_number, document, filename, reference)"
    " VALUES (%s, %s, %s, %s) RETURNING idempotency_key, to_number"
)


@pytest.fixture
def plain(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


def _plain_insert(
    plain: psycopg.Connection[Any], to: str, document: bytes, reference: str
) -> tuple[str, str] | None:
    """(key, stored number) the database gives these values, or None if it refuses them."""
    try:
        found = plain.execute(_PLAIN_INSERT, [to, document, "letter.pdf", reference]).fetchone()
    except (psycopg.IntegrityError, psycopg.DataError):
        return None
    finally:
        plain.rollback()
    assert found is not None
    return str(found[0]), str(found[1])


@settings(
    max_examples=400,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(to=numbers(), document=documents, reference=references)
def test_the_helper_and_the_database_derive_one_key_or_the_helper_refuses(
    engine: Engine, plain: psycopg.Connection[Any], to: str, document: bytes, reference: str
) -> None:
    try:
        with engine.connect() as conn:
            result = enqueue_fax(
                conn,
                to=to,
                document=document,
                filename="letter.pdf",
                reference=reference,
                environment="sandbox",
            )
            conn.rollback()
    except ValidationFailed as refused:
        event("the helper refused")
        if [e.field for e in refused.errors] == ["to"]:
            stored = _plain_insert(plain, to, document, reference)
            if stored is not None:  # the database took it: the worker must refuse it
                event("only the worker's check refused")
                assert check_number(stored[1], "sandbox")[1] != []
        return
    event("the helper accepted")
    stored = _plain_insert(plain, to, document, reference)
    assert stored == (result.idempotency_key, to)
    assert check_number(to, "sandbox") == (to, [])  # the worker sends it as stored
