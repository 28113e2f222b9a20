"""`faxout` as an operator runs it: a real subprocess, real Postgres, exit codes and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from outbox import derive_idempotency_key, document_sha256
from tests import fixtures_files as files
from workers.single_host.embedded import free_port

FAXOUT = Path(sys.executable).with_name("faxout")
TO = "+12127365000"


def _faxout(
    *args: str, database_url: str | None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FAXOUT_", "MINTFAX_")) and key not in ("DATABASE_URL", "REDIS_URL")
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra_env or {})
    done = subprocess.run(
        [str(FAXOUT), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert "Traceback" not in done.stderr + done.stdout  # never, whatever went wrong
    return done


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stderr.strip().splitlines()


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT count(*) FROM fax_outbox").fetchone()
    assert found is not None
    return int(found[0])


@pytest.fixture
def pdf_file(tmp_path: Path) -> Path:
    path = tmp_path / "letter.pdf"
    path.write_bytes(files.pdf("cli"))
    return path


def test_db_upgrade_is_idempotent_and_check_then_passes(empty_database_url: str) -> None:
    first = _faxout("db", "upgrade", database_url=empty_database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("database upgraded from empty to ")
    head = first.stdout.split()[-1]
    second = _faxout("db", "upgrade", database_url=empty_database_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"database already at {head}"
    check = _faxout("db", "check", database_url=empty_database_url)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"schema matches the models (revision {head})"


def test_db_check_fails_on_an_unmigrated_database(empty_database_url: str) -> None:
    done = _faxout("db", "check", database_url=empty_database_url)
    assert done.returncode == 1
    [line] = _error_lines(done)
    assert line.startswith("error: database is at revision none, this code expects ")
    assert line.endswith("run `faxout db upgrade`")


@pytest.mark.parametrize("command", [["status"], ["enqueue", "--to", TO, "--reference", "r"]])
def test_commands_on_an_unmigrated_database_say_what_to_do(
    empty_database_url: str, pdf_file: Path, command: list[str]
) -> None:
    if command[0] == "enqueue":
        command = [*command, "--file", str(pdf_file)]
    done = _faxout(*command, database_url=empty_database_url)
    assert done.returncode == 1
    assert _error_lines(done) == [
        "error: the database has no outbox schema yet: run `faxout db upgrade`"
    ]


def test_enqueue_prints_id_key_created_and_is_idempotent(database_url: str, pdf_file: Path) -> None:
    args = ("enqueue", "--to", TO, "--file", str(pdf_file), "--reference", "cli-1")
    first = _faxout(*args, "--retries", "0", database_url=database_url)
    assert first.returncode == 0, first.stderr
    key = derive_idempotency_key(TO, document_sha256(pdf_file.read_bytes()), "cli-1")
    lines = first.stdout.splitlines()
    assert lines[1:] == [f"idempotency_key={key}", "created=true"]
    assert lines[0].startswith("id=")
    assert int(lines[0][3:]) > 0
    again = _faxout(*args, database_url=database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [lines[0], f"idempotency_key={key}", "created=false"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT to_number, filename, retries FROM fax_outbox").fetchall()
    assert row == [(TO, "letter.pdf", 0)]


def test_a_long_explicit_key_is_printed_on_one_line(database_url: str, pdf_file: Path) -> None:
    key = "k" * 200
    done = _faxout(
        "enqueue", "--to", TO, "--file", str(pdf_file), "--reference", "r",
        "--idempotency-key", key,
        database_url=database_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"idempotency_key={key}"


def test_bad_input_exits_2_with_one_line_per_problem_and_writes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    spoofed = tmp_path / "scan.pdf"
    spoofed.write_bytes(files.png())  # a PNG named .pdf
    done = _faxout(
        "enqueue", "--to", "+1 212", "--file", str(spoofed), "--reference", "x" * 256,
        "--retries", "11",
        database_url=database_url,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert sorted(_error_lines(done)) == [
        "error: filename: has a PDF name but the content is PNG",
        "error: reference: is longer than 255 characters",
        "error: retries: is 11; it must be from 0 to 10",
        "error: to: is not a valid number for its country",
    ]
    assert _rows(database_url) == 0


def test_a_missing_file_is_named_verbatim(database_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "[red]missing.pdf"  # looks like markup; must be shown as typed
    done = _faxout(
        "enqueue", "--to", TO, "--file", str(missing), "--reference", "r",
        database_url=database_url,
    )  # fmt: skip
    assert done.returncode == 2
    assert _error_lines(done) == [
        "error: document: cannot read '[red]missing.pdf': No such file or directory"
    ]


def test_production_refuses_sandbox_numbers(database_url: str, pdf_file: Path) -> None:
    args = ("enqueue", "--to", "+15005550006", "--file", str(pdf_file), "--reference", "r")
    refused = _faxout(
        *args, database_url=database_url, extra_env={"FAXOUT_ENVIRONMENT": "production"}
    )
    assert refused.returncode == 2
    assert _error_lines(refused) == ["error: to: is a sandbox test number; refused in production"]
    assert _rows(database_url) == 0
    accepted = _faxout(*args, database_url=database_url)  # sandbox is the default
    assert accepted.returncode == 0, accepted.stderr


def test_an_explicit_key_reused_for_another_fax_is_refused(
    database_url: str, pdf_file: Path
) -> None:
    base = ("enqueue", "--to", TO, "--file", str(pdf_file), "--idempotency-key", "mine")
    assert _faxout(*base, "--reference", "a", database_url=database_url).returncode == 0
    done = _faxout(*base, "--reference", "b", database_url=database_url)
    assert done.returncode == 2
    [line] = _error_lines(done)
    assert line.startswith("error: idempotency_key: already used by fax ")
    assert _rows(database_url) == 1


def test_a_non_integer_retries_is_a_usage_error(database_url: str, pdf_file: Path) -> None:
    done = _faxout(
        "enqueue", "--to", TO, "--file", str(pdf_file), "--reference", "r", "--retries", "many",
        database_url=database_url,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--retries" in done.stderr


def test_status_counts_by_status(database_url: str, pdf_file: Path) -> None:
    for reference in ("s-1", "s-2"):
        enqueued = _faxout(
            "enqueue", "--to", TO, "--file", str(pdf_file), "--reference", reference,
            database_url=database_url,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
    done = _faxout("status", database_url=database_url)
    assert done.returncode == 0, done.stderr
    counts = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            counts[cells[0]] = int(cells[1])
    assert counts["pending"] == 2
    assert counts["total"] == 2
    assert counts["delivered"] == 0
    assert set(counts) >= {"pending", "sending", "submitted", "needs_review", "total"}


@pytest.mark.parametrize(
    "command", [["status"], ["db", "upgrade"], ["db", "check"], ["enqueue", "--to", TO]]
)
def test_missing_database_url_is_a_clear_exit_2(command: list[str], tmp_path: Path) -> None:
    if command[0] == "enqueue":
        command = [*command, "--file", str(tmp_path / "x.pdf"), "--reference", "r"]
    done = _faxout(*command, database_url=None)
    assert done.returncode == 2
    assert _error_lines(done) == ["error: DATABASE_URL is not set"]


def test_malformed_environment_is_a_clear_exit_2(database_url: str) -> None:
    done = _faxout("status", database_url=database_url, extra_env={"FAXOUT_ENVIRONMENT": "prod"})
    assert done.returncode == 2
    [line] = _error_lines(done)
    assert "FAXOUT_ENVIRONMENT" in line
    assert "'sandbox' or 'production'" in line


def test_a_non_postgres_url_is_refused_without_showing_its_password() -> None:
    done = _faxout("status", database_url="mysql://app:s3cret-pw@db.internal/app")
    assert done.returncode == 2
    [line] = _error_lines(done)
    assert "DATABASE_URL" in line
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_an_unreachable_database_is_one_line_and_exit_1() -> None:
    url = f"postgresql://faxout:s3cret-pw@127.0.0.1:{free_port()}/faxout?connect_timeout=5"
    done = _faxout("status", database_url=url)
    assert done.returncode == 1
    [line] = _error_lines(done)
    assert line.startswith("error: database unavailable: ")
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_status_with_redis_down_still_shows_the_outbox(database_url: str) -> None:
    # Counts and pauses come from Postgres; an unreachable Redis is one line, not a traceback.
    done = _faxout(
        "status",
        database_url=database_url,
        extra_env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert done.returncode == 0, done.stderr
    assert "pending" in done.stdout
    assert "redis: unavailable (FleetStateUnavailable)" in done.stdout


def test_faxout_sandbox_hands_its_arguments_to_the_simulator() -> None:
    helped = _faxout("sandbox", "--help", database_url=None)
    assert helped.returncode == 0, helped.stderr
    assert "faxout sandbox" in helped.stdout and "--rate-limit-per-minute" in helped.stdout
    refused = _faxout("sandbox", "--port", "70000", database_url=None)
    assert refused.returncode == 2
    assert _error_lines(refused) == ["error: --port must be 0-65535"]
