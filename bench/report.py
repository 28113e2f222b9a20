"""`make bench`: run every benchmark in `bench/` and write `bench/RESULTS.md`.

    .venv/bin/python bench/report.py [--quick] [--only drain,latency] [--timeout 3600]

Each benchmark runs as its own process (`.venv/bin/python bench/<name>.py`), one after the
other, its output going to `bench/results/<name>.log` while a progress line shows which one is
running and for how long. A benchmark that misses its target or fails does not stop the others.
`--quick` passes each script its own quick mode (smaller tables, fewer rounds): a rehearsal of
the report, not figures to publish. `--only a,b` re-runs those benchmarks and keeps the others'
last results (the report says when and how each was run).

How each run went is kept in `bench/results/runs.json`, so a report written after `--only`
still knows which results are fresh, which are quick, and which benchmark failed.

`bench/RESULTS.md` holds the machine (CPU, memory, OS, Python, Postgres and Redis versions), the
date, the git commit, and one table: every figure as a ratio against the baseline its script
measured in the same run, the absolute medians beside it, its target and whether it was met,
then a note per benchmark on what its baseline is. A benchmark without results (never run,
crashed, timed out, or results the report cannot read) is a row saying so, never left out.

Exit status: 0 only if every benchmark ran and met every target it has.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
REPORT = BENCH_DIR / "RESULTS.md"
RUNS = "runs.json"
# Not benchmarks: the shared plumbing and this script.
NOT_BENCHMARKS = {"harness", "report"}
# The order of the table (the Makefile's historical order); any other script follows, by name.
ORDER = [
    "enqueue",
    "sandbox",
    "drain",
    "latency",
    "throttle",
    "throttle_accuracy",
    "claim",
    "webhook_ingest",
    "poll_select",
    "metrics_scrape",
    "startup",
]
# Scripts without a --quick flag get the same idea spelled in their own options.
QUICK_ARGS = {
    "enqueue": ["--single", "100", "--rounds", "3"],
    "sandbox": ["--seconds", "1", "--rounds", "3"],
    "throttle": ["--seconds", "5"],
    "startup": ["--rounds", "7"],
}
DEFAULT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Row:
    """One figure of the table."""

    figure: str
    ratio: float | None  # measured / baseline; None when the target is absolute
    measured: str
    baseline: str
    target: str
    met: bool | None  # None: no target for this figure


@dataclass
class Outcome:
    """What the report knows of one benchmark: its rows, or why it has none."""

    name: str
    rows: list[Row] = field(default_factory=list)
    met: bool | None = None  # None: no target at all (informational)
    problem: str | None = None  # "failed: ...", "missing: ...": no usable results
    run: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# Reading each script's JSON. A function per script, because each has its own shape; a shape
# that changes raises (KeyError, TypeError), which the report shows as that benchmark's problem.


def _ms(value: float) -> str:
    return f"{value:,.3f} ms" if value < 10 else f"{value:,.1f} ms"


def _x(value: float) -> str:
    return f"{value:g}x"


def _check(figure: str, ok: bool) -> Row:
    """A yes/no figure without a baseline (an index used, the same rows read)."""
    return Row(figure, None, "yes" if ok else "no", "", "yes", ok)


def _rate_against_limit(figure: str, d: dict[str, Any]) -> Row:
    """A throttle benchmark's achieved rate as a share of the limit it was given."""
    limit = d["config"]["limit_per_minute"]
    return Row(
        figure,
        round(d["achieved_pct_of_limit"] / 100, 4),
        f"{d['achieved_per_minute']:,.1f}/min",
        f"{limit:,}/min the limit",
        f">= {d['target_min_pct'] / 100:g}x",
        d["achieved_pct_of_limit"] >= d["target_min_pct"],
    )


def _enqueue(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    s, b = d["single"], d["bulk"]
    rows = [
        Row(
            "single enqueue (1 intent + commit), median",
            s["ratio"],
            _ms(s["helper_median_ms"]),
            f"{_ms(s['raw_median_ms'])} raw psycopg",
            f"<= {_x(s['target_max_ratio'])}",
            s["met"],
        ),
        Row(
            f"bulk enqueue ({d['config']['bulk_rows']:,} rows), median",
            b["ratio"],
            f"{b['helper_median_rows_per_s']:,.0f} rows/s",
            f"{b['raw_median_rows_per_s']:,.0f} rows/s raw executemany",
            f">= {_x(b['target_min_ratio'])}",
            b["met"],
        ),
    ]
    return rows, bool(s["met"] and b["met"])


def _sandbox(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    row = Row(
        "POST /v1/fax throughput, median",
        d["ratio"],
        f"{d['sandbox_rps']['median']:,.0f} req/s",
        f"{d['bare_rps']['median']:,.0f} req/s bare Starlette",
        f">= {_x(d['target'])}",
        d["meets_target"],
    )
    return [row], bool(d["meets_target"])


def _drain(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    t, c = d["throughput"], d["cpu_per_fax"]
    n = d["config"]["faxes_per_round"]
    rows = [
        Row(
            f"drain throughput ({n:,} faxes), median",
            t["ratio"],
            f"{t['system_median_faxes_per_s']:,.1f} faxes/s",
            f"{t['minimal_median_faxes_per_s']:,.1f} faxes/s minimal loop",
            f">= {_x(t['target_min_ratio'])}",
            t["met"],
        ),
        Row(
            "CPU per fax, median",
            c["ratio"],
            _ms(c["system_median_ms"]),
            f"{_ms(c['minimal_median_ms'])} minimal loop",
            f"<= {_x(c['target_max_ratio'])}",
            c["met"],
        ),
    ]
    return rows, bool(t["met"] and c["met"])


def _latency(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    lat, targets = d["latency"], d["targets"]
    rows = [
        Row(
            f"commit -> POST at mintfax, {q}",
            None,
            _ms(lat[f"{q}_ms"]),
            "none (absolute target)",
            f"<= {targets[f'{q}_ms']:g} ms",
            lat[f"{q}_ms"] <= targets[f"{q}_ms"],
        )
        for q in ("p50", "p99")
    ]
    return rows, bool(d["met"])


def _throttle(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    config = d["config"]
    rows = [
        _rate_against_limit(
            f"achieved rate, {config['processes']} processes x {config['threads']} threads", d
        )
    ]
    for w in d["windows"]:
        rows.append(
            Row(
                f"busiest {w['seconds']} s window",
                round(w["busiest"] / w["gcra_bound"], 4),
                f"{w['busiest']} grants",
                f"{w['gcra_bound']} GCRA bound",
                "<= 1x",
                w["busiest"] <= w["gcra_bound"],
            )
        )
    return rows, bool(d["met"])


def _throttle_accuracy(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    limit = d["config"]["limit_per_minute"]
    rows = [
        _rate_against_limit(
            f"fleet rate against the sandbox's limit, {d['config']['seconds']:g} s", d
        ),
        Row(
            "429 answers from the sandbox",
            None,
            str(d["responses_429"]),
            "none (absolute target)",
            "0",
            d["responses_429"] == 0 and not d["other_statuses"],
        ),
    ]
    busiest = d["busiest_60s_window"]
    if busiest is not None:
        rows.append(
            Row(
                "busiest sliding 60 s window",
                round(busiest / limit, 4),
                f"{busiest} POSTs",
                f"{limit} the limit",
                "<= 1x",
                busiest <= limit,
            )
        )
    return rows, bool(d["met"])


def _claim(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    c = d["config"]
    m = d["measures"]["claim (dispatch_due + claim_for_submit)"]
    rows = [
        Row(
            f"claim (dispatch + claim), p50, {c['rows_big']:,} rows",
            m["ratio_p50"],
            _ms(m["big"]["p50_ms"]),
            f"{_ms(m['live']['p50_ms'])} on {c['live_rows']:,} live rows only",
            f"<= {d['target_p50_ms']:g} ms",
            m["big"]["p50_ms"] <= d["target_p50_ms"],
        ),
        _check("dispatch reads fax_outbox_due_idx", bool(d["uses_due_index"])),
    ]
    return rows, bool(d["met"])


def _webhook_ingest(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    r, b = d["measures"]["receiver"], d["measures"]["bare"]
    rate = d["config"]["rate"]
    rows = [
        Row(
            "webhook throughput, median",
            d["throughput_ratio"],
            f"{r['events_per_s']:,.1f} events/s",
            f"{b['events_per_s']:,.1f} events/s bare Starlette",
            f">= {_x(d['target_throughput_ratio'])}",
            d["throughput_ratio"] >= d["target_throughput_ratio"],
        ),
        Row(
            f"p99 at {rate:g} events/s, median",
            d["p99_ratio"],
            _ms(r["p99_ms"]),
            f"{_ms(b['p99_ms'])} bare Starlette",
            f"<= {d['target_p99_ms']:g} ms",
            r["p99_ms"] <= d["target_p99_ms"],
        ),
    ]
    if d["receiver_errors"]:
        rows.append(
            Row(
                "receiver errors",
                None,
                json.dumps(d["receiver_errors"]),
                "",
                "none",
                False,
            )
        )
    return rows, bool(d["met"])


def _poll_select(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    rows_total = d["config"]["rows"]
    rows = []
    for n, m in d["measures"].items():
        p, s = m["poller"], m["plain_select"]
        rows.append(
            Row(
                f"poll selection n={n}, per row, p50, {rows_total:,} rows",
                m["ratio_per_row"],
                f"{p['p50_us_per_row']:,.2f} µs/row",
                f"{s['p50_us_per_row']:,.2f} µs/row plain select",
                f"<= {_x(d['target_ratio'])}",
                m["ratio_per_row"] <= d["target_ratio"],
            )
        )
    checks = bool(d["same_rows_every_round"] and d["uses_poll_index"])
    rows.append(_check("same rows every round, fax_outbox_poll_due_idx used", checks))
    return rows, bool(d["met"])


def _metrics_scrape(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    m, rows_total = d["measures"], d["config"]["rows"]
    scrape, base = m["scrape"], m["baseline_count"]
    target_ms = d["target_seconds"] * 1000
    rows = [
        Row(
            f"metrics scrape, p50, {rows_total:,} rows",
            d["scrape_vs_baseline"],
            _ms(scrape["p50_ms"]),
            f"{_ms(base['p50_ms'])} count(*)",
            "",
            None,
        ),
        Row(
            "metrics scrape, p99",
            round(scrape["p99_ms"] / base["p99_ms"], 2),
            _ms(scrape["p99_ms"]),
            f"{_ms(base['p99_ms'])} count(*)",
            f"< {target_ms:g} ms",
            scrape["p99_ms"] < target_ms,
        ),
        Row(
            "sequential scans of a big table",
            None,
            ", ".join(d["sequential_scans"]) or "none",
            "",
            "none",
            not d["sequential_scans"],
        ),
    ]
    return rows, bool(d["met"])


def _startup(d: dict[str, Any]) -> tuple[list[Row], bool | None]:
    rows_by = {r["command"]: r for r in d["rows"] if r.get("tree") == "this tree"}
    base = rows_by["python -c pass (baseline)"]
    rows = [
        Row(
            f"`{command}`, median",
            round(r["median_ms"] / base["median_ms"], 2),
            _ms(r["median_ms"]),
            f"{_ms(base['median_ms'])} python -c pass",
            "none set",
            None,
        )
        for command, r in rows_by.items()
        if r is not base
    ]
    return rows, None


READERS: dict[str, Callable[[dict[str, Any]], tuple[list[Row], bool | None]]] = {
    "enqueue": _enqueue,
    "sandbox": _sandbox,
    "drain": _drain,
    "latency": _latency,
    "throttle": _throttle,
    "throttle_accuracy": _throttle_accuracy,
    "claim": _claim,
    "webhook_ingest": _webhook_ingest,
    "poll_select": _poll_select,
    "metrics_scrape": _metrics_scrape,
    "startup": _startup,
}

# What each benchmark compares against (the notes under the table).
NOTES = {
    "enqueue": "the same rows inserted with raw psycopg (`INSERT ... VALUES` and commit; "
    "`executemany` for the bulk batch of 10 KB documents) on one connection of the same server, "
    "interleaved operation by operation with the helper (`enqueue_fax`, `enqueue_faxes`).",
    "sandbox": "a bare Starlette endpoint (`POST /bare`) on the same uvicorn process that reads "
    "the same multipart body and answers a small 201; load from a separate process on raw "
    "keep-alive connections, rounds alternating which endpoint goes first.",
    "drain": "a minimal loop written for the comparison: 4 processes, each claiming one row "
    "with plain psycopg (`FOR UPDATE SKIP LOCKED`), POSTing it with plain httpx and marking it "
    "submitted, against the same sandbox; the system is 1 relay + 2 Celery workers x 2 "
    "processes. CPU counts those processes on each side (not the sandbox, Postgres or Redis).",
    "latency": "no baseline: the targets are absolute (issue 4). One row inserted and committed "
    "at a time on an idle fleet; latency is the sandbox's arrival stamp minus the commit time.",
    "throttle": "the configured limit itself (a number, not a measurement): 4 processes x 2 "
    "threads take tokens flat out from one Redis bucket; a window's GCRA bound is the most grants "
    "the throttle may allow in it. Target: the integration test's bar (>= 95 % of the limit).",
    "throttle_accuracy": "the limit itself (600/min), which the sandbox enforces over a sliding "
    "60 s window; the whole fleet (relay, 2 workers x 2, beat) saturated, its 429s counted by "
    "the sandbox.",
    "claim": "the same claims on a table holding only the live (due) rows, interleaved with the "
    "claims on the big table (99 % terminal rows), so the ratio is what the terminal rows cost. "
    "The target is absolute (p50 <= 2 ms) and the dispatch must read `fax_outbox_due_idx`.",
    "webhook_ingest": "a bare Starlette endpoint on the same uvicorn process that reads the body "
    "and answers 200, sent the same signed requests; throughput on keep-alive connections, "
    "latency open loop at a fixed rate. The p99 target is absolute.",
    "poll_select": "a plain indexed `SELECT ... WHERE status = 'submitted' AND next_poll_at <= "
    "now() ORDER BY next_poll_at, id LIMIT n` of the same rows on the same partial index, per "
    "polled row (the script's own table also shows the textbook claim as a reference).",
    "metrics_scrape": "a bare `SELECT count(*) FROM fax_outbox` on the same table (a scrape "
    "counts every row of three tables by index, so it cannot cost less than one count). The "
    "target is absolute: p99 under 1 s and no sequential scan of a big table.",
    "startup": "`python -c pass` in the same interleaved rounds, each command a fresh "
    "interpreter. No target has been set: the figures are for comparison between commits "
    "(`bench/startup.py --compare PATH`).",
}


def read_outcome(name: str, results_dir: Path, run: dict[str, Any] | None) -> Outcome:
    """What the report shows for benchmark `name`: its rows, or why there are none."""
    outcome = Outcome(name, run=run)
    path = results_dir / f"{name}.json"
    if run is not None and not run.get("wrote_results", False):
        why = "timed out" if run.get("timed_out") else f"exit status {run.get('exit_code')}"
        outcome.problem = f"failed: {why}, no results written (log: results/{name}.log)"
        return outcome
    if not path.exists():
        outcome.problem = "missing: never run, no results"
        return outcome
    reader = READERS.get(name)
    if reader is None:
        outcome.problem = "not in the table: bench/report.py does not know this script's results"
        return outcome
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        outcome.rows, outcome.met = reader(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        outcome.problem = f"failed: results unreadable ({type(exc).__name__}: {exc})"
        outcome.rows = []
    return outcome


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Every benchmark script in `bench_dir`, in table order (known ones first)."""
    found = {p.stem for p in bench_dir.glob("*.py")} - NOT_BENCHMARKS
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


# ---------------------------------------------------------------------------------------------
# Writing the report.


def not_met(outcomes: list[Outcome]) -> list[str]:
    """The benchmarks that missed a target or have no results (what makes `make bench` fail)."""
    return [o.name for o in outcomes if o.problem or o.met is False]


def _met_cell(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**NOT met**")


def _ratio_cell(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    outcomes: list[Outcome],
    *,
    machine: dict[str, Any],
    commit: str,
    generated: datetime,
) -> str:
    """bench/RESULTS.md for `outcomes` (one per benchmark, in table order)."""
    quick = sorted(o.name for o in outcomes if o.run and o.run.get("quick"))
    unmanaged = sorted(o.name for o in outcomes if o.run is None and not o.problem)
    problems = [o for o in outcomes if o.problem]
    missed = [o for o in outcomes if not o.problem and o.met is False]
    met = [o for o in outcomes if not o.problem and o.met]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/report.py`). Each benchmark measures its own baseline in "
        "the same run on the same machine, so the ratios are what to compare; absolute figures "
        "depend on the machine.",
        "",
        f"- Date: {generated.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Commit: {commit}",
        f"- CPU: {machine.get('cpu_model', 'unknown')}, {machine.get('cpus', '?')} CPUs",
        f"- Memory: {machine.get('memory', 'unknown')}",
        f"- OS: {machine.get('os', 'unknown')}",
        f"- Python: {machine.get('python', 'unknown')}",
        f"- PostgreSQL: {machine.get('postgres', 'unknown')}",
        f"- Redis: {machine.get('redis', 'unknown')}",
    ]
    if quick:
        lines.append(
            "- **Quick run** (`--quick`: smaller tables, fewer rounds) for: "
            f"{'every benchmark' if len(quick) == len(outcomes) else ', '.join(quick)}. "
            "A rehearsal, not the figures to quote."
        )
    if unmanaged:
        lines.append(
            f"- Results not from `make bench` (run by hand earlier): {', '.join(unmanaged)}."
        )
    lines += [
        "",
        f"**{len(met)} of {len(outcomes)} benchmarks met every target**"
        + (f"; missed: {', '.join(o.name for o in missed)}" if missed else "")
        + (f"; without results: {', '.join(o.name for o in problems)}" if problems else "")
        + "."
        + (
            " (startup has no target.)"
            if any(o.name == "startup" and o.met is None and not o.problem for o in outcomes)
            else ""
        ),
        "",
        "Ratio = measured / baseline (for a rate, above 1 is faster than the baseline; for a "
        "time, below 1 is). Medians unless the figure says otherwise.",
        "",
        "| Benchmark | Figure | Ratio | Measured | Baseline | Target | Met |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for o in outcomes:
        link = f"[{o.name}]({o.name}.py)"
        if o.problem:
            lines.append(f"| {link} | — | — | — | — | — | **{_cell(o.problem)}** |")
            continue
        for row in o.rows:
            lines.append(
                f"| {link} | {_cell(row.figure)} | {_ratio_cell(row.ratio)} | "
                f"{_cell(row.measured)} | {_cell(row.baseline) or '—'} | "
                f"{_cell(row.target) or '—'} | {_met_cell(row.met)} |"
            )
        if o.met is False and all(row.met is not False for row in o.rows):
            # The script judged itself missed on something the table has no row for.
            lines.append(
                f"| {link} | other conditions (see results/{o.name}.json) | — | — | — | — "
                "| **NOT met** |"
            )
    lines += ["", "## What each benchmark compares against", ""]
    for o in outcomes:
        note = NOTES.get(o.name, "no note yet.")
        lines.append(f"- **[{o.name}]({o.name}.py)**: {note}{_run_note(o.run)}")
    lines.append("")
    return "\n".join(lines)


def _run_note(run: dict[str, Any] | None) -> str:
    if not run:
        return ""
    args = " ".join(run.get("args", []))
    return (
        f" _Run {run.get('started', '?')}, {run.get('seconds', 0):.0f} s"
        + (f", `{args}`" if args else "")
        + (f", at {str(run['commit']).split(' ')[0]}" if run.get("commit") else "")
        + "._"
    )


# ---------------------------------------------------------------------------------------------
# Running the benchmarks.


def load_runs(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest of earlier runs (benchmark -> how it went); empty if there is none."""
    with contextlib.suppress(OSError, ValueError):
        runs = json.loads((results_dir / RUNS).read_text(encoding="utf-8"))
        if isinstance(runs, dict):
            return runs
    return {}


def script_args(name: str, quick: bool, bench_dir: Path = BENCH_DIR) -> list[str]:
    """The arguments `name` is run with: its quick mode when asked, else none."""
    if not quick:
        return []
    if name in QUICK_ARGS:
        return list(QUICK_ARGS[name])
    source = (bench_dir / f"{name}.py").read_text(encoding="utf-8")
    return ["--quick"] if "--quick" in source else []


def run_all(
    chosen: list[str],
    *,
    quick: bool,
    timeout: float,
    bench_dir: Path = BENCH_DIR,
    results_dir: Path = RESULTS_DIR,
) -> dict[str, dict[str, Any]]:
    """Run `chosen` one after the other, whatever each one's outcome; returns every run known
    (earlier ones included), saved to runs.json after each benchmark."""
    runs = load_runs(results_dir)
    if not chosen:
        return runs
    with Progress(len(chosen)) as progress:
        for name in chosen:
            bench_args = script_args(name, quick, bench_dir)
            progress.start(name, bench_args)
            settled = settle()
            runs[name] = run_one(
                name, bench_args, timeout, progress, bench_dir=bench_dir, results_dir=results_dir
            )
            runs[name]["settled"] = settled
            # Saved at once, so a report written after an interrupted run still knows it.
            (results_dir / RUNS).write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
            progress.done(read_outcome(name, results_dir, runs[name]))
    return runs


def settle(
    *,
    quiet_idle: float = 0.85,
    quiet_seconds: int = 3,
    most_seconds: float = 90,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Before a benchmark: ask Postgres for a checkpoint (the previous benchmark's writes are
    flushed now, not in the middle of this one) and wait, at most `most_seconds`, until the
    machine has been at least `quiet_idle` idle for `quiet_seconds` seconds in a row (its
    autovacuum, dropped databases, exiting processes). A full run once had the webhook
    benchmark's bare endpoint at 2,650-4,191 requests/s right after the claim benchmark, and
    5,000 on a quiet machine. Returns what it saw, for runs.json."""
    started = monotonic()
    checkpoint = "skipped (no DATABASE_URL)"
    url = os.environ.get("DATABASE_URL")
    if url:
        try:
            import psycopg

            plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(plain, autocommit=True, connect_timeout=5) as conn:
                conn.execute("CHECKPOINT")
            checkpoint = "done"
        except Exception as exc:  # a benchmark still runs on a machine that is not quiet
            checkpoint = f"failed: {type(exc).__name__}"
    quiet_in_a_row, idle = 0, None
    while quiet_in_a_row < quiet_seconds and monotonic() - started < most_seconds:
        idle = _idle_share(1.0)
        if idle is None:  # not Linux: nothing to read
            break
        quiet_in_a_row = quiet_in_a_row + 1 if idle >= quiet_idle else 0
    return {
        "checkpoint": checkpoint,
        "seconds": round(monotonic() - started, 1),
        "quiet": quiet_in_a_row >= quiet_seconds,
        "last_idle_share": None if idle is None else round(idle, 3),
    }


def _idle_share(seconds: float) -> float | None:
    """The share of all CPUs' time spent idle over the next `seconds` (/proc/stat)."""

    def times() -> list[int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                return [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    before = times()
    time.sleep(seconds)
    after = times()
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(spent)
    # idle and iowait (fields 4 and 5 of /proc/stat's cpu line)
    return (spent[3] + spent[4]) / total if total > 0 else None


def run_one(
    name: str,
    args: list[str],
    timeout: float,
    progress: Progress,
    *,
    bench_dir: Path = BENCH_DIR,
    results_dir: Path = RESULTS_DIR,
) -> dict[str, Any]:
    """Run `bench/<name>.py args`, its output to `results/<name>.log`; returns how it went."""
    results_dir.mkdir(parents=True, exist_ok=True)
    results = results_dir / f"{name}.json"
    before = results.stat().st_mtime if results.exists() else None
    started = time.time()
    timed_out = False
    with (results_dir / f"{name}.log").open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, str(bench_dir / f"{name}.py"), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            while process.poll() is None:
                progress.tick(time.time() - started)
                if time.time() - started > timeout:
                    timed_out = True
                    # SIGINT, not SIGTERM: the script's `finally` blocks stop its fleet.
                    process.send_signal(signal.SIGINT)
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            # Ctrl-C reached the benchmark too (same process group); give it time to stop
            # its fleet, then make sure it is gone before the report gives up.
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    after = results.stat().st_mtime if results.exists() else None
    return {
        "started": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.time() - started, 1),
        "args": args,
        "quick": bool(args),
        "exit_code": process.returncode,
        "timed_out": timed_out,
        # Written during this run (a file left from an earlier run does not count).
        "wrote_results": after is not None and not timed_out and after != before,
        "commit": git_commit(),
    }


class Progress:
    """One status line: which benchmark is running, its elapsed time and the whole run's."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total
        self.index = 0
        self.name = ""
        self.run_started = time.time()
        self.status = self.console.status("")

    def __enter__(self) -> Progress:
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def start(self, name: str, args: list[str]) -> None:
        self.index += 1
        self.name = name
        if not self.console.is_terminal:
            # No live line to update (a log, CI): one line per benchmark instead.
            self.console.print(
                f"[{self.index}/{self.total}] {name} {' '.join(args)}".rstrip(), soft_wrap=True
            )
        self.tick(0.0)

    def tick(self, elapsed: float) -> None:
        whole = time.time() - self.run_started
        self.status.update(
            f"[{self.index}/{self.total}] {self.name}: {_clock(elapsed)} "
            f"(all: {_clock(whole)}; output in bench/results/{self.name}.log)"
        )

    def done(self, outcome: Outcome) -> None:
        run = outcome.run or {}
        verdict = outcome.problem or {True: "met", False: "NOT met", None: "no target"}[outcome.met]
        self.console.print(
            f"[{self.index}/{self.total}] {self.name}: {verdict} "
            f"({_clock(run.get('seconds', 0.0))})",
            soft_wrap=True,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def commit_of(outcomes: list[Outcome]) -> str:
    """The commit the results were measured at (the runs', not HEAD's now, after `--only`)."""
    commits = sorted({str(o.run["commit"]) for o in outcomes if o.run and o.run.get("commit")})
    if not commits:
        return git_commit()
    if len(commits) == 1:
        return commits[0]
    return "several (each benchmark's note names its own)"


def git_commit() -> str:
    """HEAD's hash and subject, and whether the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    hash_, _, subject = head.partition(" ")
    subject = subject if len(subject) <= 70 else subject[:67] + "..."
    return f"`{hash_}` ({subject})" + (" plus uncommitted changes" if dirty else "")


def describe_machine() -> dict[str, Any]:
    """harness.host() and the servers' versions (harness needs the bench dir on sys.path)."""
    sys.path.insert(0, str(BENCH_DIR))
    import harness

    machine = harness.host()
    try:
        machine.update(harness.server_versions())
    except Exception as exc:  # the report is still worth writing without the versions
        machine.update(postgres=f"unknown ({exc})", redis="unknown")
    return machine


def main() -> int:
    """Run the benchmarks asked for, then write bench/RESULTS.md from all results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick mode")
    parser.add_argument("--only", default=None, help="comma-separated benchmarks to re-run")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per benchmark"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing, rewrite RESULTS.md"
    )
    args = parser.parse_args()
    names = discover()
    chosen = names
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            parser.error(f"no such benchmark: {', '.join(unknown)} (there are {', '.join(names)})")
    if args.report_only:
        chosen = []
    runs = run_all(chosen, quick=args.quick, timeout=args.timeout)
    outcomes = [read_outcome(name, RESULTS_DIR, runs.get(name)) for name in names]
    REPORT.write_text(
        render(
            outcomes,
            machine=describe_machine(),
            commit=commit_of(outcomes),
            generated=datetime.now(UTC),
        ),
        encoding="utf-8",
    )
    failed = not_met(outcomes)
    print(f"wrote {REPORT}" + (f"; not met or failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
