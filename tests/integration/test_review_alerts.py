"""A row parked in needs_review alerts once per stay there, however many workers see it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from outbox import enqueue_fax
from outbox.alerts import Alerter, give_up_alert
from outbox.clock import SystemClock
from outbox.errors import LeaseExpired
from outbox.repository import claim_for_submit, dispatch_due, fax_row
from outbox.rescuer import LeaseRescuer
from outbox.retry import attempts_exhausted

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _claim_with_a_lapsed_lease(engine: Engine, fax_id: int) -> None:
    """A worker claims the row and dies: its lease has already run out."""
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        assert dispatch_due(conn, now=datetime.now(UTC), limit=10, redispatch_after=20) == [fax_id]
        claimed = claim_for_submit(conn, fax_id, owner="dead:1", now=long_ago, lease_seconds=10)
    assert claimed is not None


def _review_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.exec_driver_sql(
                "SELECT dedupe_key FROM alerts WHERE kind = 'needs_review' ORDER BY id"
            ).scalars()
        )


def test_a_row_parked_again_after_an_operator_retry_alerts_again(engine: Engine) -> None:
    alerter = Alerter(SystemClock())
    rescuer = LeaseRescuer(engine, alerter, SystemClock(), max_attempts=1)
    with engine.begin() as conn:
        fax_id = enqueue_fax(
            conn, to="+15005550001", document=PDF, filename="a.pdf", reference="r"
        ).id
    lost = LeaseExpired("the worker lost its lease")

    for episode in (1, 2):
        _claim_with_a_lapsed_lease(engine, fax_id)
        assert rescuer.run_once() == 1  # out of attempts: parked, alerted
        with engine.connect() as conn:
            row = fax_row(conn, fax_id)
        assert row is not None and row["status"] == "needs_review"
        assert len(_review_keys(engine)) == episode
        # Another worker seeing the same episode (e.g. its late write-back) alerts no more.
        with engine.begin() as conn:
            again = give_up_alert(fax_id, attempts_exhausted(lost), "seen again", {})
            assert alerter.record(conn, again) is None
        assert len(_review_keys(engine)) == episode
        # The operator looks, and sends it back to pending for another try.
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE fax_outbox SET status = 'pending', attempts = 0, next_attempt_at = now() "
                "WHERE id = %s",
                (fax_id,),
            )

    first, second = _review_keys(engine)
    assert first != second and all(str(fax_id) in key for key in (first, second))
