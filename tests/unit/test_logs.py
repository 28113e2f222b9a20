"""Structured logs (outbox/logs.py): JSON lines parse, carry their fields, and a phone number
or a secret never reaches a line whole, wherever it hides (message, arguments, extra fields,
nested values, a traceback)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from outbox.errors import ConfigurationError
from outbox.logs import configure_logging
from outbox.settings import log_settings_from_env

NUMBER = "+12125550123"
FORMATTED_NUMBER = "+1 (212) 555-0123"
API_KEY = "fx_live_CANARY0123456789abcdef"
WEBHOOK_SECRET = "whsec_CANARYsecret0123456789+/="


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writes here for the test, then gets its handlers back."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    levels = {n: logging.getLogger(n).level for n in ("faxout", "outbox", "workers", "httpx")}
    stream = io.StringIO()
    yield stream
    root.handlers[:] = before[0]
    root.setLevel(before[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_every_line_is_one_json_object_with_its_fields(captured: io.StringIO) -> None:
    configure_logging("json", "DEBUG", role="worker", stream=captured)
    log = logging.getLogger("faxout.submit")
    log.info(
        "fax %s submitted",
        42,
        extra={"action": "submit.submitted", "fax_id": 42, "mintfax_fax_id": "mf-1"},
    )
    log.warning("no ids here")
    logging.getLogger("some.library").error("a library's line")
    first, second, third = json_lines(captured)
    for line in (first, second, third):
        assert {"ts", "level", "logger", "action", "message", "fax_id", "mintfax_fax_id"} <= set(
            line
        )
        assert line["role"] == "worker" and isinstance(line["pid"], int) and line["host"]
        assert line["ts"].endswith("Z")
    assert first["action"] == "submit.submitted"
    assert first["fax_id"] == 42 and first["mintfax_fax_id"] == "mf-1"
    assert first["message"] == "fax 42 submitted" and first["level"] == "INFO"
    assert second["action"] == "submit"  # a call site that names none: its logger's
    assert second["fax_id"] is None and second["mintfax_fax_id"] is None
    assert third["logger"] == "some.library"
    assert third["action"] == "some.library"  # another library's logger: its whole name


def test_a_multiline_message_and_a_traceback_stay_one_json_line(captured: io.StringIO) -> None:
    configure_logging("json", role="relay", stream=captured)
    try:
        raise RuntimeError("line one\nline two")
    except RuntimeError:
        logging.getLogger("faxout.relay").exception("relay error\nsecond line")
    [line] = json_lines(captured)  # one physical line
    assert "RuntimeError: line one\nline two" in line["exc"]
    assert line["message"] == "relay error\nsecond line"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_phone_number_never_appears_whole(captured: io.StringIO, log_format: str) -> None:
    configure_logging(log_format, "DEBUG", role="worker", stream=captured)  # type: ignore[arg-type]
    log = logging.getLogger("faxout.submit")
    log.info("fax to %s and %s", NUMBER, FORMATTED_NUMBER, extra={"action": "x"})
    log.info(
        "fields",
        extra={
            "to": NUMBER,
            "to_number": "2125550123",  # a number field is masked whole, whatever its form
            "detail": {"recipient": NUMBER, "note": f"call {NUMBER}"},
            "numbers": [NUMBER],
        },
    )
    try:
        raise ValueError(f"carrier refused {NUMBER}")
    except ValueError:
        log.exception("send failed")
    text = captured.getvalue()
    assert "5550123" not in text and "555-0123" not in text
    assert "+1212*****23" in text  # still tells two faxes apart


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_secret_never_appears(captured: io.StringIO, log_format: str) -> None:
    configure_logging(log_format, "DEBUG", role="webhooks", stream=captured)  # type: ignore[arg-type]
    log = logging.getLogger("workers.webhooks")
    log.warning("key %s secret %s", API_KEY, WEBHOOK_SECRET)
    log.warning("header", extra={"authorization": f"Bearer {API_KEY}", "key": API_KEY})
    log.warning("url", extra={"url": "redis://:hunter2-CANARY@redis:6379/0"})
    try:
        raise RuntimeError(f"Authorization: Bearer {API_KEY}; signed with {WEBHOOK_SECRET}")
    except RuntimeError:
        log.exception("request failed")
    text = captured.getvalue()
    for secret in ("CANARY0123456789", "CANARYsecret", "hunter2"):
        assert secret not in text
    assert "fx_live_****" in text  # the kind of key stays visible


def test_text_lines_carry_the_action_and_ids(captured: io.StringIO) -> None:
    configure_logging("text", role="relay", stream=captured)
    logging.getLogger("faxout.poller").warning(
        "fax %d: unknown status",
        7,
        extra={"action": "poll.unknown_status", "fax_id": 7, "mintfax_fax_id": "mf-7", "n": 3},
    )
    line = captured.getvalue().strip()
    assert "WARNING faxout.poller [action=poll.unknown_status fax_id=7 mintfax_fax_id=mf-7]" in line
    assert line.endswith("fax 7: unknown status n=3")


def test_configuring_again_replaces_the_handler_and_sets_levels(captured: io.StringIO) -> None:
    configure_logging("text", role="cli", stream=io.StringIO())
    configure_logging("json", "WARNING", role="relay", root_level="ERROR", stream=captured)
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("faxout.relay").info("dropped: below FAXOUT_LOG_LEVEL")
    logging.getLogger("faxout.relay").warning("kept")
    logging.getLogger("celery.worker").warning("dropped: below the root's level")
    logging.getLogger("httpx").info("dropped: a request line")
    assert [line["message"] for line in json_lines(captured)] == ["kept"]


def test_an_odd_extra_value_never_breaks_the_line(captured: io.StringIO) -> None:
    configure_logging("json", role="worker", stream=captured)

    class Opaque:
        def __str__(self) -> str:
            return f"opaque {NUMBER}"

    logging.getLogger("faxout.x").info("odd", extra={"thing": Opaque(), "raw": b"\x00"})
    [line] = json_lines(captured)
    assert line["thing"] == "opaque +1212*****23"


def test_log_settings_are_validated_on_their_own() -> None:
    assert log_settings_from_env({"FAXOUT_LOG_FORMAT": "JSON", "FAXOUT_LOG_LEVEL": "debug"}) == (
        "json",
        "DEBUG",
    )
    assert log_settings_from_env({"FAXOUT_RATE_LIMIT_PER_MINUTE": "nonsense"}) == ("text", "INFO")
    with pytest.raises(ConfigurationError, match="FAXOUT_LOG_FORMAT"):
        log_settings_from_env({"FAXOUT_LOG_FORMAT": "xml"})
