"""A worker whose database goes away mid-submission (issue 12, item 3): what it could not
write it keeps, and writes when the database answers again, before it claims anything new.

The database going away is real: every connection of the test's database is killed with
`pg_terminate_backend` at the exact step that matters (after the POST, before it; during the
claim), and the worker's next statement meets the dropped connection. The mintfax client is
the stand-in of test_submit.py, so the number of POSTs is counted exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from outbox import repository
from outbox.db import make_engine
from outbox.errors import DatabaseUnavailable, ServerError
from outbox.fax_client import SubmitResult
from outbox.outage import OutageLog
from outbox.rescuer import LeaseRescuer
from outbox.submit import Outcome, settle_kept, submit_reports
from outbox.throttle import FleetThrottle, ThrottleDecision
from tests.integration.test_submit import Harness, accepted, harness

__all__ = ["harness"]  # the fixture, shared with test_submit.py


@pytest.fixture(autouse=True)
def _own_outage_log(harness: Harness) -> None:
    # The process-wide log would carry one test's outage into the next.
    harness.ctx.outages = OutageLog(logging.getLogger("faxout.outage"))


def _kill_connections(h: Harness) -> int:
    """pg_terminate_backend every other connection to the test's database: the worker's."""
    url = h.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    return int(killed[0])


def _post_then_lose_the_database(h: Harness, result: SubmitResult) -> None:
    def send_fax(**kwargs: Any) -> SubmitResult:
        h.sender.calls.append(kwargs)
        _kill_connections(h)  # mintfax has answered; the worker's connection is gone
        return result

    h.sender.send_fax = send_fax  # type: ignore[method-assign]


def _rescue(h: Harness) -> None:
    h.clock.advance(h.ctx.lease_seconds + 1)
    assert LeaseRescuer(h.engine, h.ctx.alerter, h.clock, max_attempts=5).run_once() == 1


def _submit(h: Harness, *ids: int) -> list[Any]:
    return submit_reports(h.ctx, list(ids))


def _outage_lines(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"database {word}" in r.getMessage()]


def test_a_201_whose_write_met_a_dead_connection_is_written_before_the_next_claim(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = harness.enqueue(ref="a"), harness.enqueue(ref="b")
    harness.dispatch()
    _post_then_lose_the_database(harness, accepted("fax-a"))
    with caplog.at_level(logging.WARNING, logger="faxout.outage"):
        [report] = _submit(harness, first)
        assert report.error == "DatabaseUnavailable"
        # The POST was made; the row still says `sending`, the outcome is in memory only.
        assert harness.row(first)["status"] == "sending"
        assert [c for c, _ in harness.ctx.kept.claims()]
        harness.sender.send_fax = type(harness.sender).send_fax.__get__(harness.sender)  # type: ignore[method-assign]
        # The next message: the kept 201 is written first, then the new row is claimed.
        [next_report] = _submit(harness, second)
    assert next_report.outcome is Outcome.SUBMITTED
    row = harness.row(first)
    assert row["status"] == "submitted" and row["mintfax_fax_id"] == "fax-a"
    assert row["attempts"] == 1 and not row["outcome_unknown"]
    [attempt] = harness.attempts(first)
    assert attempt["mintfax_fax_id"] == "fax-a" and attempt["lease_lost"] is False
    assert len(harness.sender.calls) == 2  # one POST per row: the first was never resent
    assert not harness.ctx.kept
    assert len(_outage_lines(caplog, "unavailable")) == 1
    assert len(_outage_lines(caplog, "back")) == 1


def test_a_kept_201_is_applied_when_the_lease_ran_out_and_the_rescuer_gave_the_row_back(
    harness: Harness,
) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()
    _post_then_lose_the_database(harness, accepted("fax-late"))
    _submit(harness, fax_id)
    # The outage outlasts the lease: beat's rescuer gives the row back (an unknown outcome).
    _rescue(harness)
    assert harness.row(fax_id)["status"] == "pending"
    assert settle_kept(harness.ctx) == 1
    row = harness.row(fax_id)
    # The fenced finish found the lease lost, and the 201 was adopted by the waiting row.
    assert row["status"] == "submitted" and row["mintfax_fax_id"] == "fax-late"
    assert row["attempts"] == 1  # the attempt the rescue counted was this one
    [attempt] = harness.attempts(fax_id)
    assert attempt["lease_lost"] is True and attempt["mintfax_fax_id"] == "fax-late"
    assert harness.alerts() == []
    assert len(harness.sender.calls) == 1


def test_a_kept_201_that_another_claim_now_holds_is_left_to_its_replay(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()
    _post_then_lose_the_database(harness, accepted("fax-x"))
    _submit(harness, fax_id)
    _rescue(harness)
    harness.dispatch()
    with harness.engine.begin() as conn:  # another worker claims it before this one is back
        other = repository.claim_for_submit(
            conn, fax_id, owner="other", now=harness.clock.now(), lease_seconds=60
        )
    assert other is not None
    settle_kept(harness.ctx)
    row = harness.row(fax_id)
    assert row["status"] == "sending" and row["lease_token"] == other.lease_token
    assert harness.alerts() == []  # its own POST will be a replay of this 201
    assert [a["lease_lost"] for a in harness.attempts(fax_id)] == [True]


def test_a_claim_not_yet_sent_is_given_back_due_now_when_the_database_answers(
    harness: Harness,
) -> None:
    fax_id, untouched = harness.enqueue(ref="a"), harness.enqueue(ref="b")
    harness.dispatch()
    real: FleetThrottle = harness.throttle

    class DropsTheDatabase:
        def try_acquire(self) -> ThrottleDecision:
            _kill_connections(harness)  # claimed, waiting for its turn: not sent
            return real.try_acquire()

        def cooldown(self, seconds: float) -> None:
            real.cooldown(seconds)

    harness.ctx.throttle = DropsTheDatabase()
    reports = _submit(harness, fax_id, untouched)
    assert [r.error for r in reports] == ["DatabaseUnavailable"] * 2
    assert harness.row(fax_id)["status"] == "sending"
    harness.ctx.throttle = real
    assert settle_kept(harness.ctx) == 2
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["lease_token"] is None
    assert row["attempts"] == 0 and not row["outcome_unknown"]  # nothing was sent
    with harness.engine.connect() as conn:
        due = conn.execute(
            text("SELECT id FROM fax_outbox WHERE next_attempt_at <= :now ORDER BY id"),
            {"now": harness.clock.now()},
        ).scalars()
        assert list(due) == [fax_id, untouched]  # both due now, not after the redispatch delay
    assert harness.sender.calls == []
    harness.dispatch()
    assert [r.outcome for r in _submit(harness, fax_id, untouched)] == [Outcome.SUBMITTED] * 2


def test_a_503_kept_through_the_outage_is_recorded_as_its_retry(harness: Harness) -> None:
    fax_id = harness.enqueue()
    harness.dispatch()

    def send_fax(**kwargs: Any) -> SubmitResult:
        harness.sender.calls.append(kwargs)
        _kill_connections(harness)
        raise ServerError("503", status_code=503)

    harness.sender.send_fax = send_fax  # type: ignore[method-assign]
    _submit(harness, fax_id)
    assert settle_kept(harness.ctx) == 1
    row = harness.row(fax_id)
    assert row["status"] == "pending" and row["attempts"] == 1
    [attempt] = harness.attempts(fax_id)
    assert attempt["http_status"] == 503


def test_while_the_database_is_away_everything_stays_kept(harness: Harness) -> None:
    """settle_kept raises DatabaseUnavailable and keeps all; a later call writes it."""
    fax_id = harness.enqueue()
    harness.dispatch()
    _post_then_lose_the_database(harness, accepted("fax-k"))
    _submit(harness, fax_id)
    good = harness.ctx.engine
    # A database that refuses connections: the same URL on a port nobody listens on.
    away = make_engine(good.url.set(host="127.0.0.1", port=1).render_as_string(False))
    harness.ctx.engine = away
    with pytest.raises(DatabaseUnavailable):
        settle_kept(harness.ctx)
    assert harness.ctx.kept and harness.row(fax_id)["status"] == "sending"
    harness.ctx.engine = good
    away.dispose()
    assert settle_kept(harness.ctx) == 1
    assert harness.row(fax_id)["mintfax_fax_id"] == "fax-k"
