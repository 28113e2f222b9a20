"""bench/report.py runs each benchmark as a real process: a crash, a missed target and a hang
are each told apart, and a results file an earlier run left is never taken for this run's."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import report

# Fake benchmarks write where the real ones do: results/<name>.json beside the bench directory.
WRITES_AND_MISSES = """
import json, pathlib, sys
here = pathlib.Path(__file__)
out = here.parent.parent / "results" / (here.stem + ".json")
out.write_text(json.dumps({"met": False, "args": sys.argv[1:]}))
sys.exit(1)
"""
CRASHES = """
raise RuntimeError("benchmark crashed before writing")
"""
OK = """
import json, pathlib, sys
# Accepts --quick, as most scripts do.
pathlib.Path(__file__).parent.parent.joinpath("results", "c_ok.json").write_text(
    json.dumps({"met": "--quick" in sys.argv})
)
"""
# Stands for a benchmark stuck with a fleet running: its `finally` is where the fleet stops.
HANGS = """
import pathlib, sys, time
try:
    time.sleep(600)
finally:
    pathlib.Path(sys.argv[1]).write_text("stopped cleanly")
"""


def script(bench: Path, name: str, body: str) -> None:
    # The fake benchmark learns where to write from its first argument.
    (bench / f"{name}.py").write_text(body)


def run(
    bench: Path, results: Path, name: str, args: list[str], timeout: float = 60.0
) -> dict[str, Any]:
    with report.Progress(1) as progress:
        progress.start(name, args)
        return report.run_one(name, args, timeout, progress, bench_dir=bench, results_dir=results)


def test_a_missed_target_still_counts_its_fresh_results(tmp_path: Path) -> None:
    bench, results = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    script(bench, "fake", WRITES_AND_MISSES)
    out = results / "fake.json"
    run_info = run(bench, results, "fake", ["--quick"])
    assert run_info["exit_code"] == 1
    assert run_info["wrote_results"] is True
    assert run_info["timed_out"] is False
    assert json.loads(out.read_text())["args"] == ["--quick"]
    assert run_info["quick"] is True


def test_a_crash_leaves_an_earlier_results_file_unclaimed(tmp_path: Path) -> None:
    bench, results = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    results.mkdir()
    stale = results / "fake.json"
    stale.write_text('{"met": true}')
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    script(bench, "fake", CRASHES)
    run_info = run(bench, results, "fake", [])
    assert run_info["exit_code"] == 1
    assert run_info["wrote_results"] is False
    assert "benchmark crashed before writing" in (results / "fake.log").read_text()
    outcome = report.read_outcome("fake", results, run_info)
    assert outcome.problem is not None
    assert outcome.problem.startswith("failed: exit status 1")


def test_a_hung_benchmark_is_interrupted_so_it_can_stop_its_fleet(tmp_path: Path) -> None:
    bench, results = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    marker = tmp_path / "stopped"
    script(bench, "fake", HANGS)
    started = time.monotonic()
    run_info = run(bench, results, "fake", [str(marker)], timeout=2.0)
    assert time.monotonic() - started < 30
    assert run_info["timed_out"] is True
    assert run_info["wrote_results"] is False
    # SIGINT, not SIGKILL: the script's finally ran (the real ones stop their fleet there).
    assert marker.read_text() == "stopped cleanly"
    outcome = report.read_outcome("fake", results, run_info)
    assert outcome.problem is not None
    assert "timed out" in outcome.problem


def test_the_interpreter_is_the_one_running_the_report(tmp_path: Path) -> None:
    # Benchmarks import outbox and workers: they must run in the project's environment.
    bench, results = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    body = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.executable)"
    script(bench, "fake", body)
    out = results / "fake.json"
    run(bench, results, "fake", [str(out)])
    assert out.read_text() == sys.executable


def test_every_benchmark_runs_even_after_one_crashes_or_misses(tmp_path: Path) -> None:
    # make bench's contract: one benchmark's failure never keeps the next from running.
    bench, results = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    results.mkdir()
    for name, body in [("a_crash", CRASHES), ("b_miss", WRITES_AND_MISSES), ("c_ok", OK)]:
        script(bench, name, body)
    (results / "runs.json").write_text(json.dumps({"older": {"exit_code": 0}}))
    runs = report.run_all(
        report.discover(bench), quick=True, timeout=60, bench_dir=bench, results_dir=results
    )
    assert runs["a_crash"]["exit_code"] == 1
    assert runs["a_crash"]["wrote_results"] is False
    assert runs["b_miss"]["wrote_results"] is True
    assert runs["c_ok"]["exit_code"] == 0
    assert runs["c_ok"]["wrote_results"] is True
    assert runs["c_ok"]["args"] == ["--quick"]  # the script has a --quick flag
    assert runs["older"] == {"exit_code": 0}  # --only keeps what it did not re-run
    assert json.loads((results / "runs.json").read_text()) == runs
