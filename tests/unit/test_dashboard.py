"""The dashboard page escapes what it shows: a reference, a reason or an alert written by
anyone who can insert a row must not become markup or script in an operator's browser."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from tests.unit.test_monitoring_files import _full_snapshot
from workers.dashboard import render_dashboard

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_values_from_rows_and_alerts_are_escaped() -> None:
    snap = replace(
        _full_snapshot(),
        oldest_pending={
            "id": 7,
            "age_seconds": 12.0,
            "to": "+1500*****01",
            "reference": HOSTILE,
            "attempts": 0,
            "next_attempt_at": datetime(2026, 12, 1, tzinfo=UTC),
            "status_reason": HOSTILE,
        },
        alerts=[
            {
                "id": 1,
                "kind": HOSTILE,
                "severity": "error",
                "message": HOSTILE,
                "fax_id": None,
                "created_at": datetime(2026, 12, 1, tzinfo=UTC),
                "notified_at": None,
            }
        ],
        rows_to_look_at=[
            {
                "id": 8,
                "status": "rejected",
                "status_reason": HOSTILE,
                "reference": HOSTILE,
                "to": "+1500*****02",
                "error_code": None,
                "error_message": HOSTILE,
                "last_error": {"action": HOSTILE, "request_id": HOSTILE},
                "updated_at": datetime(2026, 12, 1, tzinfo=UTC),
            }
        ],
    )
    page = render_dashboard(snap)
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6
