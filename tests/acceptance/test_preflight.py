"""`faxout preflight` as an operator runs it, against a running system of real processes.

One system per module (the simulator, the webhook receiver registered at it, a Celery worker, a
relay, beat and Flower, on a database and Redis index of its own): every item passes against
it. Each failing configuration is the same system seen through changed settings (or a fresh
simulator, database or git checkout of the test's own), and must show the failing item, its
fix and exit 1; a configuration that cannot be read exits 2. No run may print a secret.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from pydantic import SecretStr

from outbox.fax_client import MintfaxClient
from outbox.preflight import Outcome, check_webhook_signature
from outbox.settings import Settings
from tests.acceptance.fleet import API_KEY, fleet_env, log_dir
from tests.conftest import _admin, _with_database
from tests.sandbox_fixtures import SandboxHandle, WebhookSink
from workers.single_host import embedded
from workers.single_host.embedded import free_port
from workers.single_host.stack import Stack

FAXOUT = Path(sys.executable).with_name("faxout")
ITEMS = (
    "api_key_environment",
    "no_live_key_in_git",
    "webhook_endpoint",
    "webhook_signature",
    "balance",
    "low_balance_threshold",
    "rate_limit",
    "postgres",
    "migrations",
    "redis",
    "fleet_alive",
    "flower",
    "retention",
    "test_numbers",
)
SANDBOX_RATE_LIMIT = 600
# Not used by any other test's Redis (tests/conftest.py hands out 1 + the xdist worker number).
REDIS_INDEX = 13
LIVE_KEY = "fx_live_4eC39HqLyjWDarjtT1zdp7dc"


@dataclass
class System:
    """The running system and the environment under which preflight passes against it."""

    stack: Stack
    env: dict[str, str]
    receiver: str  # the receiver's URL, as registered at the simulator
    secret: str
    repo: Path  # a clean git checkout


def _git_checkout(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "--", *files], check=True)
    return path


@pytest.fixture(scope="module")
def system(
    service_urls: embedded.ServiceURLs,
    template_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[System]:
    """Everything `faxout preflight` checks, running, and the settings that describe it."""
    database = f"faxout_pf_{uuid.uuid4().hex[:12]}"
    with _admin(service_urls) as admin:
        admin.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template_database}"')
    database_url = _with_database(service_urls.database_url, database)
    parts = urlsplit(service_urls.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_INDEX}", parts.query, ""))
    redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("preflight")
    stack = Stack(fleet_env(database_url, redis_url), log_dir(root))
    try:
        base_url = stack.start_sandbox("--rate-limit-per-minute", str(SANDBOX_RATE_LIMIT))
        stack.env["MINTFAX_BASE_URL"] = base_url
        port = free_port()
        receiver = f"http://127.0.0.1:{port}/webhooks/mintfax"
        with MintfaxClient(base_url, SecretStr(API_KEY), timeout=10) as client:
            _, secret = client.create_webhook(receiver)  # every event
        stack.start_webhooks(port, secret=secret.get_secret_value())
        stack.start_worker("worker0", 1)
        stack.start_relay("relay0")
        stack.start_beat()
        flower = stack.start_flower()
        stack.wait_for_worker_ready("worker0")
        env = {
            **stack.env,
            "MINTFAX_WEBHOOK_SECRET": secret.get_secret_value(),
            "FAXOUT_RATE_LIMIT_PER_MINUTE": str(SANDBOX_RATE_LIMIT),
            "FAXOUT_FLOWER_URL": flower,
            "FAXOUT_RETENTION_DAYS": "30",
        }
        repo = _git_checkout(root / "repo", {"README.md": "fx_live_ keys never go here\n"})
        yield System(stack, env, receiver, secret.get_secret_value(), repo)
    finally:
        stack.stop_all(grace=15)
        with _admin(service_urls) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stdout)
        return result

    def items(self) -> dict[str, dict[str, Any]]:
        return {check["name"]: check for check in self.report()["checks"]}

    def failed(self) -> dict[str, dict[str, Any]]:
        return {n: c for n, c in self.items().items() if c["outcome"] == "failed"}


def preflight(
    env: dict[str, str], *args: str, repo: Path | None = None, cwd: Path | None = None
) -> Run:
    """`faxout preflight ARGS` as a process (with `--repo` when given); asserts no traceback and
    no secret of `env` in its output."""
    argv = [str(FAXOUT), "preflight", *args]
    if repo is not None:
        argv += ["--repo", str(repo)]
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=120, check=False, cwd=cwd
    )
    run = Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    for name in ("MINTFAX_API_KEY", "MINTFAX_WEBHOOK_SECRET"):
        for secret in env.get(name, "").split(","):
            if secret:
                assert secret not in output, f"{name} leaked: {output}"
                assert secret[9:] not in output, f"part of {name} leaked: {output}"
    for name in ("DATABASE_URL", "REDIS_URL", "FAXOUT_FLOWER_URL"):
        password = urlsplit(env.get(name, "")).password
        if password:
            assert password not in output, f"the password of {name} leaked: {output}"
    return run


def assert_only_failure(run: Run, item: str, *fix_words: str) -> dict[str, Any]:
    """`item` failed, with a fix naming `fix_words`, everything else passed, and exit 1."""
    assert run.code == 1, (run.code, run.stdout, run.stderr)
    failures = run.failed()
    assert list(failures) == [item], json.dumps(failures, indent=2)
    check = failures[item]
    assert check["fix"], check
    for word in fix_words:
        assert word in check["fix"], check
    assert run.report()["ok"] is False
    return check


# -- the passing configuration -------------------------------------------------------------


def test_every_item_passes_against_the_running_system(system: System) -> None:
    run = _wait_for_a_pass(system)
    assert run.code == 0, run.stdout
    items = run.items()
    assert tuple(items) == ITEMS
    assert {c["outcome"] for c in items.values()} == {"passed"}, json.dumps(items, indent=2)
    assert all(c["fix"] is None for c in items.values())
    assert "receive fax.delivered, fax.failed, balance.low" in items["webhook_endpoint"]["detail"]
    assert "refused a wrong and a stale signature" in items["webhook_signature"]["detail"]
    assert "mintfax allows 600/min" in items["rate_limit"]["detail"]
    assert "beat, relay, webhooks, worker" in items["fleet_alive"]["detail"]


def _wait_for_a_pass(system: System, timeout: float = 30) -> Run:
    # The processes publish their first heartbeat a moment after they start.
    deadline = time.monotonic() + timeout
    while True:
        run = preflight(system.env, "--json", repo=system.repo)
        if run.code == 0 or time.monotonic() > deadline:
            return run
        time.sleep(1)


def test_the_human_output_is_one_line_per_item_then_a_summary(system: System) -> None:
    _wait_for_a_pass(system)
    run = preflight({**system.env, "COLUMNS": "60"}, repo=system.repo)
    assert run.code == 0, run.stdout
    lines = run.stdout.splitlines()
    assert len(lines) == len(ITEMS) + 1, run.stdout
    for line, item in zip(lines, ITEMS, strict=False):
        assert line.startswith("PASS"), line
        assert line.split()[1] == item
    assert lines[-1] == f"{len(ITEMS)} passed, 0 failed, 0 skipped"


def test_the_self_test_uses_the_configured_receiver_url_and_each_secret(system: System) -> None:
    rotation = f"{system.secret},whsec_retired000000000000000000000"
    env = {**system.env, "FAXOUT_WEBHOOK_SELF_TEST_URL": system.receiver}
    _wait_for_a_pass(system)
    assert preflight(env, "--json", repo=system.repo).code == 0
    # The receiver holds only the current secret: an overlap preflight claims is refused.
    run = preflight({**env, "MINTFAX_WEBHOOK_SECRET": rotation}, "--json", repo=system.repo)
    check = assert_only_failure(run, "webhook_signature", "MINTFAX_WEBHOOK_SECRET")
    assert "answered 401" in check["detail"] and "secret 2 of 2" in check["detail"]


# -- failing configurations ----------------------------------------------------------------


def test_a_live_key_in_a_sandbox_deployment_fails_the_key_item(system: System) -> None:
    run = preflight({**system.env, "MINTFAX_API_KEY": LIVE_KEY}, "--json", repo=system.repo)
    assert run.code == 1
    check = run.failed()["api_key_environment"]
    assert "live key" in check["detail"] and "FAXOUT_ENVIRONMENT" in check["fix"]
    # The simulator refuses a live key too, so what needs mintfax fails with its answer.
    assert "401" in run.failed()["balance"]["detail"]


def test_a_test_key_in_production_fails_the_key_item(system: System) -> None:
    run = preflight({**system.env, "FAXOUT_ENVIRONMENT": "production"}, "--json", repo=system.repo)
    check = assert_only_failure(run, "api_key_environment", "fx_live_")
    assert "sandbox (test) key" in check["detail"]


def test_a_live_key_in_a_tracked_file_is_named_by_file_and_line_only(
    system: System, tmp_path: Path
) -> None:
    repo = _git_checkout(
        tmp_path / "leaky",
        {
            "README.md": "# app\n",
            "deploy/settings.py": f'DEBUG = False\nMINTFAX_API_KEY = "{LIVE_KEY}"\n',
            "notes.txt": f"old key: m{LIVE_KEY}\n",
        },
    )
    # An ignored, untracked file may hold the key (that is where it belongs).
    (repo / ".env").write_text(f"MINTFAX_API_KEY={LIVE_KEY}\n")
    run = preflight(system.env, "--json", repo=repo / "deploy")
    check = assert_only_failure(run, "no_live_key_in_git", "revoke")
    assert check["detail"] == (
        "2 live key(s) in files git tracks: deploy/settings.py:2, notes.txt:1"
    )
    assert LIVE_KEY not in run.stdout and LIVE_KEY[8:] not in run.stdout


def test_the_configured_live_key_is_found_whatever_its_shape(
    system: System, tmp_path: Path
) -> None:
    odd = "fx_live_" + "Z" * 3  # too short for the pattern: found because it is the key
    repo = _git_checkout(tmp_path / "r", {"a.cfg": f"\n\nkey={odd}\n"})
    env = {**system.env, "MINTFAX_API_KEY": odd, "FAXOUT_ENVIRONMENT": "production"}
    run = preflight(env, "--json", repo=repo)
    check = run.failed()["no_live_key_in_git"]
    assert check["detail"].endswith("a.cfg:3")
    assert odd not in run.stdout


def test_outside_a_git_checkout_the_scan_is_skipped_with_the_reason(
    system: System, tmp_path: Path
) -> None:
    run = preflight(system.env, "--json", cwd=tmp_path)  # the default: the current directory
    items = run.items()
    assert items["no_live_key_in_git"]["outcome"] == "skipped"
    assert "not inside a git checkout" in items["no_live_key_in_git"]["detail"]
    assert run.code == 0, run.stdout  # skipped is not failed


def _fresh_mintfax(
    system: System, sandbox: SandboxHandle, events: list[str] | None
) -> dict[str, str]:
    """Settings pointing at a simulator of the test's own, with an endpoint for `events`
    (None: all) at the system's receiver; preflight's self-test goes to the receiver."""
    with MintfaxClient(sandbox.base_url, SecretStr(sandbox.api_key), timeout=10) as client:
        client.create_webhook(system.receiver, events)
    return {
        **system.env,
        "MINTFAX_BASE_URL": sandbox.base_url,
        "MINTFAX_API_KEY": sandbox.api_key,
        "FAXOUT_RATE_LIMIT_PER_MINUTE": "60",  # the fixture's simulator allows 60/min
        "FAXOUT_WEBHOOK_SELF_TEST_URL": system.receiver,
    }


def test_an_endpoint_missing_a_required_event_fails(system: System, sandbox: SandboxHandle) -> None:
    env = _fresh_mintfax(system, sandbox, ["fax.delivered", "fax.failed", "fax.queued"])
    check = assert_only_failure(
        preflight(env, "--json", repo=system.repo), "webhook_endpoint", "faxout webhooks register"
    )
    assert check["detail"] == "no active endpoint subscribes to balance.low"


def test_no_endpoint_registered_fails(system: System, sandbox: SandboxHandle) -> None:
    env = {**_fresh_mintfax(system, sandbox, None)}
    with MintfaxClient(sandbox.base_url, SecretStr(sandbox.api_key), timeout=10) as client:
        for endpoint in client.list_webhooks():
            client.delete_webhook(endpoint["id"])
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), "webhook_endpoint")
    assert "no active webhook endpoint" in check["detail"]


def test_zero_balance_fails(system: System, sandbox: SandboxHandle) -> None:
    env = _fresh_mintfax(system, sandbox, None)
    sandbox.set_balance(0)
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), "balance", "credits")
    assert check["detail"] == "available balance is 0 cents (0 held)"


def test_a_rate_limit_above_mintfaxs_fails_naming_mintfaxs_figure(system: System) -> None:
    env = {**system.env, "FAXOUT_RATE_LIMIT_PER_MINUTE": str(SANDBOX_RATE_LIMIT + 1)}
    check = assert_only_failure(
        preflight(env, "--json", repo=system.repo),
        "rate_limit",
        f"FAXOUT_RATE_LIMIT_PER_MINUTE={SANDBOX_RATE_LIMIT} or less",
    )
    assert f"above mintfax's limit of {SANDBOX_RATE_LIMIT}/min" in check["detail"]


def test_a_wrong_webhook_secret_fails_the_self_test(system: System) -> None:
    env = {**system.env, "MINTFAX_WEBHOOK_SECRET": "whsec_not_the_receivers_secret_0000"}
    check = assert_only_failure(
        preflight(env, "--json", repo=system.repo), "webhook_signature", "MINTFAX_WEBHOOK_SECRET"
    )
    assert "answered 401" in check["detail"]


def test_no_webhook_secret_fails(system: System) -> None:
    env = {k: v for k, v in system.env.items() if k != "MINTFAX_WEBHOOK_SECRET"}
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), "webhook_signature")
    assert "MINTFAX_WEBHOOK_SECRET is not set" in check["detail"]


def test_a_receiver_that_accepts_any_signature_fails(
    system: System, webhook_sink: WebhookSink
) -> None:
    env = {**system.env, "FAXOUT_WEBHOOK_SELF_TEST_URL": webhook_sink.url}
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), "webhook_signature")
    assert "answered 200 to a wrong signature and 200" in check["detail"]
    # What it was sent is signed as mintfax signs, with an event type nobody acts on.
    first = webhook_sink.events()[0]
    assert first["event"] == "faxout.preflight" and first["data"] == {}


def test_a_receiver_that_cannot_record_fails(system: System, webhook_sink: WebhookSink) -> None:
    webhook_sink.responses = [503]
    env = {**system.env, "FAXOUT_WEBHOOK_SELF_TEST_URL": webhook_sink.url}
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), "webhook_signature")
    assert "answered 503" in check["detail"]


def test_the_self_test_event_changes_nothing_but_its_own_record(system: System) -> None:
    from sqlalchemy import text

    from outbox.db import make_engine

    engine = make_engine(system.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            before = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM fax_outbox), (SELECT count(*) FROM alerts),"
                    " (SELECT count(*) FROM fleet_pauses)"
                )
            ).one()
        _wait_for_a_pass(system)
        with engine.connect() as conn:
            after = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM fax_outbox), (SELECT count(*) FROM alerts),"
                    " (SELECT count(*) FROM fleet_pauses)"
                )
            ).one()
            outcomes = (
                conn.execute(
                    text(
                        "SELECT DISTINCT outcome FROM fax_events"
                        " WHERE event_type = 'faxout.preflight'"
                    )
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert tuple(after) == tuple(before)
    assert outcomes == ["ignored"]


def test_an_unmigrated_database_fails_migrations(system: System, empty_database_url: str) -> None:
    run = preflight({**system.env, "DATABASE_URL": empty_database_url}, "--json", repo=system.repo)
    assert run.code == 1
    failures = run.failed()
    assert failures["migrations"]["fix"] == "run `faxout db upgrade`"
    assert "revision none (empty)" in failures["migrations"]["detail"]
    assert set(failures) == {"migrations", "fleet_alive"}  # no heartbeats table either


def test_a_fleet_that_is_not_running_fails_naming_each_missing_role(
    system: System, database_url: str
) -> None:
    # A migrated database no process of the system writes to: no heartbeat at all.
    check = assert_only_failure(
        preflight({**system.env, "DATABASE_URL": database_url}, "--json", repo=system.repo),
        "fleet_alive",
        "celery -A workers.app beat",
    )
    assert check["detail"].endswith("worker, relay, beat")


def test_postgres_down_fails_and_what_needs_it_is_skipped(system: System) -> None:
    url = f"postgresql://postgres:pg-canary-pw@127.0.0.1:{free_port()}/nowhere"
    run = preflight({**system.env, "DATABASE_URL": url}, "--json", repo=system.repo)
    check = assert_only_failure(run, "postgres", "DATABASE_URL")
    assert check["detail"].startswith("unreachable: OperationalError")
    items = run.items()
    assert items["migrations"]["outcome"] == items["fleet_alive"]["outcome"] == "skipped"


def test_redis_down_fails(system: System) -> None:
    url = f"redis://:redis-canary-pw@127.0.0.1:{free_port()}/0"
    check = assert_only_failure(
        preflight({**system.env, "REDIS_URL": url}, "--json", repo=system.repo),
        "redis",
        "REDIS_URL",
    )
    assert "unreachable: ConnectionError" in check["detail"]
    assert "redis://:***@127.0.0.1" in check["detail"]


@pytest.mark.parametrize(
    ("setting", "value", "item", "words"),
    [
        ("FAXOUT_FLOWER_URL", None, "flower", "FAXOUT_FLOWER_URL is not set"),
        ("FAXOUT_RETENTION_DAYS", None, "retention", "FAXOUT_RETENTION_DAYS is not set"),
        ("FAXOUT_LOW_BALANCE_CENTS", "0", "low_balance_threshold", "FAXOUT_LOW_BALANCE_CENTS is 0"),
    ],
)
def test_a_missing_setting_fails_its_item(
    system: System, setting: str, value: str | None, item: str, words: str
) -> None:
    env = {k: v for k, v in system.env.items() if k != setting}
    if value is not None:
        env[setting] = value
    check = assert_only_failure(preflight(env, "--json", repo=system.repo), item, setting)
    assert words in check["detail"]


def test_flower_down_fails_without_showing_its_password(system: System) -> None:
    url = f"http://admin:flower-canary-pw@127.0.0.1:{free_port()}"
    check = assert_only_failure(
        preflight({**system.env, "FAXOUT_FLOWER_URL": url}, "--json", repo=system.repo),
        "flower",
        "FAXOUT_FLOWER_URL",
    )
    assert "http://127.0.0.1:" in check["detail"] and "unreachable" in check["detail"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a wrong URL that would hang)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_urls_that_never_answer_fail_within_the_timeout(system: System, silent_port: int) -> None:
    silent = f"http://127.0.0.1:{silent_port}"
    env = {
        **system.env,
        "MINTFAX_BASE_URL": f"{silent}/v1",
        "FAXOUT_WEBHOOK_SELF_TEST_URL": f"{silent}/webhooks/mintfax",
        "FAXOUT_FLOWER_URL": silent,
        "REDIS_URL": f"redis://127.0.0.1:{silent_port}/0",
    }
    run = preflight(env, "--json", "--timeout", "1", repo=system.repo)
    assert run.code == 1
    failures = run.failed()
    assert set(failures) == {
        "webhook_endpoint",
        "webhook_signature",
        "balance",
        "rate_limit",
        "redis",
        "flower",
    }, json.dumps(failures, indent=2)
    assert "timed out" in failures["balance"]["detail"]
    assert "ReadTimeout" in failures["flower"]["detail"]
    # Six calls that would each hang, one second each at most (plus the start of a process).
    assert run.seconds < 15, run.seconds


def test_an_unreadable_configuration_exits_2(system: System) -> None:
    env = {**system.env, "FAXOUT_RATE_LIMIT_PER_MINUTE": "lots"}
    run = preflight(env, "--json", repo=system.repo)
    assert run.code == 2
    assert "FAXOUT_RATE_LIMIT_PER_MINUTE" in run.report()["configuration_error"]
    assert "FAXOUT_RATE_LIMIT_PER_MINUTE" in run.stderr
    human = preflight(env, repo=system.repo)
    assert human.code == 2 and human.stdout == ""


def test_no_secret_is_printed_when_everything_fails(system: System, tmp_path: Path) -> None:
    env = {
        **system.env,
        "MINTFAX_API_KEY": LIVE_KEY,
        "MINTFAX_WEBHOOK_SECRET": "whsec_canary_secret_value_123456",
        "DATABASE_URL": f"postgresql://postgres:pg-canary-pw@127.0.0.1:{free_port()}/x",
        "REDIS_URL": f"redis://:redis-canary-pw@127.0.0.1:{free_port()}/0",
        "FAXOUT_FLOWER_URL": f"http://u:flower-canary-pw@127.0.0.1:{free_port()}",
        "FAXOUT_WEBHOOK_SELF_TEST_URL": f"http://127.0.0.1:{free_port()}/hook/tok-canary-path",
    }
    repo = _git_checkout(tmp_path / "r", {"k.txt": LIVE_KEY})
    for args in (("--json",), ()):
        run = preflight(env, *args, "--timeout", "2", repo=repo)  # asserts no secret printed
        assert run.code == 1
        assert "tok-canary-path" not in run.stdout + run.stderr


def test_two_runs_at_once_both_pass(system: System) -> None:
    _wait_for_a_pass(system)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: preflight(system.env, "--json", repo=system.repo), [1, 2]))
    assert [run.code for run in runs] == [0, 0], [run.failed() for run in runs]


@pytest.mark.parametrize("skew_minutes", [-10, 10])
def test_a_clock_minutes_off_fails_the_self_test_naming_the_clock(
    system: System, skew_minutes: int
) -> None:
    # Preflight signs as mintfax would, on its own clock: a receiver whose clock disagrees by
    # more than mintfax's 5 minutes refuses real webhooks as well.
    settings = Settings.from_env(system.env)
    result = check_webhook_signature(
        settings,
        system.receiver,
        timeout=5,
        now=lambda: datetime.now(UTC) + timedelta(minutes=skew_minutes),
    )
    assert result.outcome is Outcome.FAILED
    assert "answered 401" in result.detail and "clock" in result.detail
    assert result.fix is not None and "clock" in result.fix


def test_a_killed_beat_fails_the_fleet_item_naming_beat(system: System) -> None:
    # Last in this module: the system runs without beat from here on.
    _wait_for_a_pass(system)
    system.stack.signal("beat", signal.SIGKILL)
    settings = Settings.from_env(system.env)
    deadline = time.monotonic() + 3 * settings.heartbeat_seconds + 20
    while True:
        run = preflight(system.env, "--json", repo=system.repo)
        if run.code != 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    check = assert_only_failure(run, "fleet_alive", "celery -A workers.app beat")
    assert "from: beat" in check["detail"]
