"""What a submit task says of each fax (its result in Flower), and when it counts as failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbox.models import Outcome, PauseReason
from outbox.submit import SubmitReport, describe_reports

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("report", "said", "fault"),
    [
        (SubmitReport(1234, Outcome.SUBMITTED, http_status=201), "1234: submitted", False),
        (
            SubmitReport(1, Outcome.REPLAYED, http_status=201),
            "1: submitted (replay of an earlier 201)",
            False,
        ),
        (
            SubmitReport(
                1235,
                Outcome.RETRY_SCHEDULED,
                retry_at=later(7.2),
                decided_at=NOW,
                http_status=503,
            ),
            "1235: retry in 7.2 s (503)",
            False,
        ),
        (
            SubmitReport(
                2,
                Outcome.RATE_LIMITED,
                retry_at=later(34),
                decided_at=NOW,
                http_status=429,
                error="rate_limit_exceeded",
            ),
            "2: rate limited, fleet waits, retry in 34 s (429 rate_limit_exceeded)",
            False,
        ),
        (
            SubmitReport(
                3, Outcome.REJECTED, http_status=422, error="validation_failed", reason="x"
            ),
            "3: rejected: x (422 validation_failed)",
            False,
        ),
        (
            SubmitReport(4, Outcome.REJECTED_LOCALLY, error="invalid_to", reason="invalid_to"),
            "4: rejected locally: invalid_to (invalid_to)",
            False,
        ),
        (
            SubmitReport(5, Outcome.NEEDS_REVIEW, error="ServerError", reason="unknown_outcome"),
            "5: needs review: unknown_outcome (ServerError)",
            False,
        ),
        (
            SubmitReport(
                6,
                Outcome.PAUSED,
                http_status=402,
                error="insufficient_balance",
                paused=PauseReason.INSUFFICIENT_BALANCE,
            ),
            "6: not sent, paused the fleet: insufficient_balance (402 insufficient_balance)",
            True,
        ),
        (
            SubmitReport(
                7,
                Outcome.THROTTLED,
                retry_at=later(5),
                decided_at=NOW,
                error="FleetStateUnavailable",
            ),
            "7: throttled, due again in 5.0 s (FleetStateUnavailable)",
            False,  # a Redis outage is told once per process, not failed per task
        ),
        (
            SubmitReport(
                8, Outcome.NEEDS_REVIEW, error="UnexpectedError", reason="unexpected_error"
            ),
            "8: needs review: unexpected_error (UnexpectedError)",
            True,
        ),
        (
            SubmitReport(9, Outcome.LEASE_LOST),
            "9: lease lost (another worker or the rescuer has it)",
            True,
        ),
        (
            SubmitReport(10, Outcome.NOT_CLAIMED),
            "10: skipped (already taken, finished or not due)",
            False,
        ),
        (
            SubmitReport(11, Outcome.NOT_CLAIMED, error="DatabaseUnavailable"),
            "11: database unavailable, handed out again when it is back",
            False,
        ),
    ],
)
def test_each_outcome_is_told_in_one_line(report: SubmitReport, said: str, fault: bool) -> None:
    assert report.describe() == said
    assert report.fault is fault


def test_an_error_code_that_is_not_a_code_is_never_repeated() -> None:
    # A server may put anything in its `error` field: a number, a key, a sentence.
    for junk in ("call +15005550001", "fx_test_0123456789 is wrong", "a" * 100, "+15005550001"):
        said = SubmitReport(1, Outcome.REJECTED, http_status=422, error=junk).describe()
        assert said == "1: rejected (422)"


def test_a_task_result_lists_its_faxes_in_order() -> None:
    reports = [SubmitReport(1, Outcome.SUBMITTED), SubmitReport(2, Outcome.NOT_CLAIMED)]
    assert describe_reports(reports) == (
        "1: submitted; 2: skipped (already taken, finished or not due)"
    )
