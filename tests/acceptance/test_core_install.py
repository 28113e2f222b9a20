"""The core install (`pip install fax-outbox`, no extras) in a virtualenv of its own.

What an application that only enqueues gets: `import outbox`, `enqueue_fax`, `faxout db`,
`faxout enqueue`, `faxout status`, on a real database; no Celery, redis, httpx or web server;
and every command that needs an extra says which one in one line, exit 2, no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fixtures_files as files

ROOT = Path(__file__).resolve().parents[2]
# What the sdist of the project holds (pyproject's packages and readme).
SOURCES = ("pyproject.toml", "README.md", "outbox", "workers", "mintfax_sandbox", "migrations")
ABSENT_IN_CORE = ("celery", "kombu", "redis", "httpx", "flower", "starlette", "uvicorn")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install <this checkout>`, no extras."""
    base = tmp_path_factory.mktemp("core-install")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _run(
    venv: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAXOUT_", "MINTFAX_", "PYTHON"))
        and k not in ("DATABASE_URL", "REDIS_URL")
    }
    done = subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=venv,  # not the checkout: only what was installed can be imported
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def test_core_install_has_no_worker_or_web_dependencies(core_venv: Path) -> None:
    probe = (
        "import importlib.util, json\n"
        f"print(json.dumps([m for m in {ABSENT_IN_CORE!r} if importlib.util.find_spec(m)]))"
    )
    done = _run(core_venv, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_core_install_migrates_and_enqueues_on_a_real_database(
    core_venv: Path, empty_database_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": empty_database_url}
    upgraded = _run(core_venv, "faxout", "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert _run(core_venv, "faxout", "db", "check", env=env).returncode == 0

    script = (
        "import os, sys\n"
        "from sqlalchemy import create_engine, text\n"
        "from outbox import enqueue_fax\n"
        "from outbox.settings import sqlalchemy_url\n"
        "engine = create_engine(sqlalchemy_url(os.environ['DATABASE_URL']))\n"
        "with engine.begin() as conn:\n"
        "    first = enqueue_fax(conn, to='+12127365000', document=sys.argv[1].encode(),\n"
        "                        filename='note.txt', reference='core-1')\n"
        "with engine.begin() as conn:\n"
        "    again = enqueue_fax(conn, to='+12127365000', document=sys.argv[1].encode(),\n"
        "                        filename='note.txt', reference='core-1')\n"
        "    status = conn.execute(text('SELECT status FROM fax_outbox WHERE id = :id'),\n"
        "                          {'id': first.id}).scalar_one()\n"
        "print(first.created, again.created, first.id == again.id, status)\n"
    )
    helper = _run(core_venv, "python", "-c", script, "a plain text fax", env=env)
    assert helper.returncode == 0, helper.stderr
    assert helper.stdout.split() == ["True", "False", "True", "pending"]

    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(files.pdf("core"))
    cli = _run(
        core_venv,
        "faxout",
        "enqueue",
        "--to",
        "+12127365001",
        "--file",
        str(pdf),
        "--reference",
        "core-2",
        env=env,
    )
    assert cli.returncode == 0, cli.stderr
    assert "created=true" in cli.stdout.splitlines()

    # status works without the worker extra, and says what it cannot show.
    shown = _run(core_venv, "faxout", "status", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert shown.returncode == 0, shown.stderr
    assert "pending" in shown.stdout and "fax-outbox[worker]" in shown.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (("faxout", "relay"), "[worker]"),
        (("faxout", "pause"), "[worker]"),
        (("faxout", "resume"), "[worker]"),
        (("faxout", "sandbox", "--port", "0"), "[sandbox]"),
        (("faxout", "demo"), "[worker,sandbox,embedded]"),
    ],
)
def test_a_command_whose_extra_is_missing_names_it_in_one_line(
    core_venv: Path, argv: tuple[str, ...], extra: str
) -> None:
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "REDIS_URL": "redis://x:1/0"}
    if argv[1] == "demo":
        env = {}  # unset URLs: the demo would start embedded servers
    done = _run(core_venv, *argv, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'fax-outbox{extra}'" in lines[0]
