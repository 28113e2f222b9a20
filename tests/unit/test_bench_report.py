"""bench/report.py's writer: real results of every benchmark (captured from a `make bench
BENCH_ARGS=--quick` run, in tests/unit/bench_results/) make one table with every benchmark, each
figure's ratio and verdict as its script wrote them; a benchmark that is missing, failed, timed
out or unreadable is a row saying so, never dropped."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import report

FIXTURES = Path(__file__).parent / "bench_results"
MACHINE = {
    "cpu_model": "AMD EPYC",
    "cpus": 2,
    "memory": "23.5 GiB",
    "os": "Debian GNU/Linux 12 (bookworm), kernel 6.18",
    "python": "3.11.7",
    "postgres": "15.20 (DATABASE_URL)",
    "redis": "6.2.14 (REDIS_URL)",
}
WHEN = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)


def ok_run(quick: bool = True) -> dict[str, Any]:
    return {
        "started": "2026-12-01 01:00 UTC",
        "seconds": 12.0,
        "args": ["--quick"] if quick else [],
        "quick": quick,
        "exit_code": 0,
        "timed_out": False,
        "wrote_results": True,
    }


def write(results: Path, runs: dict[str, dict[str, Any]] | None = None) -> str:
    """The report of every known benchmark over the results in `results`."""
    runs = runs if runs is not None else {name: ok_run() for name in report.ORDER}
    outcomes = [report.read_outcome(n, results, runs.get(n)) for n in report.ORDER]
    return report.render(outcomes, machine=MACHINE, commit="`abc1234` (test)", generated=WHEN)


def table(markdown: str) -> dict[str, list[dict[str, str]]]:
    """The table's rows by benchmark, each as {column: cell}."""
    lines = markdown.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| Benchmark |"))
    columns = [c.strip() for c in lines[header_at].strip("|").split("|")]
    rows: dict[str, list[dict[str, str]]] = {}
    for line in lines[header_at + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        row = dict(zip(columns, cells, strict=True))
        name = row["Benchmark"].split("]")[0].lstrip("[")
        assert row["Benchmark"] == f"[{name}]({name}.py)"  # the link to the script
        rows.setdefault(name, []).append(row)
    return rows


def load(name: str, results: Path = FIXTURES) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return data


def expected_figures(name: str, d: dict[str, Any]) -> list[tuple[str, float | None, bool | None]]:
    """(figure's start, ratio, met) straight from a script's JSON, read independently of the
    report's own readers."""
    if name == "enqueue":
        s, b = d["single"], d["bulk"]
        return [("single enqueue", s["ratio"], s["met"]), ("bulk enqueue", b["ratio"], b["met"])]
    if name == "sandbox":
        return [("POST /v1/fax", d["ratio"], d["meets_target"])]
    if name == "drain":
        t, c = d["throughput"], d["cpu_per_fax"]
        return [("drain throughput", t["ratio"], t["met"]), ("CPU per fax", c["ratio"], c["met"])]
    if name == "latency":
        lat, tgt = d["latency"], d["targets"]
        return [
            (f"commit -> POST at mintfax, {q}", None, lat[f"{q}_ms"] <= tgt[f"{q}_ms"])
            for q in ("p50", "p99")
        ]
    if name == "throttle":
        pct = d["achieved_pct_of_limit"]
        return [("achieved rate", pct / 100, pct >= d["target_min_pct"])] + [
            (f"busiest {w['seconds']} s window", w["busiest"] / w["gcra_bound"], True)
            for w in d["windows"]
        ]
    if name == "throttle_accuracy":
        pct = d["achieved_pct_of_limit"]
        return [
            ("fleet rate", pct / 100, pct >= d["target_min_pct"]),
            ("429 answers", None, d["responses_429"] == 0),
        ]
    if name == "claim":
        m = d["measures"]["claim (dispatch_due + claim_for_submit)"]
        return [
            ("claim (dispatch + claim), p50", m["ratio_p50"], m["big"]["p50_ms"] <= 2.0),
            ("dispatch reads fax_outbox_due_idx", None, d["uses_due_index"]),
        ]
    if name == "webhook_ingest":
        p99 = d["measures"]["receiver"]["p99_ms"]
        return [
            ("webhook throughput", d["throughput_ratio"], d["throughput_ratio"] >= 0.4),
            ("p99 at", d["p99_ratio"], p99 <= 50.0),
        ]
    if name == "poll_select":
        return [
            (f"poll selection n={n},", m["ratio_per_row"], m["ratio_per_row"] <= 1.5)
            for n, m in d["measures"].items()
        ]
    if name == "metrics_scrape":
        return [
            ("metrics scrape, p50", d["scrape_vs_baseline"], None),
            ("metrics scrape, p99", None, d["measures"]["scrape"]["p99_ms"] < 1000),
            ("sequential scans", None, not d["sequential_scans"]),
        ]
    if name == "startup":
        base = d["rows"][0]["median_ms"]
        return [(f"`{r['command']}`", r["median_ms"] / base, None) for r in d["rows"][1:]]
    raise AssertionError(name)


def script_verdict(name: str, d: dict[str, Any]) -> bool:
    """Whether the script judged its run met, as its own JSON says."""
    if name == "enqueue":
        return bool(d["single"]["met"] and d["bulk"]["met"])
    if name == "drain":
        return bool(d["throughput"]["met"] and d["cpu_per_fax"]["met"])
    return bool(d["meets_target" if name == "sandbox" else "met"])


def met_cell(met: bool | None) -> str:
    return {True: "met", False: "**NOT met**", None: "n/a"}[met]


def test_the_fixtures_hold_every_benchmark_the_report_knows() -> None:
    # The fixtures are a real run of every script: if a benchmark is added, capture it too.
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(report.ORDER)
    assert report.discover() == report.ORDER


def test_every_benchmark_has_its_figures_with_their_ratio_and_verdict() -> None:
    rows = table(write(FIXTURES))
    assert list(rows) == report.ORDER  # every benchmark, in order, none dropped
    for name in report.ORDER:
        data = load(name)
        for start, ratio, met in expected_figures(name, data):
            matching = [r for r in rows[name] if r["Figure"].startswith(start)]
            assert len(matching) == 1, (name, start, rows[name])
            row = matching[0]
            if ratio is not None:
                assert row["Ratio"] == f"{ratio:.2f}x", (name, start, row)
            assert row["Met"] == met_cell(met), (name, start, row)
            assert row["Measured"] not in ("", "—"), row


def test_summary_and_exit_verdict_follow_each_scripts_own_judgement() -> None:
    markdown = write(FIXTURES)
    outcomes = [report.read_outcome(n, FIXTURES, ok_run()) for n in report.ORDER]
    verdicts = {n: script_verdict(n, load(n)) for n in report.ORDER[:-1]}
    assert report.ORDER[-1] == "startup"  # the one without a target
    missed = [n for n in report.ORDER if verdicts.get(n) is False]
    met = [n for n in report.ORDER if n != "startup" and n not in missed]
    assert report.not_met(outcomes) == missed
    assert f"**{len(met)} of {len(report.ORDER)} benchmarks met every target**" in markdown
    if missed:
        assert f"missed: {', '.join(missed)}" in markdown
    for name in missed:
        assert any(r["Met"] == "**NOT met**" for r in table(markdown)[name]), name


def test_the_machine_date_commit_and_quick_run_are_stated() -> None:
    markdown = write(FIXTURES)
    for text in [
        "AMD EPYC, 2 CPUs",
        "23.5 GiB",
        "Debian GNU/Linux 12",
        "Python: 3.11.7",
        "PostgreSQL: 15.20",
        "Redis: 6.2.14",
        "2026-12-01 01:30 UTC",
        "`abc1234`",
        "**Quick run**",
    ]:
        assert text in markdown, text
    assert "Quick run" not in write(FIXTURES, {n: ok_run(quick=False) for n in report.ORDER})
    # Every benchmark has a note on its baseline.
    for name in report.ORDER:
        assert f"- **[{name}]({name}.py)**: " in markdown
        assert name in report.NOTES


def copy_results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(FIXTURES, results)
    return results


def only_row(markdown: str, name: str) -> dict[str, str]:
    rows = table(markdown)[name]
    assert len(rows) == 1, rows
    return rows[0]


def test_a_missing_benchmark_is_a_row_saying_so(tmp_path: Path) -> None:
    results = copy_results(tmp_path)
    (results / "drain.json").unlink()
    runs = {n: ok_run() for n in report.ORDER if n != "drain"}
    markdown = write(results, runs)
    assert list(table(markdown)) == report.ORDER
    assert "missing" in only_row(markdown, "drain")["Met"]
    assert "without results: drain" in markdown
    outcomes = [report.read_outcome(n, results, runs.get(n)) for n in report.ORDER]
    assert "drain" in report.not_met(outcomes)


def test_a_failed_run_does_not_show_the_results_an_earlier_run_left(tmp_path: Path) -> None:
    # latency.json is there (an earlier run's); this run crashed before writing its own.
    results = copy_results(tmp_path)
    runs = {n: ok_run() for n in report.ORDER}
    runs["latency"] = {**ok_run(), "exit_code": 1, "wrote_results": False}
    runs["claim"] = {**ok_run(), "exit_code": -2, "timed_out": True, "wrote_results": False}
    markdown = write(results, runs)
    assert "failed: exit status 1" in only_row(markdown, "latency")["Met"]
    assert "results/latency.log" in only_row(markdown, "latency")["Met"]
    assert "failed: timed out" in only_row(markdown, "claim")["Met"]
    outcomes = [report.read_outcome(n, results, runs[n]) for n in report.ORDER]
    assert {"latency", "claim"} <= set(report.not_met(outcomes))


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short (a crash while writing)
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "throughput"}),
        lambda text: "[]",
    ],
)
def test_results_the_report_cannot_read_are_a_failed_row(tmp_path: Path, damage: Any) -> None:
    results = copy_results(tmp_path)
    path = results / "drain.json"
    path.write_text(damage(path.read_text()))
    markdown = write(results)
    assert "failed: results unreadable" in only_row(markdown, "drain")["Met"]
    # The others are untouched.
    assert len(table(markdown)["enqueue"]) == 2


def test_a_missed_target_is_not_met_in_its_row_and_the_summary(tmp_path: Path) -> None:
    results = copy_results(tmp_path)
    data = load("sandbox", results)
    data.update(ratio=0.31, meets_target=False)
    (results / "sandbox.json").write_text(json.dumps(data))
    markdown = write(results)
    row = only_row(markdown, "sandbox")
    assert (row["Ratio"], row["Target"], row["Met"]) == ("0.31x", ">= 0.5x", "**NOT met**")
    assert "sandbox" in markdown.split("missed: ")[1].split(";")[0]


def test_a_script_that_misses_on_a_condition_without_a_row_gets_one(tmp_path: Path) -> None:
    # enqueue's two figures both met, but the script itself says missed: not silently met.
    results = copy_results(tmp_path)
    data = load("enqueue", results)
    data["single"].update(ratio=1.0, met=True)
    data["bulk"].update(ratio=1.0, met=True)
    (results / "enqueue.json").write_text(json.dumps(data))
    assert all(r["Met"] == "met" for r in table(write(results))["enqueue"])
    outcome = report.read_outcome("enqueue", results, ok_run())
    outcome.met = False
    markdown = report.render([outcome], machine=MACHINE, commit="x", generated=WHEN)
    assert table(markdown)["enqueue"][-1]["Met"] == "**NOT met**"
    assert "other conditions" in table(markdown)["enqueue"][-1]["Figure"]


def test_a_new_script_is_run_and_listed_even_before_the_report_can_read_it(
    tmp_path: Path,
) -> None:
    for name in ["harness", "report", "drain", "zebra", "alpha"]:
        (tmp_path / f"{name}.py").write_text("")
    assert report.discover(tmp_path) == ["drain", "alpha", "zebra"]
    (tmp_path / "zebra.json").write_text("{}")
    outcome = report.read_outcome("zebra", tmp_path, ok_run())
    assert outcome.problem is not None
    assert "does not know" in outcome.problem
    assert report.not_met([outcome]) == ["zebra"]


def test_quick_mode_reaches_every_script() -> None:
    for name in report.ORDER:
        args = report.script_args(name, quick=True)
        assert args, name
        assert report.script_args(name, quick=False) == []


def test_the_commit_stated_is_the_one_the_results_were_measured_at() -> None:
    def outcome(name: str, commit: str) -> report.Outcome:
        return report.read_outcome(name, FIXTURES, {**ok_run(), "commit": commit})

    same = [outcome("drain", "`aaa1111` (x)"), outcome("claim", "`aaa1111` (x)")]
    assert report.commit_of(same) == "`aaa1111` (x)"
    mixed = [*same, outcome("latency", "`bbb2222` (y) plus uncommitted changes")]
    assert report.commit_of(mixed).startswith("several")
    markdown = report.render(mixed, machine=MACHINE, commit=report.commit_of(mixed), generated=WHEN)
    assert "at `bbb2222`._" in markdown
    assert "at `aaa1111`._" in markdown


# --- settling between benchmarks ---------------------------------------------------------------


def test_settle_waits_for_quiet_seconds_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy second breaks the run of quiet ones: three in a row are needed after it.
    shares = iter([0.99, 0.4, 0.9, 0.95, 0.97, 0.2])
    seen: list[float] = []

    def idle(seconds: float) -> float:
        seen.append(next(shares))
        return seen[-1]

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(report, "_idle_share", idle)
    settled = report.settle(quiet_seconds=3, most_seconds=60)
    assert settled["quiet"] is True and settled["checkpoint"].startswith("skipped")
    assert seen == [0.99, 0.4, 0.9, 0.95, 0.97]


def test_settle_gives_up_on_a_machine_that_stays_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(report, "_idle_share", lambda seconds: 0.3)
    clock = iter(range(0, 1000, 10))  # each reading 10 s later than the last
    settled = report.settle(most_seconds=45, monotonic=lambda: float(next(clock)))
    assert settled["quiet"] is False and settled["last_idle_share"] == 0.3


def test_idle_share_reads_this_machines_cpu_time() -> None:
    share = report._idle_share(0.2)
    assert share is not None and 0.0 <= share <= 1.0
