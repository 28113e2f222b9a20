"""The shipped Grafana dashboard and the README's alert rules ask only for metrics the admin
server exposes (a renamed metric would leave a panel or an alert silently empty)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from outbox.fleet_status import (
    LATENCY_BUCKETS,
    AttemptCounters,
    FleetSnapshot,
    RedisFigures,
)
from outbox.repository import BalanceSnapshot, LatencyCounts, Pause
from workers.admin import FleetCollector

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
_METRIC = re.compile(r"\bfaxout_[a-z0-9_]+")


def _full_snapshot() -> FleetSnapshot:
    """A snapshot with every part present, so every metric family is exposed."""
    latency = LatencyCounts(tuple((b, 1) for b in LATENCY_BUCKETS), 1, 2.0, 3600.0)
    return FleetSnapshot(
        taken_at=NOW,
        counts={
            "pending": 1,
            "sending": 1,
            "submitted": 0,
            "delivered": 2,
            "failed": 0,
            "rejected": 0,
            "cancelled": 0,
            "needs_review": 1,
        },
        oldest_pending={"id": 1, "age_seconds": 5.0},
        pauses=[Pause(1, "operator", {}, NOW, "ops")],
        balance=BalanceSnapshot(NOW, 100, 5, None),
        attempts=AttemptCounters(2, 1, 1, 1, {"submitted": 2}),
        events={"applied": 2},
        finals={"delivered": 2, "failed": 0, "rejected": 0, "cancelled": 0},
        insert_to_submit=latency,
        submit_to_final=latency,
        alerts=[],
        rows_to_look_at=[],
        heartbeats=[
            {
                "role": "relay",
                "process": "relay@a",
                "hostname": "a",
                "pid": 1,
                "started_at": NOW,
                "seen_at": NOW,
                "age_seconds": 1.0,
                "stopped_at": None,
            }
        ],
        redis=RedisFigures(
            throttle={"tokens": 1.0, "cooldown_remaining": 0.0, "limit_per_minute": 60.0},
            pause_mirror=True,
            queues={"faxout": 0},
            webhook_duplicates=1,
            webhook_refused={"401": 1},
        ),
    )


def _exposed() -> set[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda *, series_minutes: _full_snapshot()))
    text = generate_latest(registry).decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_grafana_panel_queries_exposed_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/fax-outbox.json").read_text())
    exposed = _exposed()
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in _METRIC.findall(target["expr"])
    }
    assert asked, "no panel queries anything"
    assert asked - exposed == set()
    # The data source is chosen on import, never a fixed uid of somebody's Grafana.
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {"${datasource}"}


def test_every_documented_alert_rule_uses_exposed_metrics() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Monitoring") :]
    rules = section[section.index("```yaml") : section.index("```", section.index("```yaml") + 3)]
    expressions = re.findall(r"expr: (.+)", rules)
    assert len(expressions) >= 10
    asked = {name for expr in expressions for name in _METRIC.findall(expr)}
    assert asked - _exposed() == set()
