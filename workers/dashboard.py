"""The admin server's dashboard page: one fleet snapshot as a self-contained HTML document.

No script, no stylesheet or font from elsewhere (the admin network may have no internet, and
the page's Content-Security-Policy forbids both): the chart of the last hour is inline SVG
drawn here, and the page refreshes itself every `REFRESH_SECONDS`. Every value is escaped;
phone numbers arrive masked from the snapshot, which holds no secret. Elements carry ids
(`count-pending`, `counter-submitted`, `oldest-pending`, `row-<id>`, ...) so that a test (or
a scraper) can read the figures back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any

from outbox.fleet_status import FleetSnapshot
from outbox.models import FaxStatus

REFRESH_SECONDS = 15
# Series drawn on the chart, and their colours.
CHART_SERIES: tuple[tuple[str, str], ...] = (
    ("enqueued", "#6b7280"),
    ("submitted", "#2563eb"),
    ("delivered", "#16a34a"),
    ("failed", "#dc2626"),
    ("rejected", "#d97706"),
)
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP = 760, 220, 44, 26, 12

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
.muted{color:#666} .bad{color:#b91c1c;font-weight:600} .ok{color:#15803d;font-weight:600}
table{border-collapse:collapse;background:#fff;margin-bottom:6px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
svg{background:#fff;border:1px solid #ddd}
"""


def render_dashboard(snap: FleetSnapshot) -> str:
    """The page for `snap` (an HTML document)."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<title>fax-outbox</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>fax-outbox</h1>",
        f'<div class="muted">snapshot at <span id="taken-at">{_time(snap.taken_at)}</span>'
        f" (database clock); refreshes every {REFRESH_SECONDS} s; read-only</div>",
        _fleet_line(snap),
        '<div class="grid">',
        _counts_table(snap),
        _counters_table(snap),
        _state_table(snap),
        "</div>",
        _chart_section(snap),
        _oldest_section(snap),
        _pauses_section(snap),
        _alerts_section(snap),
        _rows_section(snap),
        _processes_section(snap),
        "</body></html>",
    ]
    return "\n".join(parts)


def _fleet_line(snap: FleetSnapshot) -> str:
    if snap.pauses:
        reasons = ", ".join(escape(p.reason) for p in snap.pauses)
        state = f'<span class="bad" id="fleet-state">PAUSED</span> ({reasons})'
    else:
        state = '<span class="ok" id="fleet-state">sending</span>'
    redis = (
        '<span class="ok" id="redis-state">up</span>'
        if snap.redis is not None
        else f'<span class="bad" id="redis-state">unknown</span> ({escape(snap.redis_note or "")})'
    )
    return f"<p>fleet: {state} &middot; redis: {redis}</p>"


def _counts_table(snap: FleetSnapshot) -> str:
    rows = [
        f'<tr><td>{s.value}</td><td class="n" id="count-{s.value}">'
        f"{snap.counts.get(s.value, 0)}</td></tr>"
        for s in FaxStatus
    ]
    rows.append(f'<tr><th>total</th><th class="n" id="count-total">{snap.total}</th></tr>')
    return _table("faxes by status", ["status", "rows"], rows)


def _counters_table(snap: FleetSnapshot) -> str:
    a = snap.attempts
    unknown = "unknown"
    redis = snap.redis
    figures: list[tuple[str, str, object]] = [
        ("submitted", "submitted (accepted by mintfax)", a.submitted),
        ("delivered", "delivered", snap.finals["delivered"]),
        ("failed", "failed", snap.finals["failed"]),
        ("rejected", "rejected", snap.finals["rejected"]),
        ("retries", "retries", a.retries),
        ("429", "mintfax 429 (rate limited)", a.rate_limited),
        ("402", "mintfax 402 (balance)", a.insufficient_balance),
        ("events-accepted", "webhook events accepted", sum(snap.events.values())),
        (
            "events-duplicate",
            "webhook events duplicate",
            unknown if redis is None else redis.webhook_duplicates,
        ),
        (
            "events-refused",
            "webhook events refused",
            unknown if redis is None else sum(redis.webhook_refused.values()),
        ),
    ]
    rows = [
        f'<tr><td>{escape(label)}</td><td class="n" id="counter-{key}">{escape(str(value))}</td>'
        "</tr>"
        for key, label, value in figures
    ]
    for name, hist in (("insert to submit", snap.insert_to_submit),
                       ("submit to final", snap.submit_to_final)):  # fmt: skip
        rows.append(
            f"<tr><td>last hour, {name}: median, p95 ({hist.count})</td><td class='n'>"
            f"{_quantile(hist.buckets, hist.count, 0.5)}, "
            f"{_quantile(hist.buckets, hist.count, 0.95)}</td></tr>"
        )
    return _table("since the start", ["counter", "value"], rows)


def _state_table(snap: FleetSnapshot) -> str:
    rows = [
        f'<tr><td>in flight (sending)</td><td class="n" id="in-flight">{snap.in_flight}</td></tr>'
    ]
    if snap.balance is not None:
        b = snap.balance
        rows.append(
            f'<tr><td>balance available</td><td class="n" id="balance-available">{b.available}'
            f'</td></tr><tr><td>balance held</td><td class="n" id="balance-held">{b.held}</td>'
            f"</tr><tr><td>balance read at</td><td>{_time(b.observed_at)}</td></tr>"
        )
    else:
        rows.append('<tr><td>balance</td><td id="balance-available">not read yet</td></tr>')
    if snap.redis is not None:
        t = snap.redis.throttle
        rows.append(
            f'<tr><td>throttle</td><td class="n" id="throttle">{t["limit_per_minute"]:.0f}/min, '
            f"{t['tokens']:.0f} token(s) free</td></tr>"
            f'<tr><td>429 cooldown</td><td class="n" id="cooldown">'
            f"{t['cooldown_remaining']:.1f} s</td></tr>"
        )
        for queue, depth in snap.redis.queues.items():
            rows.append(
                f"<tr><td>queue {escape(queue)}</td>"
                f'<td class="n" id="queue-{escape(queue)}">{depth}</td></tr>'
            )
    else:
        rows.append('<tr><td>throttle, queues</td><td id="throttle">unknown</td></tr>')
    return _table("now", ["figure", "value"], rows)


def _chart_section(snap: FleetSnapshot) -> str:
    if not snap.series:
        return ""
    minutes = len(next(iter(snap.series.values())))
    peak = max([1, *(max(snap.series.get(name, [0])) for name, _ in CHART_SERIES)])
    plot_w, plot_h = _WIDTH - _LEFT - 10, _HEIGHT - _BOTTOM - _TOP

    def x(i: int) -> float:
        return _LEFT + plot_w * i / max(1, minutes - 1)

    def y(value: int) -> float:
        return _TOP + plot_h * (1 - value / peak)

    shapes = [
        f'<svg id="chart-last-hour" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="faxes per minute over the last hour" xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        level = round(peak * fraction)
        shapes.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - 10}" y1="{y(level):.1f}" y2="{y(level):.1f}" '
            f'stroke="#eee"/><text x="{_LEFT - 6}" y="{y(level) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{level}</text>'
        )
    for i, label in ((0, f"-{minutes} min"), (minutes // 2, f"-{minutes // 2} min"),
                     (minutes - 1, "now")):  # fmt: skip
        shapes.append(
            f'<text x="{x(i):.1f}" y="{_HEIGHT - 8}" font-size="11" text-anchor="middle">'
            f"{label}</text>"
        )
    for name, colour in CHART_SERIES:
        values = snap.series.get(name, [0] * minutes)
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        shapes.append(
            f'<polyline data-series="{name}" data-total="{sum(values)}" fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{points}"/>'
        )
    shapes.append("</svg>")
    legend = " &middot; ".join(
        f'<span style="color:{colour}">&#9632;</span> {name}: '
        f'<b id="hour-{name}">{sum(snap.series.get(name, []))}</b> '
        f"({sum(snap.series.get(name, [])) / minutes:.1f}/min)"
        for name, colour in CHART_SERIES
    )
    return f"<h2>the last hour, per minute</h2>{''.join(shapes)}<div>{legend}</div>"


def _oldest_section(snap: FleetSnapshot) -> str:
    oldest = snap.oldest_pending
    if oldest is None:
        return '<h2>oldest pending fax</h2><p id="oldest-pending">none pending</p>'
    return (
        "<h2>oldest pending fax</h2>"
        f'<p id="oldest-pending" data-id="{oldest["id"]}" '
        f'data-age-seconds="{float(oldest["age_seconds"]):.0f}">'
        f"fax {oldest['id']} to {escape(oldest['to'])} (reference "
        f"{escape(str(oldest['reference']))}), waiting {_age(float(oldest['age_seconds']))}, "
        f"{oldest['attempts']} attempt(s), next at {_time(oldest['next_attempt_at'])}"
        f"{_reason(oldest.get('status_reason'))}</p>"
    )


def _pauses_section(snap: FleetSnapshot) -> str:
    if not snap.pauses:
        return '<h2>pauses</h2><p id="pauses">none: the fleet is sending</p>'
    rows = [
        f'<tr id="pause-{escape(p.reason)}"><td>{escape(p.reason)}</td><td>{_time(p.started_at)}'
        f"</td><td>{escape(p.started_by or '')}</td><td>{p.id}</td></tr>"
        for p in snap.pauses
    ]
    return "<h2>pauses</h2>" + _table(
        "", ["reason", "since", "by", "episode"], rows, table_id="pauses"
    )


def _alerts_section(snap: FleetSnapshot) -> str:
    rows = [
        f'<tr class="alert" id="alert-{a["id"]}"><td>{_time(a["created_at"])}</td>'
        f"<td>{escape(a['severity'])}</td><td>{escape(a['kind'])}</td>"
        f"<td>{escape(a['message'] or '')}</td></tr>"
        for a in snap.alerts
    ]
    if not rows:
        return '<h2>latest alerts</h2><p id="alerts">none</p>'
    return "<h2>latest alerts</h2>" + _table(
        "", ["raised", "severity", "kind", "message"], rows, table_id="alerts"
    )


def _rows_section(snap: FleetSnapshot) -> str:
    rows = []
    for r in snap.rows_to_look_at:
        error = r.get("last_error") or {}
        detail = " ".join(
            part
            for part in (
                r.get("error_code") or error.get("error") or "",
                r.get("error_message") or error.get("message") or "",
                f"(action: {error['action']})" if error.get("action") else "",
                f"[request {error['request_id']}]" if error.get("request_id") else "",
            )
            if part
        )
        rows.append(
            f'<tr id="row-{r["id"]}"><td class="n">{r["id"]}</td>'
            f'<td class="status">{escape(r["status"])}</td>'
            f"<td>{escape(r.get('status_reason') or '')}</td><td>{escape(detail)}</td>"
            f"<td>{escape(str(r['reference']))}</td><td>{escape(r['to'])}</td>"
            f"<td>{_time(r['updated_at'])}</td></tr>"
        )
    if not rows:
        return '<h2>rows to look at</h2><p id="rows-to-look-at">none</p>'
    return "<h2>rows to look at (needs_review, failed, rejected; newest first)</h2>" + _table(
        "",
        ["id", "status", "reason", "error", "reference", "to", "updated"],
        rows,
        table_id="rows-to-look-at",
    )


def _processes_section(snap: FleetSnapshot) -> str:
    if snap.heartbeats is None:
        return ""
    rows = [
        f"<tr><td>{escape(str(b['role']))}</td><td>{escape(str(b['process']))}</td>"
        f"<td>{escape(str(b['hostname']))}</td><td class='n'>{b['pid']}</td>"
        f"<td class='n'>{_age(float(b['age_seconds']))}</td>"
        f"<td>{'stopped' if b.get('stopped_at') else ''}</td></tr>"
        for b in snap.heartbeats
    ]
    if not rows:
        return '<h2>processes</h2><p id="processes">no heartbeat recorded</p>'
    return "<h2>processes (heartbeats)</h2>" + _table(
        "", ["role", "process", "host", "pid", "last seen", ""], rows, table_id="processes"
    )


def _table(
    title: str, headers: Sequence[str], rows: Iterable[str], *, table_id: str | None = None
) -> str:
    caption = f"<caption><b>{escape(title)}</b></caption>" if title else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}>{caption}<tr>{head}</tr>{''.join(rows)}</table>"


def _quantile(buckets: Sequence[tuple[float, int]], count: int, q: float) -> str:
    """The upper bound of the bucket holding the q-quantile (what a histogram can tell)."""
    if count == 0:
        return "-"
    for bound, n in buckets:
        if n >= q * count:
            return f"&le; {_age(bound)}"
    return f"&gt; {_age(buckets[-1][0])}"


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S %Z").strip())
    return "" if value is None else escape(str(value))


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86_400} d {seconds % 86_400 // 3600} h"


def _reason(reason: object) -> str:
    return f"; reason: {escape(str(reason))}" if reason else ""
