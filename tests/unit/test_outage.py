"""outbox/outage.py without I/O: which driver errors are an outage, one line per outage, and
the bounds of what a worker keeps."""

from __future__ import annotations

import logging
import uuid

import psycopg
import psycopg.errors
import pytest
import sqlalchemy.exc

from outbox.errors import DatabaseUnavailable
from outbox.outage import (
    DATABASE,
    REDIS,
    KeptWork,
    OutageLog,
    as_database_unavailable,
    connection_lost,
    database_boundary,
)


def _wrapped(orig: Exception, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    """`orig` as SQLAlchemy raises it from a statement."""
    error = sqlalchemy.exc.DBAPIError.instance(
        "SELECT 1", None, orig, psycopg.Error, connection_invalidated=invalidated
    )
    assert isinstance(error, sqlalchemy.exc.DBAPIError)
    return error


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.errors.ConnectionFailure("connection failure"),
        psycopg.InterfaceError("the connection is closed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_server_gone_is_an_outage_raw_or_wrapped(error: Exception) -> None:
    assert connection_lost(error)
    assert connection_lost(_wrapped(error))
    translated = as_database_unavailable(_wrapped(error))
    assert isinstance(translated, DatabaseUnavailable) and translated.retryable


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.CheckViolation("violates check constraint"),
        ValueError("not a driver error"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_statement_that_failed_on_its_own_is_not_an_outage(error: Exception) -> None:
    assert not connection_lost(error)
    wrapped = _wrapped(error) if isinstance(error, psycopg.Error) else error
    assert as_database_unavailable(wrapped) is None
    with pytest.raises(type(wrapped)), database_boundary():
        raise wrapped


def test_an_invalidated_connection_is_an_outage_whatever_the_error() -> None:
    assert connection_lost(_wrapped(psycopg.errors.DeadlockDetected("x"), invalidated=True))


def test_the_boundary_raises_database_unavailable_from_the_driver_error() -> None:
    error = _wrapped(psycopg.errors.AdminShutdown("terminating connection"))
    with (
        pytest.raises(DatabaseUnavailable, match="AdminShutdown: terminating") as caught,
        database_boundary(),
    ):
        raise error
    assert caught.value.__cause__ is error


def test_one_warning_per_outage_and_one_line_when_back(caplog: pytest.LogCaptureFixture) -> None:
    ticks = iter([10.0, 16.5, 20.0, 21.0])
    outages = OutageLog(logging.getLogger("test.outage"), monotonic=lambda: next(ticks))
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        assert outages.lost(DATABASE, DatabaseUnavailable("refused"), "keeping work")
        for _ in range(50):  # every task of the outage
            assert not outages.lost(DATABASE, DatabaseUnavailable("refused"), "keeping work")
        assert outages.is_down(DATABASE) and not outages.is_down(REDIS)
        outages.back(DATABASE, "wrote 3")
        outages.back(DATABASE)  # nothing to end: silent
        outages.back(REDIS)
        assert outages.lost(DATABASE, DatabaseUnavailable("again"), "keeping work")  # a new one
        outages.back(DATABASE)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "database unavailable (refused); keeping work",
        "database back after 6.5 s; wrote 3",
        "database unavailable (again); keeping work",
        "database back after 1.0 s",
    ]


def test_kept_work_is_bounded_oldest_claim_first() -> None:
    kept: KeptWork[str] = KeptWork(limit=2)
    tokens = [uuid.uuid4() for _ in range(3)]
    assert kept.keep(tokens[0], "a") is None
    assert kept.keep(tokens[1], "b") is None
    assert kept.keep(tokens[2], "c") == "a"  # left to its lease, as if this process had died
    assert [item for _, item in kept.claims()] == ["b", "c"]
    kept.drop(tokens[1])
    kept.drop(tokens[2])
    assert not kept
    kept.keep_waiting(range(100))
    assert len(kept.waiting()) == 20  # 10 x limit: the rest wait out the redispatch delay
    kept.drop_waiting(kept.waiting())
    assert not kept


def test_a_worker_tells_which_service_an_error_says_is_away() -> None:
    from celery.beat import SchedulingError
    from kombu.exceptions import OperationalError as BrokerError

    from outbox.errors import FleetStateUnavailable
    from workers.outages import outage_of

    broker = BrokerError("Error 111 connecting to 127.0.0.1:6400. Connection refused.")
    try:
        try:
            raise broker
        except BrokerError:
            # beat's wrapping of the broker's error (celery.exceptions.reraise: a context)
            raise SchedulingError("Couldn't apply scheduled task rescue")  # noqa: B904
    except SchedulingError as wrapped:
        found = outage_of(wrapped)
    assert found is not None and found[0] == REDIS and found[1] is broker
    assert outage_of(FleetStateUnavailable("throttle"))[0] == REDIS  # type: ignore[index]
    lost = outage_of(_wrapped(psycopg.errors.AdminShutdown("terminating connection")))
    assert lost is not None and lost[0] == DATABASE
    assert isinstance(lost[1], DatabaseUnavailable)
    assert outage_of(_wrapped(psycopg.errors.UniqueViolation("duplicate key"))) is None
    assert outage_of(ValueError("a bug")) is None
