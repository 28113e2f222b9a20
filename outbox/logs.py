"""Structured logs: one line per event, JSON or text, phone numbers and secrets masked.

Every process entry point calls `configure_logging` once (the relay, the webhook receiver and
the CLI through `faxout`, Celery workers and beat through Celery's `setup_logging` signal), so
the whole fleet writes the same lines to stderr. `FAXOUT_LOG_FORMAT=json` makes each line one
JSON object (for a log pipeline); the default is one readable text line. The fields:

    ts              ISO 8601 UTC, milliseconds            always
    level           DEBUG INFO WARNING ERROR CRITICAL     always
    logger          the logger's name (faxout.submit)     always
    action          what happened, dotted (submit.retry)  always (default: the logger's name)
    message         the human sentence                    always
    fax_id          the outbox row's id                   null when the line is about no fax
    mintfax_fax_id  mintfax's id of the fax               null until mintfax gave one
    role            relay, worker, beat, webhooks, cli    always
    pid, host       the process                           always
    exc             the traceback, masked                 when an exception is logged
    ...             any other `extra=` of the call        as given (masked when text)

Call sites say what happened with `extra={"action": ..., "fax_id": ..., "mintfax_fax_id": ...}`
and mask what they put in the message (`outbox.redaction`). The formatter masks again, as the
last line of defence, every phone number and recognisable secret in the message, the traceback
and any text field (`outbox.redaction.mask_text`), and masks any field named like a number
(`to`, `to_number`, `number`) whole: a number or a key never reaches a log line whole.

Standard library `logging` only: a formatter and one handler are all this needs.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from outbox.redaction import mask_number, mask_text

LogFormat = Literal["text", "json"]

# The loggers of fax-outbox itself, set to FAXOUT_LOG_LEVEL whatever the root's level is.
OWN_LOGGERS = ("faxout", "outbox", "workers")
# Noisy libraries: one line per HTTP request (unmasked URLs), kept to warnings.
QUIET_LOGGERS = ("httpx", "httpcore", "uvicorn.access")
# Fields that hold a phone number when present: masked whole, never shown.
NUMBER_FIELDS = frozenset({"to", "to_number", "number", "recipient"})

# What a LogRecord carries by itself; everything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_ID_FIELDS = ("fax_id", "mintfax_fax_id")

_role = "process"
_host = socket.gethostname()


def set_role(role: str) -> None:
    """Name the kind of process every line comes from (`beat` once Celery says it is beat)."""
    global _role
    _role = role


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of one record, masked: the JSON line's object, in order."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "action": str(getattr(record, "action", None) or _default_action(record.name)),
        "message": mask_text(record.getMessage()),
        "fax_id": getattr(record, "fax_id", None),
        "mintfax_fax_id": getattr(record, "mintfax_fax_id", None),
        "role": _role,
        "pid": record.process,
        "host": _host,
    }
    for name, value in vars(record).items():
        if name in _RECORD_ATTRS or name in fields or name.startswith("_"):
            continue
        fields[name] = _masked(name, value)
    for name in _ID_FIELDS:
        if isinstance(fields[name], str):
            fields[name] = mask_text(fields[name])
    if record.exc_info:
        fields["exc"] = mask_text(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        fields["exc"] = mask_text(record.exc_text)
    if record.stack_info:
        fields["stack"] = mask_text(record.stack_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`fields_of`); never raises on an odd `extra=` value."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields_of(record), default=_json_default, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, action and ids, the message, other fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record)
        head = f"{fields.pop('ts')} {fields.pop('level'):<7} {fields.pop('logger')}"
        message = fields.pop("message")
        exc = fields.pop("exc", None)
        stack = fields.pop("stack", None)
        for name in ("role", "pid", "host"):
            fields.pop(name)
        named = {k: fields.pop(k) for k in ("action", *_ID_FIELDS)}
        ids = " ".join(f"{k}={v}" for k, v in named.items() if v is not None)
        rest = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        line = f"{head} [{ids}] {message}" + (f" {rest}" if rest else "")
        for block in (exc, stack):
            if block:
                line += "\n" + block
        return line


def configure_logging(
    log_format: LogFormat,
    level: str | int = "INFO",
    *,
    role: str,
    root_level: str | int | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log line of this process to `stream` (stderr) in `log_format`.

    `level` is fax-outbox's own loggers' level (FAXOUT_LOG_LEVEL); `root_level` the rest's
    (a library's, Celery's own: Celery passes its `-l`), `level` when not given. Replaces the
    handlers of the root logger, so calling it again (a CLI command that runs a server) only
    changes the format, role or levels. Returns the handler (tests read what it writes).
    """
    set_role(role)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(root_level if root_level is not None else level))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(_level(level))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Python's warnings become log lines too (masked like the rest).
    logging.captureWarnings(True)
    return handler


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    return value if isinstance(value, int) else logging.INFO


_OWN_LOGGERS = ("faxout.", "outbox.", "workers.")


def _default_action(logger_name: str) -> str:
    # "faxout.poller" -> "poller", "outbox.fax_client" -> "fax_client": something to group by
    # until the call site names its event. Another library's logger keeps its whole name
    # ("uvicorn.error" is uvicorn's main logger, not an error).
    if logger_name.startswith(_OWN_LOGGERS):
        return logger_name.split(".", 1)[1]
    return logger_name


def _masked(name: str, value: Any) -> Any:
    if name in NUMBER_FIELDS:
        return mask_number(value) if isinstance(value, str) else "***"
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_masked("", item) for item in value]
    if isinstance(value, dict):
        return {str(k): _masked(str(k), v) for k, v in value.items()}
    return mask_text(str(value))


def _json_default(value: Any) -> str:
    return mask_text(str(value))


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
    return json.dumps(text) if (" " in text or not text) else text
