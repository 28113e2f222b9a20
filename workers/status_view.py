"""`faxout status`: one fleet snapshot (`outbox.fleet_status`) as a terminal view.

`render(snapshot)` builds the view as rich renderables, printed once (`--once`, or when the
output is not a terminal) or refreshed in place under `rich.live.Live` every few seconds. The
core install shows the Postgres half and says what it cannot show without the `[worker]`
extra (the Redis half needs redis-py). Numbers arrive masked from the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from outbox.fleet_status import FleetSnapshot
from outbox.models import FaxStatus


def render(snap: FleetSnapshot, *, alive_within: float, error: str | None = None) -> Group:
    """The view of `snap`; `error` (a failed refresh) is shown above it."""
    parts: list[RenderableType] = []
    if error:
        parts.append(_line(f"refresh failed: {error} (showing {snap.taken_at:%H:%M:%S})", "red"))
    table = Table(title="fax_outbox")
    table.add_column("status")
    table.add_column("count", justify="right")
    for st in FaxStatus:
        table.add_row(st.value, str(snap.counts.get(st.value, 0)))
    table.add_row("[bold]total[/bold]", f"[bold]{snap.total}[/bold]")
    parts.append(table)
    parts.append(_line(f"snapshot at {snap.taken_at:%Y-%m-%d %H:%M:%S %Z} (database clock)"))
    parts.append(_line(f"in flight: {snap.in_flight}; {_oldest(snap)}"))
    if snap.pauses:
        for p in snap.pauses:
            parts.append(
                _line(
                    f"fleet PAUSED: {p.reason} since {p.started_at:%Y-%m-%d %H:%M:%S} "
                    f"(episode {p.id}); `faxout resume` ends it",
                    "red",
                )
            )
    else:
        parts.append(_line("fleet: sending"))
    parts.append(_line(_balance(snap)))
    parts.append(_line(_redis(snap)))
    parts.append(_line(_counters(snap)))
    parts.append(_line(_latencies(snap)))
    parts.extend(_processes(snap, alive_within))
    if snap.rows_to_look_at:
        parts.append(_rows_table(snap.rows_to_look_at))
    for a in snap.alerts:
        parts.append(
            _line(
                f"alert {a['created_at']:%Y-%m-%d %H:%M:%S} [{a['severity']}] {a['kind']}: "
                f"{a['message']}"
            )
        )
    return Group(*parts)


def _line(text: str, style: str = "") -> Text:
    # Text, not markup: a reference or an error message may hold brackets.
    return Text(text, style=style)


def _oldest(snap: FleetSnapshot) -> str:
    oldest = snap.oldest_pending
    if oldest is None:
        return "oldest pending: none"
    return (
        f"oldest pending: fax {oldest['id']} (reference {oldest['reference']}, to "
        f"{oldest['to']}), waiting {_age(float(oldest['age_seconds']))}"
    )


def _balance(snap: FleetSnapshot) -> str:
    b = snap.balance
    if b is None:
        return "balance: not read yet (the balance watch runs in beat)"
    age = (snap.taken_at - b.observed_at).total_seconds()
    return f"balance: {b.available} available, {b.held} held (cents; read {_age(age)} ago)"


def _redis(snap: FleetSnapshot) -> str:
    if snap.redis is None:
        return f"redis: {snap.redis_note or 'unknown'}"
    t = snap.redis.throttle
    queues = ", ".join(f"{name} {depth}" for name, depth in snap.redis.queues.items())
    mirror = "; pause mirror says PAUSED" if snap.redis.pause_mirror else ""
    return (
        f"throttle: {t['limit_per_minute']:.0f}/min, {t['tokens']:.0f} token(s) free, "
        f"429 cooldown {t['cooldown_remaining']:.1f}s; broker queue: {queues} message(s)"
        f"{mirror}"
    )


def _counters(snap: FleetSnapshot) -> str:
    a = snap.attempts
    if snap.redis is None:
        duplicate = refused = "unknown"
    else:
        duplicate = str(snap.redis.webhook_duplicates)
        refused = str(sum(snap.redis.webhook_refused.values()))
    return (
        f"since the start: submitted {a.submitted}, delivered {snap.finals['delivered']}, "
        f"failed {snap.finals['failed']}, rejected {snap.finals['rejected']}, "
        f"retries {a.retries}, 429s {a.rate_limited}, 402s {a.insufficient_balance}; "
        f"webhook events accepted {sum(snap.events.values())}, duplicate {duplicate}, "
        f"refused {refused}"
    )


def _latencies(snap: FleetSnapshot) -> str:
    parts = []
    for name, hist in (
        ("insert to submit", snap.insert_to_submit),
        ("submit to final", snap.submit_to_final),
    ):
        if hist.count == 0:
            parts.append(f"{name}: no fax yet")
            continue
        parts.append(
            f"{name}: median {_bucket(hist.buckets, hist.count, 0.5)}, "
            f"p95 {_bucket(hist.buckets, hist.count, 0.95)} ({hist.count} faxes)"
        )
    return "last hour, " + "; ".join(parts)


def _processes(snap: FleetSnapshot, alive_within: float) -> list[Text]:
    if snap.heartbeats is None:
        return []
    from outbox.liveness import WATCHED_ROLES, Heartbeat, describe

    beats = [Heartbeat(**beat) for beat in snap.heartbeats]
    lines = [_line(f"process {line}") for line in describe(beats, alive_within=alive_within)]
    for role in WATCHED_ROLES:
        if not any(
            b.role == role and not b.stopped and b.age_seconds <= alive_within for b in beats
        ):
            lines.append(
                _line(f"no {role} alive (heartbeats younger than {alive_within:g}s)", "red")
            )
    return lines


def _rows_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="rows to look at (newest first)")
    # What identifies a row stays whole; the error text wraps.
    for column in ("id", "status", "reason"):
        table.add_column(column, no_wrap=True)
    table.add_column("error", ratio=3)
    table.add_column("reference", overflow="fold", ratio=1)
    table.add_column("to", no_wrap=True)
    for r in rows[:15]:
        error = r.get("last_error") or {}
        detail = " ".join(
            str(part)
            for part in (
                r.get("error_code") or error.get("error"),
                r.get("error_message") or error.get("message"),
                f"(request {error['request_id']})" if error.get("request_id") else None,
            )
            if part
        )
        table.add_row(
            Text(str(r["id"])),
            Text(str(r["status"])),
            Text(str(r.get("status_reason") or "")),
            Text(detail),
            Text(str(r["reference"])),
            Text(str(r["to"])),
        )
    return table


def _bucket(buckets: Sequence[tuple[float, int]], count: int, q: float) -> str:
    for bound, n in buckets:
        if n >= q * count:
            return f"<= {_age(bound)}"
    return f"> {_age(buckets[-1][0])}"


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600}h"
