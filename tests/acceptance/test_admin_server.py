"""`faxout admin serve` as an operator runs it, on a real database and Redis: `/metrics` parses
and matches the tables (across two servers and a restart: nothing is kept in a process), the
dashboard in a real headless Chromium shows the database's figures (a screenshot is kept under
tests/artifacts/), basic auth is demanded beyond loopback, Redis or Postgres down. And the
webhook receiver's counts of what leaves no row (duplicates, refusals) reach the metrics."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, text

from mintfax_sandbox import ThreadedServer
from outbox.fleet_status import LATENCY_BUCKETS, WebhookCounters
from tests.acceptance.test_webhook_receiver import SECRET, Recorder, envelope, signed
from tests.fleet_data import SECRET_NUMBER, cumulative, seed
from workers.single_host.embedded import free_port
from workers.webhooks import create_receiver

FAXOUT = Path(sys.executable).with_name("faxout")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
USER, PASSWORD = "ops", "correct horse battery staple"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)


class Admin:
    """One `faxout admin serve` process."""

    def __init__(self, env: dict[str, str], log: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [str(FAXOUT), "admin", "serve", "--host", host, "--port", str(self.port)],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"admin server exited: {log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("admin server did not answer /healthz")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        output = self.log.read_text()
        assert self.process.returncode == 0, output
        return output

    def metrics(self, **kwargs: object) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        response = httpx.get(f"{self.url}/metrics", timeout=30, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[labels] = sample.value
        return samples


def _env(database_url: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAXOUT_", "MINTFAX_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["DATABASE_URL"] = database_url
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return {**env, **extra}


@pytest.fixture
def admins(tmp_path: Path) -> Iterator[Callable[..., Admin]]:
    started: list[Admin] = []

    def start(env: dict[str, str], host: str = "127.0.0.1") -> Admin:
        admin = Admin(env, tmp_path / f"admin-{len(started)}.log", host)
        started.append(admin)
        return admin

    yield start
    for admin in started:
        if admin.process.poll() is None:
            admin.process.kill()
            admin.process.wait(10)


def _database_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        moment: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return moment


def _one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str):  # type: ignore[no-untyped-def]
    return samples[name][tuple(sorted(labels.items()))]


def test_metrics_parse_and_match_the_database(
    engine: Engine, database_url: str, redis_url: str, admins: Callable[..., Admin]
) -> None:
    seeded = seed(engine, _database_now(engine))
    counters = WebhookCounters(redis.Redis.from_url(redis_url))
    for what in ("duplicate", "refused_401", "refused_401", "refused_400"):
        counters.count(what)
    env = _env(database_url, redis_url)
    first, second = admins(env), admins(env)
    scraped = first.metrics()

    with psycopg.connect(database_url) as conn:
        by_status = dict(conn.execute("SELECT status::text, count(*) FROM fax_outbox GROUP BY 1"))
        http = dict(
            conn.execute("SELECT http_status, count(*) FROM fax_attempts GROUP BY 1").fetchall()
        )
        accepted = conn.execute(
            "SELECT count(*) FROM fax_attempts WHERE outcome IN ('submitted', 'replayed')"
        ).fetchone()
        events = conn.execute("SELECT count(*) FROM fax_events").fetchone()
    assert accepted is not None and events is not None
    for status in seeded.counts:
        assert _one(scraped, "faxout_faxes", status=status) == by_status.get(status, 0)
    assert _one(scraped, "faxout_in_flight") == by_status["sending"]
    assert _one(scraped, "faxout_submitted_total") == accepted[0] == seeded.submitted_attempts
    assert _one(scraped, "faxout_delivered_total") == by_status["delivered"]
    assert _one(scraped, "faxout_failed_total") == by_status["failed"]
    assert _one(scraped, "faxout_rejected_total") == by_status["rejected"]
    assert _one(scraped, "faxout_retries_total") == seeded.retries
    assert _one(scraped, "faxout_mintfax_429_total") == http[429]
    assert _one(scraped, "faxout_mintfax_402_total") == http[402]
    assert _one(scraped, "faxout_webhook_events_total", result="accepted") == events[0]
    assert _one(scraped, "faxout_webhook_events_total", result="duplicate") == 1
    assert _one(scraped, "faxout_webhook_events_total", result="refused") == 3
    assert _one(scraped, "faxout_webhook_events_refused_total", status="401") == 2
    age = _one(scraped, "faxout_oldest_pending_age_seconds")
    assert seeded.oldest_pending_age <= age < seeded.oldest_pending_age + 30
    assert _one(scraped, "faxout_fleet_paused") == 1
    assert _one(scraped, "faxout_balance_available_cents") == 4321
    assert _one(scraped, "faxout_balance_held_cents") == 250
    assert _one(scraped, "faxout_redis_up") == 1
    assert _one(scraped, "faxout_throttle_limit_per_minute") == 60
    assert _one(scraped, "faxout_broker_queue_messages", queue="faxout") == 0
    relay_age = _one(scraped, "faxout_heartbeat_age_seconds", role="relay")
    assert 3 <= relay_age < 30
    assert _one(scraped, "faxout_processes", role="relay") == 1
    assert ("role", "worker") not in {k[0] for k in scraped["faxout_processes"]}  # stopped
    expected = cumulative(seeded.to_submit, LATENCY_BUCKETS)
    for bound, n in zip(LATENCY_BUCKETS, expected, strict=True):
        assert _one(scraped, "faxout_insert_to_submit_seconds_bucket", le=repr(bound)) == n
    assert _one(scraped, "faxout_insert_to_submit_seconds_bucket", le="+Inf") == len(
        seeded.to_submit
    )
    assert _one(scraped, "faxout_submit_to_final_seconds_gcount") == len(seeded.to_final)
    assert _one(scraped, "faxout_submit_to_final_seconds_gsum") == pytest.approx(
        sum(seeded.to_final)
    )

    # Fleet-wide and durable: another server, and this one restarted, show the same counters.
    counter_names = [n for n in scraped if n.endswith("_total") or n.endswith("_bucket")]
    again = second.metrics()
    first.stop()
    restarted = admins(env).metrics()
    for name in counter_names:
        assert again[name] == scraped[name] == restarted[name], name


def test_metrics_with_redis_down_keep_the_postgres_half(
    engine: Engine, database_url: str, admins: Callable[..., Admin]
) -> None:
    seeded = seed(engine, _database_now(engine))
    admin = admins(_env(database_url, f"redis://127.0.0.1:{free_port()}/0"))
    scraped = admin.metrics()
    assert _one(scraped, "faxout_redis_up") == 0
    assert _one(scraped, "faxout_faxes", status="pending") == seeded.counts["pending"]
    assert _one(scraped, "faxout_webhook_events_total", result="accepted") == 5
    # Unknown is not zero: what only Redis knows is left out.
    assert "faxout_throttle_tokens" not in scraped
    assert ("result", "duplicate") not in {k[0] for k in scraped["faxout_webhook_events_total"]}
    page = httpx.get(f"{admin.url}/", timeout=30)
    assert page.status_code == 200 and 'id="redis-state">unknown' in page.text


def test_database_down_is_a_503_without_details(
    redis_url: str, admins: Callable[..., Admin]
) -> None:
    url = f"postgresql://faxout:s3cret-pw@127.0.0.1:{free_port()}/faxout?connect_timeout=3"
    admin = admins(_env(url, redis_url))
    for path in ("/metrics", "/"):
        response = httpx.get(f"{admin.url}{path}", timeout=30)
        assert response.status_code == 503
        assert response.text == "database unavailable\n"
    assert httpx.get(f"{admin.url}/healthz", timeout=5).status_code == 200
    assert "s3cret-pw" not in admin.stop()


def test_read_only_and_closed_to_other_methods(
    database_url: str, redis_url: str, admins: Callable[..., Admin]
) -> None:
    admin = admins(_env(database_url, redis_url))
    for path in ("/", "/metrics"):
        assert httpx.post(f"{admin.url}{path}", timeout=10).status_code == 405
    page = httpx.get(f"{admin.url}/", timeout=30)
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in page.text and "http://" not in page.text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_beyond_loopback_without_credentials_is_refused(database_url: str, redis_url: str) -> None:
    for host in ("0.0.0.0", "::", "admin.example.internal"):  # noqa: S104
        done = subprocess.run(
            [str(FAXOUT), "admin", "serve", "--host", host, "--port", str(free_port())],
            env=_env(database_url, redis_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "beyond loopback" in done.stderr and "FAXOUT_ADMIN_USER" in done.stderr
    half = subprocess.run(
        [str(FAXOUT), "admin", "serve", "--port", str(free_port())],
        env=_env(database_url, redis_url, FAXOUT_ADMIN_USER=USER),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert half.returncode == 2 and "go together" in half.stderr


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_basic_auth_is_demanded_beyond_loopback(
    engine: Engine,
    database_url: str,
    redis_url: str,
    admins: Callable[..., Admin],
    tmp_path: Path,
) -> None:
    seed(engine, _database_now(engine))
    password_file = tmp_path / "admin-password"
    password_file.write_text(PASSWORD + "\n")
    admin = admins(
        _env(
            database_url,
            redis_url,
            FAXOUT_ADMIN_USER=USER,
            FAXOUT_ADMIN_PASSWORD_FILE=str(password_file),
        ),
        host="0.0.0.0",  # noqa: S104 (what the test is about)
    )
    bases = [admin.url]
    outside = _outside_address()
    if outside is not None:
        bases.append(f"http://{outside}:{admin.port}")
    for base in bases:
        for path in ("/", "/metrics"):
            bare = httpx.get(f"{base}{path}", timeout=30)
            assert bare.status_code == 401
            assert bare.headers["www-authenticate"].startswith("Basic ")
            assert "fax_outbox" not in bare.text and "faxout_faxes" not in bare.text
            wrong = httpx.get(f"{base}{path}", auth=(USER, "guess"), timeout=30)
            assert wrong.status_code == 401
            assert (
                httpx.get(f"{base}{path}", auth=("root", PASSWORD), timeout=30).status_code == 401
            )
            assert httpx.get(f"{base}{path}", auth=(USER, PASSWORD), timeout=30).status_code == 200
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    garbage = httpx.get(f"{admin.url}/", headers={"Authorization": "Basic %%%"}, timeout=10)
    assert garbage.status_code == 401
    if CHROMIUM is not None:
        # The browser gets the challenge, not the page, without credentials.
        refused = _chromium_dom(f"{admin.url}/")
        assert "faxes by status" not in refused
        shown = _chromium_dom(
            f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{admin.port}/"
        )
        assert "faxes by status" in shown
    assert PASSWORD not in admin.stop()


class _Figures(HTMLParser):
    """The text of every element with an id, and each element's attributes by id."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.attrs[ident] = dict(attrs)
            self.text.setdefault(ident, "")
        if tag not in ("br", "meta", "line", "polyline", "input"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("br", "meta", "line", "polyline", "input") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _chromium_dom(url: str) -> str:
    done = _chromium("--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@needs_chromium
def test_the_dashboard_in_a_headless_browser_shows_the_database(
    engine: Engine, database_url: str, redis_url: str, admins: Callable[..., Admin]
) -> None:
    seeded = seed(engine, _database_now(engine))
    admin = admins(_env(database_url, redis_url))
    dom = _chromium_dom(f"{admin.url}/")
    figures = _Figures()
    figures.feed(dom)

    with psycopg.connect(database_url) as conn:
        by_status = dict(conn.execute("SELECT status::text, count(*) FROM fax_outbox GROUP BY 1"))
        oldest = conn.execute(
            "SELECT id FROM fax_outbox WHERE status = 'pending' ORDER BY created_at LIMIT 1"
        ).fetchone()
        to_look_at = {
            row_id: status
            for row_id, status in conn.execute(
                "SELECT id, status::text FROM fax_outbox "
                "WHERE status IN ('needs_review', 'failed', 'rejected')"
            )
        }
        hour = conn.execute(
            "SELECT count(*) FILTER (WHERE submitted_at >= date_trunc('minute', now()) "
            "- interval '59 minutes'), count(*) FILTER (WHERE status = 'delivered' AND "
            "completed_at >= date_trunc('minute', now()) - interval '59 minutes') FROM fax_outbox"
        ).fetchone()
    assert oldest is not None and hour is not None
    for status in seeded.counts:
        assert int(figures.text[f"count-{status}"]) == by_status.get(status, 0), status
    assert int(figures.text["count-total"]) == sum(by_status.values())
    assert int(figures.text["counter-submitted"]) == seeded.submitted_attempts
    assert int(figures.text["counter-429"]) == seeded.http_429
    assert int(figures.text["balance-available"]) == 4321
    assert figures.attrs["oldest-pending"]["data-id"] == str(oldest[0])
    assert figures.text["fleet-state"] == "PAUSED" and "pause-operator" in figures.attrs
    shown_rows = {
        int(row_id): status
        for row_id, status in re.findall(
            r'<tr id="row-(\d+)">.*?<td class="status">(\w+)</td>', dom
        )
    }
    assert shown_rows == to_look_at
    assert "req_0" in figures.text["rows-to-look-at"]  # mintfax's request id, to quote
    assert int(figures.text["hour-submitted"]) == hour[0]
    assert int(figures.text["hour-delivered"]) == hour[1]
    assert re.search(r'<polyline data-series="submitted" data-total="\d+"', dom)
    assert "alert-" in " ".join(figures.attrs)
    # Masked everywhere, alerts and error messages included; never the whole number.
    assert SECRET_NUMBER not in dom
    assert SECRET_NUMBER[:5] + "*****" + SECRET_NUMBER[-2:] in dom

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,2200", f"{admin.url}/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_the_receiver_counts_duplicates_and_refusals_for_the_metrics(
    database_url: str, redis_url: str, admins: Callable[..., Admin]
) -> None:
    client = redis.Redis.from_url(redis_url)
    receiver = create_receiver(
        Recorder(), lambda: [SecretStr(SECRET)], count=WebhookCounters(client).count
    )
    server = ThreadedServer(receiver).start()
    try:
        body = envelope("evt_count")
        endpoint = f"{server.url}/webhooks/mintfax"
        for _ in range(3):  # applied, then two duplicates
            assert httpx.post(endpoint, content=body, headers=signed(body)).status_code == 200
        assert httpx.post(endpoint, content=body, headers={}).status_code == 401
        assert httpx.post(endpoint, content=b"[]", headers=signed(b"[]")).status_code == 400
    finally:
        server.stop()
    scraped = admins(_env(database_url, redis_url)).metrics()
    assert _one(scraped, "faxout_webhook_events_total", result="duplicate") == 2
    assert _one(scraped, "faxout_webhook_events_refused_total", status="401") == 1
    assert _one(scraped, "faxout_webhook_events_refused_total", status="400") == 1


def test_a_receiver_whose_redis_is_down_still_answers(redis_url: str) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    receiver = create_receiver(
        Recorder(), lambda: [SecretStr(SECRET)], count=WebhookCounters(dead).count
    )
    server = ThreadedServer(receiver).start()
    try:
        body = envelope("evt_dead")
        endpoint = f"{server.url}/webhooks/mintfax"
        assert httpx.post(endpoint, content=body, headers=signed(body)).status_code == 200
        assert httpx.post(endpoint, content=body, headers=signed(body)).status_code == 200
        assert httpx.post(endpoint, content=body, headers={}).status_code == 401
    finally:
        server.stop()
