"""Alerts: one per episode, logged at ERROR, POSTed to the alert webhook, retried when it fails."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Engine

from outbox.alerts import Alert, Alerter
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
    assert alerter.deliver_pending(engine) == 1
    assert len(webhook_sink.events()) == 2
    with engine.connect() as conn:
        assert alerts_to_notify(conn) == []
