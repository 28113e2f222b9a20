"""A fleet's worth of rows in every state, written straight into a real database, with the
figures a snapshot of it must show (tests of `outbox.fleet_status`, `/metrics`, the dashboard
and `faxout status`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from outbox.models import fax_attempts, fax_events, fax_outbox

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
# The number of the failed row: it must never be shown whole.
SECRET_NUMBER = "+12125557391"


@dataclass
class Seeded:
    """What was written, as a snapshot must count it."""

    now: datetime
    counts: dict[str, int] = field(default_factory=dict)
    ids: dict[str, list[int]] = field(default_factory=dict)
    oldest_pending_id: int = 0
    oldest_pending_age: float = 0.0
    submitted_attempts: int = 0
    retries: int = 0
    http_429: int = 0
    http_402: int = 0
    events: dict[str, int] = field(default_factory=dict)
    # (seconds, how many rows) of each latency
    to_submit: list[float] = field(default_factory=list)
    to_final: list[float] = field(default_factory=list)


def seed(engine: Engine, now: datetime) -> Seeded:
    """Rows in every status, attempts, events, a pause, a balance reading and alerts, timed
    against `now` (the moment the test takes its snapshot at)."""
    out = Seeded(now=now)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        n = 0

        def row(status: str, *, created_ago: float, **values: Any) -> int:
            nonlocal n
            n += 1
            created = now - timedelta(seconds=created_ago)
            row_id: int = conn.execute(
                fax_outbox.insert()
                .values(
                    to_number=values.pop("to_number", f"+1500555{n:04d}"),
                    document=PDF,
                    filename="a.pdf",
                    reference=f"seed-{n}",
                    status=status,
                    created_at=created,
                    updated_at=created,
                    **values,
                )
                .returning(fax_outbox.c.id)
            ).scalar_one()
            out.counts[status] = out.counts.get(status, 0) + 1
            out.ids.setdefault(status, []).append(row_id)
            return row_id

        def accepted(
            created_ago: float, to_submit: float, *, recent: bool = True, **values: Any
        ) -> dict[str, Any]:
            if recent:  # submitted within the last hour: in the latency histograms
                out.to_submit.append(to_submit)
            fax_id = f"fax_{uuid.uuid4().hex[:16]}"
            return {
                "mintfax_fax_id": fax_id,
                "attempts": 1,
                "first_attempt_at": now - timedelta(seconds=created_ago - to_submit),
                "submitted_at": now - timedelta(seconds=created_ago - to_submit),
                **values,
            }

        out.oldest_pending_id = row("pending", created_ago=900)
        out.oldest_pending_age = 900.0
        row("pending", created_ago=300)
        row("pending", created_ago=20)
        row(
            "sending",
            created_ago=5,
            lease_owner="host:1",
            lease_token=uuid.uuid4(),
            lease_expires_at=now + timedelta(seconds=60),
        )
        for ago in (100.0, 50.0):
            row("submitted", created_ago=ago, **accepted(ago, 3.0))
        for ago, submit, final in ((3000.0, 2.0, 40.0), (1800.0, 10.0, 200.0), (600.0, 0.5, 20.0)):
            out.to_final.append(final)
            row(
                "delivered",
                created_ago=ago,
                **accepted(ago, submit, completed_at=now - timedelta(seconds=ago - submit - final)),
                pages=1,
            )
        # Two hours ago: in every count, outside the latency histograms and the last hour.
        row(
            "delivered",
            created_ago=7300,
            **accepted(7300.0, 5.0, recent=False, completed_at=now - timedelta(seconds=7235)),
            pages=1,
        )
        # mintfax's clock behind ours: completed "before" it was submitted; counts as zero.
        out.to_final.append(0.0)
        row(
            "delivered",
            created_ago=400,
            **accepted(400.0, 1.0, completed_at=now - timedelta(seconds=500)),
            pages=2,
        )
        out.to_final.append(90.0)
        row(
            "failed",
            created_ago=700,
            to_number=SECRET_NUMBER,
            **accepted(
                700.0,
                4.0,
                completed_at=now - timedelta(seconds=700 - 4 - 90),
                error_code="busy",
                error_message=f"line busy at {SECRET_NUMBER} after 3 tries",
                status_reason="busy",
            ),
        )
        for k in range(2):
            row(
                "rejected",
                created_ago=200 + k,
                attempts=1,
                status_reason="invalid_number",
                completed_at=now - timedelta(seconds=100 + k),
                last_error={
                    "error": "invalid_number",
                    "message": "not a fax line",
                    "action": "check the number",
                    "request_id": f"req_{k}",
                    "status_code": 422,
                },
            )
        row("needs_review", created_ago=5000, attempts=5, status_reason="unknown_outcome")
        row("cancelled", created_ago=4000, completed_at=now - timedelta(seconds=3900))

        attempts: list[dict[str, Any]] = []

        def attempt(outcome: str, status: int | None) -> None:
            fax = out.ids["delivered"][len(attempts) % len(out.ids["delivered"])]
            attempts.append(
                {
                    "fax_id": fax,
                    "attempt": len(attempts) + 1,
                    "started_at": now - timedelta(seconds=60),
                    "finished_at": now - timedelta(seconds=59),
                    "duration_ms": 100,
                    "outcome": outcome,
                    "http_status": status,
                }
            )

        for _ in range(7):
            attempt("submitted", 201)
        attempt("replayed", 201)
        out.submitted_attempts = 8
        for status in (503, 500, None):
            attempt("retry_scheduled", status)
        out.retries = 3
        for _ in range(2):
            attempt("rate_limited", 429)
        out.http_429 = 2
        attempt("paused", 402)
        out.http_402 = 1
        attempt("rejected", 422)
        conn.execute(fax_attempts.insert(), attempts)

        for k, outcome in enumerate(("applied", "applied", "applied", "stale", "pending")):
            conn.execute(
                fax_events.insert().values(
                    event_id=f"evt_seed_{k}",
                    event_type="fax.delivered",
                    mintfax_fax_id=f"fax_unknown_{k}",
                    occurred_at=now - timedelta(seconds=30),
                    payload={},
                    outcome=outcome,
                )
            )
            out.events[outcome] = out.events.get(outcome, 0) + 1

        conn.execute(
            text(
                "INSERT INTO fleet_pauses (reason, detail, started_at, started_by) "
                "VALUES ('operator', CAST(:detail AS jsonb), :at, 'operator:test')"
            ),
            {"detail": json.dumps({"note": "maintenance"}), "at": now - timedelta(seconds=120)},
        )
        conn.execute(
            text(
                "INSERT INTO balance_snapshots (observed_at, available, held) "
                "VALUES (:at, 4321, 250)"
            ),
            {"at": now - timedelta(seconds=30)},
        )
        # Processes: a relay seen 3 s ago, a worker that stopped cleanly 10 s ago.
        for role, seen, stopped in (("relay", 3, None), ("worker", 10, 10)):
            conn.execute(
                text(
                    "INSERT INTO heartbeats (instance, role, process, hostname, pid, started_at, "
                    "seen_at, stopped_at) VALUES (:instance, :role, :process, 'host-a', 4242, "
                    ":started, :seen, :stopped)"
                ),
                {
                    "instance": uuid.uuid4(),
                    "role": role,
                    "process": f"{role}@host-a",
                    "started": now - timedelta(seconds=600),
                    "seen": now - timedelta(seconds=seen),
                    "stopped": None if stopped is None else now - timedelta(seconds=stopped),
                },
            )
        for k, (kind, message) in enumerate(
            (
                ("fleet_paused", "an operator paused the fleet"),
                ("fax_failed", f"fax {out.ids['failed'][0]} failed (busy) at {SECRET_NUMBER}"),
            )
        ):
            conn.execute(
                text(
                    "INSERT INTO alerts (kind, dedupe_key, severity, message, created_at, fax_id)"
                    " VALUES (:kind, :key, 'error', :message, :at, NULL)"
                ),
                {
                    "kind": kind,
                    "key": f"seed:{k}",
                    "message": message,
                    "at": now - timedelta(seconds=50 - k),
                },
            )
    for status in (
        "pending",
        "sending",
        "submitted",
        "delivered",
        "failed",
        "rejected",
        "cancelled",
        "needs_review",
    ):
        out.counts.setdefault(status, 0)
    return out


def cumulative(values: list[float], bounds: tuple[float, ...]) -> list[int]:
    """How many of `values` are at or below each bound."""
    return [sum(1 for v in values if v <= b) for b in bounds]
