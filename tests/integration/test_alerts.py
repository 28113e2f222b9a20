"""Alerts: one per episode, logged at ERROR, POSTed to the alert webhook, retried when it fails."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from outbox.alerts import Alert, Alerter, delivery_backoff
from outbox.clock import SystemClock
from outbox.repository import alerts_to_notify
from tests.sandbox_fixtures import WebhookSink


def test_alert_is_recorded_once_logged_and_posted(
    engine: Engine, webhook_sink: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    alerter = Alerter(SystemClock(), webhook_sink.url)
    alert = Alert(
        kind="fleet_paused",
        dedupe_key="fleet_paused:1",
        message="no balance",
        severity="critical",
        detail={"reason": "insufficient_balance"},
    )
    with engine.begin() as conn:
        first = alerter.record(conn, alert)
        again = alerter.record(conn, alert)  # a second worker seeing the same episode
    assert first is not None and again is None
    with caplog.at_level(logging.ERROR, logger="faxout.alerts"):
        alerter.deliver(engine, [first])
    assert "ALERT fleet_paused [critical] no balance" in caplog.text
    [posted] = webhook_sink.events()
    assert posted["kind"] == "fleet_paused" and posted["detail"] == {
        "reason": "insufficient_balance"
    }
    with engine.connect() as conn:
        assert alerts_to_notify(conn) == []


def test_failed_webhook_delivery_is_retried_later(
    engine: Engine, webhook_sink: WebhookSink
) -> None:
    webhook_sink.responses = [503]
    alerter = Alerter(SystemClock(), webhook_sink.url)
    with engine.begin() as conn:
        alert_id = alerter.record(
            conn, Alert(kind="fax_failed", dedupe_key="fax_failed:fax:9", message="gave up")
        )
    assert alert_id is not None
    alerter.deliver(engine, [alert_id])
    with engine.connect() as conn:
        [pending] = alerts_to_notify(conn)
    assert pending["notify_error"] == "alert webhook answered 503"
    assert alerter.deliver_pending(engine) == 0  # backed off: not due yet
    _make_due(engine)
    assert alerter.deliver_pending(engine) == 1
    assert len(webhook_sink.events()) == 2
    with engine.connect() as conn:
        assert alerts_to_notify(conn) == []


def _make_due(engine: Engine) -> None:
    """Let every backed-off alert's delay pass."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE alerts SET next_delivery_at = now() - interval '1 second' "
            "WHERE next_delivery_at IS NOT NULL"
        )


def test_two_processes_delivering_at_once_post_each_alert_once(
    engine: Engine, webhook_sink: WebhookSink
) -> None:
    """The worker that raised the alerts and beat's retry task (or two beats) at once."""
    webhook_sink.delay_seconds = 0.2  # deliveries overlap
    with engine.begin() as conn:
        recorder = Alerter(SystemClock())
        ids = [
            recorder.record(conn, Alert(kind="fax_failed", dedupe_key=f"k:{n}", message="x"))
            for n in range(5)
        ]
    raised = [alert_id for alert_id in ids if alert_id is not None]
    url = webhook_sink.url
    # Each its own Alerter and connections, as separate processes would have.
    deliveries: list[Callable[[], object]] = [
        lambda: Alerter(SystemClock(), url).deliver(engine, raised),  # the raiser
        lambda: Alerter(SystemClock(), url).deliver_pending(engine),  # beat
        lambda: Alerter(SystemClock(), url).deliver_pending(engine),  # a second beat
    ]
    start = threading.Barrier(len(deliveries))
    errors: list[BaseException] = []

    def run(deliver: Callable[[], object]) -> None:
        try:
            start.wait()
            deliver()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(deliver,)) for deliver in deliveries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    posted = sorted(event["id"] for event in webhook_sink.events())
    assert posted == sorted(raised)  # every alert once, none twice
    with engine.connect() as conn:
        assert alerts_to_notify(conn) == []


def test_failed_deliveries_back_off_exponentially_and_count_tries(
    engine: Engine, webhook_sink: WebhookSink
) -> None:
    webhook_sink.responses = [503, 503, 503]
    alerter = Alerter(SystemClock(), webhook_sink.url)
    with engine.begin() as conn:
        alert_id = alerter.record(conn, Alert(kind="fax_failed", dedupe_key="b:1", message="m"))
    assert alert_id is not None
    alerter.deliver(engine, [alert_id])
    delays = []
    for tries in (1, 2, 3):
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT delivery_attempts, extract(epoch FROM next_delivery_at - now()), "
                "delivery_claimed_until FROM alerts WHERE id = %s",
                (alert_id,),
            ).one()
        assert row[0] == tries and row[2] is None  # counted, claim released
        delays.append(float(row[1]))
        assert alerter.deliver_pending(engine) == 0  # not due yet: nothing POSTed
        assert len(webhook_sink.events()) == tries
        _make_due(engine)
        alerter.deliver_pending(engine)
    assert delays == pytest.approx([60, 120, 240], abs=2)
    assert len(webhook_sink.events()) == 4
    with engine.connect() as conn:
        assert alerts_to_notify(conn) == []


def test_delivery_backoff_is_capped() -> None:
    assert [delivery_backoff(n) for n in (1, 2, 3, 7, 100)] == [60, 120, 240, 3600, 3600]
