"""The fleet's state in one snapshot: what `/metrics`, `faxout status` and the dashboard show.

Every figure is read from Postgres and Redis when the snapshot is taken, never kept in the
memory of the process that shows it, so it is the whole fleet's and survives restarts: rows by
status, the oldest pending fax, pauses, the balance the balance watch last read, counters
derived from the durable tables (attempts by outcome and HTTP status, webhook events by
outcome, final rows by status), the latency histograms of the last hour's faxes from the
rows' timestamps, the latest alerts, the rows a human should look at. Redis adds the
throttle, the pause mirror, the broker queues and the webhook events that leave no row:
duplicates and refusals, counted there by every receiver (`WebhookCounters`). Each statement
walks an index (migration 0013).

The two halves fail apart: with Redis down (or the `[worker]` extra missing) the Postgres
half is shown and the Redis half is `None` with the reason, shown as unknown. Phone numbers
are masked (`outbox.redaction`) in everything a snapshot holds; it holds no secret.

Importing this module imports no Redis client: `redis_figures` takes one built by the caller,
so the core install's `faxout status` can show the Postgres half.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.errors import FleetStateUnavailable
from outbox.models import TERMINAL_STATUSES, FaxStatus, Outcome
from outbox.redaction import mask_number
from outbox.repository import BalanceSnapshot, LatencyCounts, Pause

if TYPE_CHECKING:
    import redis

# Upper bounds (seconds) of both latency histograms: a fax is usually submitted within
# seconds and final within minutes; the long tail (retries, a pause, carrier retries) to a day.
LATENCY_BUCKETS: tuple[float, ...] = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14_400.0, 86_400.0,
)  # fmt: skip

# The histograms describe the last hour's faxes (submitted, resp. finished, in it): a window,
# so a scrape reads an index range whatever the table's size (bench/metrics_scrape.py).
LATENCY_WINDOW_SECONDS = 3600.0

# The Redis hash every webhook receiver counts into (fields `duplicate`, `refused_<status>`).
WEBHOOK_COUNTERS_KEY = "faxout:metrics:webhook_events"

_ACCEPTED_OUTCOMES = (Outcome.SUBMITTED.value, Outcome.REPLAYED.value)
# A `+` and 7 to 15 digits, possibly spaced or dashed: a phone number inside free text (an
# error message, an alert), masked before it is shown.
_NUMBER_IN_TEXT = re.compile(r"\+[1-9][0-9 ().-]{6,20}[0-9]")


def mask_numbers_in(text: str | None) -> str | None:
    """`text` with every phone number in it masked (`outbox.redaction.mask_number`)."""
    if text is None:
        return None
    return _NUMBER_IN_TEXT.sub(lambda m: mask_number(m.group(0)), text)


@dataclass(frozen=True, slots=True)
class AttemptCounters:
    """Counters over `fax_attempts`, the fleet's whole history of sends."""

    submitted: int  # accepted by mintfax (a 201, or the replay of one)
    retries: int  # attempts that scheduled another one
    rate_limited: int  # answered 429
    insufficient_balance: int  # answered 402
    by_outcome: dict[str, int]


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """What only Redis knows: the throttle, the pause mirror, queues, webhook counters."""

    throttle: dict[str, float]  # FleetThrottle.snapshot()
    pause_mirror: bool  # the mirror the workers read says paused
    queues: dict[str, int]  # broker queue depth (messages) by queue name
    webhook_duplicates: int
    webhook_refused: dict[str, int]  # by HTTP status ("401", "413", "400")


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet at one moment (`taken_at`, the database's clock)."""

    taken_at: datetime
    counts: dict[str, int]
    oldest_pending: dict[str, Any] | None
    pauses: list[Pause]
    balance: BalanceSnapshot | None
    attempts: AttemptCounters
    events: dict[str, int]  # recorded webhook events by outcome (deleted ones included)
    # Rows that reached each final status, ever: those still here and those retention deleted.
    finals: dict[str, int]
    insert_to_submit: LatencyCounts
    submit_to_final: LatencyCounts
    alerts: list[dict[str, Any]]
    rows_to_look_at: list[dict[str, Any]]
    heartbeats: list[dict[str, Any]] | None  # None: liveness is not recorded
    redis: RedisFigures | None  # None: unknown, `redis_note` says why
    redis_note: str | None = None
    # Per minute of the last hour, when asked for (the dashboard): {series: [counts]}.
    series_start: datetime | None = None
    series: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows in the outbox."""
        return sum(self.counts.values())

    @property
    def in_flight(self) -> int:
        """Rows a worker holds right now (`sending`)."""
        return self.counts[FaxStatus.SENDING.value]

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON values (times as ISO 8601), for `faxout status --json`."""
        shown: dict[str, Any] = _jsonable(asdict(self))
        return shown


class WebhookCounters:
    """Webhook events that leave no row, counted in Redis by every receiver: duplicates (the
    first delivery is the row) and refusals (never stored: an unauthenticated sender must not
    be able to write to Postgres). Reset only by a Redis flush, which Prometheus takes for a
    counter reset."""

    def __init__(self, client: redis.Redis, key: str = WEBHOOK_COUNTERS_KEY) -> None:
        self._redis = client
        self.key = key

    def count(self, what: str) -> None:
        """Add one to `what` (`duplicate`, `refused_401`, ...); raises FleetStateUnavailable."""
        import redis as redis_lib

        try:
            self._redis.hincrby(self.key, what, 1)
        except redis_lib.RedisError as exc:
            raise FleetStateUnavailable(
                f"Redis unavailable for the webhook counters: {exc}"
            ) from exc

    def read(self) -> dict[str, int]:
        """Every counter by name."""
        raw: Mapping[bytes | str, bytes | str] = self._redis.hgetall(self.key)
        return {_text(k): int(v) for k, v in raw.items()}


def redis_figures(
    client: redis.Redis, *, limit_per_minute: int, queues: Sequence[str]
) -> RedisFigures:
    """Read the Redis half of a snapshot; raises FleetStateUnavailable when Redis fails."""
    import redis as redis_lib

    from outbox.pause import PauseMirror
    from outbox.throttle import FleetThrottle

    try:
        throttle = FleetThrottle(client, limit_per_minute).snapshot()
        mirror = PauseMirror(client).is_paused()
        # The broker's queues are Redis lists named after the queue (kombu's layout).
        depths = {queue: int(client.llen(queue)) for queue in queues}
        counters = WebhookCounters(client).read()
    except redis_lib.RedisError as exc:
        raise FleetStateUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc
    return RedisFigures(
        throttle=throttle,
        pause_mirror=mirror,
        queues=depths,
        webhook_duplicates=counters.get("duplicate", 0),
        webhook_refused={
            name.removeprefix("refused_"): n
            for name, n in sorted(counters.items())
            if name.startswith("refused_")
        },
    )


def take_snapshot(
    engine: Engine,
    *,
    redis: Callable[[], RedisFigures] | None,
    redis_note: str | None = None,
    now: datetime | None = None,
    alerts: int = 10,
    rows: int = 20,
    series_minutes: int = 0,
) -> FleetSnapshot:
    """The fleet's state now (`now` for tests; production passes None: the database's clock).

    `redis` reads the Redis half (None: not available, `redis_note` says why); a failure of it
    leaves that half unknown and the Postgres half whole. `alerts` and `rows` bound the latest
    alerts and the rows to look at (of each status); `series_minutes` > 0 adds the per-minute
    counts of that many minutes.
    """
    with engine.connect() as conn, conn.begin():
        # One snapshot of the database for every figure: they add up with each other.
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        taken_at = now or repository.database_now(conn)
        counts = {s.value: n for s, n in repository.count_by_status(conn).items()}
        oldest = repository.oldest_pending(conn, now=now)
        pauses = repository.open_pauses(conn)
        balance = repository.latest_balance_snapshot(conn)
        # Counters never go down: what retention deleted is added back (`metric_tallies`).
        deleted = repository.deleted_tallies(conn)
        attempts = _attempt_counters(_with_deleted(repository.attempt_counts(conn), deleted))
        events = repository.event_counts(conn)
        for (kind, label), n in deleted.items():
            if kind == "events_deleted":
                events[label] = events.get(label, 0) + n
        finals = {
            s.value: counts[s.value] + deleted.get(("faxes_deleted", s.value), 0)
            for s in FaxStatus
            if s in TERMINAL_STATUSES
        }
        to_submit, to_final = repository.latency_counts(
            conn, LATENCY_BUCKETS, now=now, window=LATENCY_WINDOW_SECONDS
        )
        latest_alerts = [_alert_view(a) for a in repository.recent_alerts(conn, alerts)]
        look_at = [_row_view(r) for r in repository.rows_to_look_at(conn, limit=rows)]
        heartbeats = _heartbeats(conn, now)
        series_start, series = (
            _series(conn, now, series_minutes) if series_minutes > 0 else (None, {})
        )
    figures: RedisFigures | None = None
    if redis is not None:
        try:
            figures = redis()
        except FleetStateUnavailable as exc:
            redis_note = f"unavailable ({type(exc).__name__}): {exc}"
    return FleetSnapshot(
        taken_at=taken_at,
        counts=counts,
        oldest_pending=None if oldest is None else _row_view(oldest),
        pauses=pauses,
        balance=balance,
        attempts=attempts,
        events=events,
        finals=finals,
        insert_to_submit=to_submit,
        submit_to_final=to_final,
        alerts=latest_alerts,
        rows_to_look_at=look_at,
        heartbeats=heartbeats,
        redis=figures,
        redis_note=redis_note if figures is None else None,
        series_start=series_start,
        series=series,
    )


def _with_deleted(
    counts: dict[tuple[str, int | None], int], deleted: Mapping[tuple[str, str], int]
) -> dict[tuple[str, int | None], int]:
    for (kind, label), n in deleted.items():
        if kind != "attempts_deleted":
            continue
        outcome, _, status = label.partition(":")
        key = (outcome, int(status) if status else None)
        counts[key] = counts.get(key, 0) + n
    return counts


def _attempt_counters(counts: Mapping[tuple[str, int | None], int]) -> AttemptCounters:
    by_outcome: dict[str, int] = {}
    for (outcome, _status), n in counts.items():
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    return AttemptCounters(
        submitted=sum(by_outcome.get(o, 0) for o in _ACCEPTED_OUTCOMES),
        retries=by_outcome.get(Outcome.RETRY_SCHEDULED.value, 0),
        rate_limited=sum(n for (_o, status), n in counts.items() if status == 429),
        insufficient_balance=sum(n for (_o, status), n in counts.items() if status == 402),
        by_outcome=by_outcome,
    )


def _series(
    conn: Connection, now: datetime | None, minutes: int
) -> tuple[datetime, dict[str, list[int]]]:
    start, found = repository.per_minute(conn, now=now, minutes=minutes)
    names = ("enqueued", "submitted", "delivered", "failed", "rejected", "cancelled")
    minute_starts = [start + timedelta(minutes=i) for i in range(minutes)]
    return start, {name: [found.get(name, {}).get(m, 0) for m in minute_starts] for name in names}


def _heartbeats(conn: Connection, now: datetime | None) -> list[dict[str, Any]] | None:
    try:
        from outbox import liveness
    except ImportError:  # a checkout without liveness: not recorded, not zero
        return None
    return [asdict(beat) for beat in liveness.heartbeats(conn, now=now)]


def _row_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as shown: the number masked, free text with numbers masked, no document."""
    view = {k: v for k, v in row.items() if k not in ("to_number", "last_error")}
    view["to"] = mask_number(row["to_number"])
    for name in ("status_reason", "error_message", "reference"):
        if name in view:
            view[name] = mask_numbers_in(view[name])
    last_error = row.get("last_error")
    if isinstance(last_error, Mapping):
        # What an operator acts on: mintfax's code, message, advice and request id.
        view["last_error"] = {
            key: mask_numbers_in(str(last_error[key]))
            for key in ("error", "message", "action", "request_id", "status_code")
            if last_error.get(key) is not None
        }
    return view


def _alert_view(alert: Mapping[str, Any]) -> dict[str, Any]:
    # The message and kind, not the detail: a detail may carry a whole error envelope.
    return {
        "id": alert["id"],
        "kind": alert["kind"],
        "severity": alert["severity"],
        "message": mask_numbers_in(alert["message"]),
        "fax_id": alert["fax_id"],
        "created_at": alert["created_at"],
        "notified_at": alert["notified_at"],
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
