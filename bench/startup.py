"""Start-up cost: `import outbox` (what an application pays) and `faxout --help` (an operator).

Each command runs in a fresh interpreter, rounds interleaved so that machine noise falls on every
side alike; the baseline is `python -c pass` measured in the same rounds, and each figure is
reported as its median and as the median minus the baseline (the cost of our imports alone).
`--compare PATH` measures another checkout of the project side by side (for example a git
worktree of an earlier commit), so a before/after pair comes from one run.

    .venv/bin/python bench/startup.py [--rounds 21] [--compare /tmp/before]

Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "startup.json"
COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "import outbox": ["-c", "import outbox"],
    "faxout --help": ["-m", "workers.cli", "--help"],
}


def _time_once(tree: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--compare", type=Path, help="another checkout to measure alongside")
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.compare:
        trees["compared tree"] = args.compare.resolve()
    samples: dict[tuple[str, str], list[float]] = {
        (tree, command): [] for tree in trees for command in COMMANDS
    }
    for path in trees.values():  # warm the bytecode caches and the OS page cache
        for argv in COMMANDS.values():
            _time_once(path, argv)
    for round_number in range(args.rounds):
        order = list(samples)
        if round_number % 2:
            order.reverse()
        for tree, command in order:
            samples[(tree, command)].append(_time_once(trees[tree], COMMANDS[command]))

    rows = []
    for tree in trees:
        baseline = statistics.median(samples[(tree, "python -c pass (baseline)")])
        for command in COMMANDS:
            median = statistics.median(samples[(tree, command)])
            rows.append(
                {
                    "tree": tree,
                    "command": command,
                    "median_ms": round(median, 1),
                    "over_baseline_ms": round(median - baseline, 1),
                }
            )
    if args.compare:
        for command in list(COMMANDS)[1:]:
            now, then = (
                next(r for r in rows if r["tree"] == t and r["command"] == command)
                for t in ("this tree", "compared tree")
            )
            ratio = now["over_baseline_ms"] / max(then["over_baseline_ms"], 0.1)
            rows.append({"tree": "ratio this/compared", "command": command, "ratio": ratio})

    print(f"{'tree':<22} {'command':<28} {'median ms':>10} {'over baseline':>14}")
    for row in rows:
        if "ratio" in row:
            print(f"{row['tree']:<22} {row['command']:<28} {row['ratio']:>25.2f}x")
        else:
            print(
                f"{row['tree']:<22} {row['command']:<28} "
                f"{row['median_ms']:>10.1f} {row['over_baseline_ms']:>14.1f}"
            )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python "
                f"{platform.python_version()}",
                "rounds": args.rounds,
                "rows": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
