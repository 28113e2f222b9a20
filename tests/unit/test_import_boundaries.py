"""The layout's rules, checked on the source: who may import whom, and no import circles.

DESIGN section 4: `workers -> outbox`, never the reverse; `mintfax_sandbox` imports neither (it
must judge what it receives with its own code); no import circle anywhere, counting imports made
inside functions too (a circle hidden in a function is still a circle). And what a core install
imports: `import outbox` and the `faxout` CLI module must not pull in Celery, redis, httpx or a
web server, or an application that only enqueues would need the `[worker]` extra.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("outbox", "workers", "mintfax_sandbox", "migrations")
WORKER_AND_SANDBOX_MODULES = (
    "celery",
    "kombu",
    "redis",
    "httpx",
    "flower",
    "prometheus_client",
    "starlette",
    "uvicorn",
    "mintfax_sandbox",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, wherever in the file the import statement is."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in known else base)
    return {t for t in targets if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_layout_has_its_packages() -> None:
    modules = _modules()
    assert "mintfax_sandbox" in modules and "workers.single_host.embedded" in modules
    assert not any(m.startswith("workers.sandbox") for m in modules)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("outbox", ("workers", "mintfax_sandbox")),
        ("mintfax_sandbox", ("outbox", "workers")),
        ("migrations", ("workers", "mintfax_sandbox")),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in forbidden
    )
    assert wrong == []


def test_no_import_circles() -> None:
    graph = _graph()
    # Tarjan's strongly connected components: any component of two or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_the_circle_finder_finds_a_circle(tmp_path: Path) -> None:
    # The check above must be able to fail: two modules that import each other are found.
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    known = {"pkg.a", "pkg.b"}
    assert _imports("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}
    assert _imports("pkg.b", tmp_path / "b.py", known) == {"pkg.a"}


@pytest.mark.parametrize(
    "statement",
    [
        "import outbox",
        "from outbox import enqueue_fax, enqueue_faxes, schema",
        "import workers.cli",
        # What `faxout list|show|retry|cancel` import when they run (core install).
        "from outbox import operations",
        "import mintfax_sandbox",
    ],
)
def test_core_imports_pull_in_no_worker_or_sandbox_module(statement: str) -> None:
    probe = (
        f"{statement}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = set(json.loads(done.stdout))
    own = statement.split()[1].split(".")[0]
    assert sorted(loaded.intersection(WORKER_AND_SANDBOX_MODULES) - {own}) == []
