"""`faxout preflight`: mintfax's go-live checklist, checked against the running system.

Each item of the checklist that the system can verify by itself is one plain function returning
one `CheckResult` (name, passed/failed/skipped, what was found, how to fix it). `run_preflight`
runs them all in a fixed order and hands the list to the CLI (`workers/cli.py`), which only
prints it.

    api_key_environment     the key's prefix fits FAXOUT_ENVIRONMENT (fx_test_ / fx_live_)
    no_live_key_in_git      no live key in any file git tracks (file:line only, never the key)
    webhook_endpoint        an endpoint registered at mintfax gets fax.delivered, fax.failed,
                            balance.low
    webhook_signature       a secret is configured, our receiver accepts an event signed with
                            each configured secret as mintfax signs it, and refuses a wrong and
                            a stale signature
    balance                 mintfax's available balance is above zero
    low_balance_threshold   FAXOUT_LOW_BALANCE_CENTS is set (an alert before a 402)
    rate_limit              FAXOUT_RATE_LIMIT_PER_MINUTE <= mintfax's X-RateLimit-Limit
    postgres, redis         reachable
    migrations              the database is at the code's head revision
    fleet_alive             a worker, a relay and beat sent a heartbeat recently
    flower                  Flower answers at FAXOUT_FLOWER_URL
    retention               FAXOUT_RETENTION_DAYS is set
    test_numbers            production refuses the sandbox's magic and fictional numbers

Every network call has a short timeout (`timeout`, default `DEFAULT_TIMEOUT_SECONDS`), so a
wrong URL makes its item fail quickly instead of hanging the run. No result ever holds a secret:
the checks name settings, files and hosts, and `run_preflight` masks every configured secret
(API key, webhook secrets, passwords in URLs) out of every detail and fix as a last guard.

The webhook self-test posts events of the type `faxout.preflight`, which no mintfax event has:
the receiver verifies and records them once like any event (`fax_events`, outcome `ignored`)
and changes nothing else: no fax row, pause or alert.

The `[worker]` extra (httpx, redis) is needed; the CLI checks for it before importing this.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets as secrets_module
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
import sqlalchemy.exc
from pydantic import SecretStr
from sqlalchemy import Connection, Engine, text

from outbox import redis_conn, schema
from outbox.db import make_engine
from outbox.errors import ConfigurationError, MintfaxError
from outbox.events import REQUIRED_WEBHOOK_EVENTS
from outbox.fax_client import Balance, MintfaxClient, RateLimitInfo
from outbox.liveness import alive_roles
from outbox.redaction import mask_secret
from outbox.redis_conn import RedisTarget
from outbox.settings import Settings, mask_url_password, mask_url_path
from outbox.submit import api_key_problem
from outbox.validation import check_number

DEFAULT_TIMEOUT_SECONDS = 5.0
# A role counts as alive when a process of it sent a heartbeat within this many heartbeat
# periods (FAXOUT_HEARTBEAT_SECONDS): one missed beat (a GC pause, a slow database) is not death.
ALIVE_WITHIN_HEARTBEATS = 3
REQUIRED_ROLES = ("worker", "relay", "beat")
# The self-test's event type: no mintfax event has it, so the receiver records it as ignored.
SELF_TEST_EVENT = "faxout.preflight"
# A signature this old is refused by mintfax's rules (5 minutes), so the stale probe is older.
_STALE_BY = timedelta(minutes=10)
# A live key as mintfax issues them (generation A `fx_live_`, B `mfx_live_`) and a few
# characters more, so the bare prefix in documentation is not a finding.
_LIVE_KEY = re.compile(rb"(?<![A-Za-z0-9_])m?fx_live_[A-Za-z0-9_\-]{6,}")
_LIVE_PREFIXES = ("fx_live_", "mfx_live_")
_MAX_SCANNED_BYTES = 20 * 1024 * 1024  # per file; a key sits near text, not in huge blobs
_MAX_LISTED_FINDINGS = 10
_MASK = "****"


class Outcome(StrEnum):
    """What one checklist item came to."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # could not be judged here, for a reason given (not a failure)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One checklist item: what was found (`detail`) and, when it failed, what to do (`fix`)."""

    name: str
    outcome: Outcome
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (`faxout preflight --json`)."""
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def passed(name: str, detail: str) -> CheckResult:
    """A passing item."""
    return CheckResult(name, Outcome.PASSED, detail)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    """A failing item; every failure says how to fix it."""
    return CheckResult(name, Outcome.FAILED, detail, fix)


def skipped(name: str, detail: str) -> CheckResult:
    """An item that cannot be judged here; `detail` says why."""
    return CheckResult(name, Outcome.SKIPPED, detail)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- what the checks share: one mintfax reading, one database engine --------------------------


@dataclass
class MintfaxReading:
    """mintfax's answers to the read-only calls preflight makes, or why each failed."""

    webhooks: list[dict[str, Any]] | None = None
    webhooks_error: str | None = None
    balance: Balance | None = None
    balance_error: str | None = None
    rate_limit: RateLimitInfo | None = None


def read_mintfax(settings: Settings, timeout: float) -> MintfaxReading:
    """List the webhook endpoints and read the balance (two GETs); errors are kept, not raised.

    The rate-limit headers are those of the latest answer: a real answer of mintfax's own, as
    the throttle sees them.
    """
    reading = MintfaxReading()
    try:
        client = MintfaxClient(settings.mintfax_base_url, settings.api_key, timeout=timeout)
    except ConfigurationError as exc:
        reading.webhooks_error = reading.balance_error = str(exc)
        return reading
    with client:
        try:
            reading.webhooks = client.list_webhooks()
        except (MintfaxError, ConfigurationError) as exc:
            reading.webhooks_error = _describe_mintfax_error(exc)
        try:
            reading.balance = client.get_balance()
        except (MintfaxError, ConfigurationError) as exc:
            reading.balance_error = _describe_mintfax_error(exc)
        reading.rate_limit = client.last_rate_limit
    return reading


def _describe_mintfax_error(exc: Exception) -> str:
    if isinstance(exc, MintfaxError) and exc.status_code is not None:
        code = f" {exc.error}" if exc.error else ""
        return f"mintfax answered {exc.status_code}{code}: {exc}"
    return str(exc)


def preflight_engine(settings: Settings, timeout: float) -> Engine:
    """An engine whose connections give up after `timeout` (connect and each statement)."""
    connect_seconds = max(2, math.ceil(timeout))  # libpq's smallest effective value is 2
    return make_engine(
        settings.require_database_url(),
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=False,
        pool_timeout=timeout,
        connect_args={
            "connect_timeout": connect_seconds,
            "options": f"-c statement_timeout={round(timeout * 1000)}",
        },
    )


# -- the checks ------------------------------------------------------------------------------


def check_api_key_environment(settings: Settings) -> CheckResult:
    """The key's prefix fits `FAXOUT_ENVIRONMENT`: no test key in production, no live key in
    sandbox (the worker refuses to send with either, pausing the fleet)."""
    name = "api_key_environment"
    try:
        key = settings.api_key()
    except ConfigurationError as exc:
        return failed(
            name,
            str(exc),
            "set MINTFAX_API_KEY, or MINTFAX_API_KEY_FILE to a file holding the key "
            "(from your secrets manager)",
        )
    problem = api_key_problem(key, settings.environment)
    if problem is not None:
        wanted = "fx_live_" if settings.environment == "production" else "fx_test_"
        return failed(
            name,
            str(problem),
            f"deploy a {wanted} key for FAXOUT_ENVIRONMENT={settings.environment}, or set "
            "FAXOUT_ENVIRONMENT to the environment the key belongs to",
        )
    return passed(
        name,
        f"{mask_secret(key.get_secret_value())} fits FAXOUT_ENVIRONMENT={settings.environment}",
    )


def check_no_live_key_in_git(
    repo_dir: Path, live_keys: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> CheckResult:
    """No live API key in any file git tracks in the checkout holding `repo_dir`.

    Finds anything shaped like a live key (`fx_live_...`, `mfx_live_...`) and the exact
    `live_keys` given (the configured one, whatever its shape). Reports `file:line` only.
    Skipped outside a git checkout, or where git is not installed.
    """
    name = "no_live_key_in_git"
    try:
        top = _git(repo_dir, timeout, "rev-parse", "--show-toplevel")
        if top is None:
            return skipped(name, f"{repo_dir} is not inside a git checkout")
        root = Path(top.decode("utf-8", "surrogateescape").strip())
        listing = _git(root, timeout, "ls-files", "-z")
    except FileNotFoundError:
        return skipped(name, "git is not installed")
    except subprocess.TimeoutExpired:
        return failed(name, f"git ls-files took over {timeout:g} s", "run preflight again")
    if listing is None:
        return skipped(name, f"git ls-files failed in {root}")
    exact = [k.encode() for k in live_keys if k]
    findings: list[str] = []
    files = [p for p in listing.decode("utf-8", "surrogateescape").split("\0") if p]
    for relative in files:
        for line_number in _live_key_lines(root / relative, exact):
            findings.append(f"{relative}:{line_number}")
    if not findings:
        return passed(name, f"no live key in the {len(files)} files git tracks in {root}")
    shown = ", ".join(findings[:_MAX_LISTED_FINDINGS])
    more = len(findings) - _MAX_LISTED_FINDINGS
    return failed(
        name,
        f"{len(findings)} live key(s) in files git tracks: {shown}"
        + (f" and {more} more" if more > 0 else ""),
        "remove the key from those files (and from git history), revoke it at mintfax and "
        "deploy a new one through MINTFAX_API_KEY_FILE or a secrets manager",
    )


def _git(where: Path, timeout: float, *args: str) -> bytes | None:
    done = subprocess.run(
        ["git", "-C", str(where), *args], capture_output=True, timeout=timeout, check=False
    )
    return done.stdout if done.returncode == 0 else None


def _live_key_lines(path: Path, exact: Sequence[bytes]) -> Iterator[int]:
    """Line numbers of `path` holding a live key (a tracked file deleted or unreadable: none)."""
    try:
        if not path.is_file() or path.is_symlink():
            return
        with path.open("rb") as handle:
            data = handle.read(_MAX_SCANNED_BYTES)
    except OSError:
        return
    if b"fx_live_" not in data and not any(key in data for key in exact):
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if _LIVE_KEY.search(line) or any(key in line for key in exact):
            yield number


def check_webhook_endpoint(reading: MintfaxReading) -> CheckResult:
    """The active endpoints registered at mintfax get fax.delivered, fax.failed and balance.low
    (an endpoint subscribed to no list gets every event)."""
    name = "webhook_endpoint"
    register = "faxout webhooks register --url https://<your host>/webhooks/mintfax"
    if reading.webhooks is None:
        return failed(
            name,
            f"could not list the webhook endpoints: {reading.webhooks_error}",
            "check MINTFAX_API_KEY and MINTFAX_BASE_URL (`faxout webhooks list` shows the same)",
        )
    active = [e for e in reading.webhooks if e.get("is_active", True)]
    if not active:
        return failed(name, "no active webhook endpoint is registered at mintfax", register)
    covered: set[str] = set()
    for endpoint in active:
        events = endpoint.get("events")
        covered.update(events if events else REQUIRED_WEBHOOK_EVENTS)
    missing = [e for e in REQUIRED_WEBHOOK_EVENTS if e not in covered]
    if missing:
        return failed(
            name,
            f"no active endpoint subscribes to {', '.join(missing)}",
            f"register an endpoint for every event ({register}; `--events` must include "
            f"{', '.join(REQUIRED_WEBHOOK_EVENTS)}) and delete the old one",
        )
    return passed(
        name,
        f"{len(active)} active endpoint(s) receive {', '.join(REQUIRED_WEBHOOK_EVENTS)}",
    )


def receiver_url(settings: Settings, reading: MintfaxReading) -> str | None:
    """Where to post the self-test: `FAXOUT_WEBHOOK_SELF_TEST_URL`, else the first active
    endpoint registered at mintfax."""
    if settings.webhook_self_test_url:
        return settings.webhook_self_test_url
    for endpoint in reading.webhooks or []:
        url = endpoint.get("url")
        if endpoint.get("is_active", True) and isinstance(url, str) and url:
            return url
    return None


def sign_like_mintfax(body: bytes, secret: SecretStr, at: datetime) -> dict[str, str]:
    """The headers mintfax (generation A) sends with `body`: `X-Mintfax-Timestamp` (Unix
    seconds) and `X-Mintfax-Signature`, hex HMAC-SHA256 of `"{timestamp}.{body}"` keyed with
    the secret string as issued."""
    timestamp = str(int(at.timestamp()))
    signature = hmac.new(
        secret.get_secret_value().encode("utf-8"),
        timestamp.encode("ascii") + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Mintfax-Timestamp": timestamp,
        "X-Mintfax-Signature": signature,
    }


def self_test_event(at: datetime) -> bytes:
    """A mintfax envelope of the type `SELF_TEST_EVENT`, with a fresh event id."""
    return json.dumps(
        {
            "event_id": f"evt_preflight_{uuid.uuid4().hex}",
            "event": SELF_TEST_EVENT,
            "timestamp": at.isoformat(),
            "data": {},
        },
        separators=(",", ":"),
    ).encode()


def check_webhook_signature(
    settings: Settings,
    url: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    now: Callable[[], datetime] = _utc_now,
) -> CheckResult:
    """A webhook secret is configured and our receiver at `url` takes it: an event signed with
    each configured secret exactly as mintfax signs is answered 2xx, and the same event signed
    with a wrong secret, or 10 minutes ago, is answered 401."""
    name = "webhook_signature"
    try:
        configured = [s for s in settings.webhook_secrets() if s.get_secret_value()]
    except ConfigurationError as exc:
        return failed(
            name,
            str(exc),
            "make MINTFAX_WEBHOOK_SECRET_FILE readable by the receiver's user, or set "
            "MINTFAX_WEBHOOK_SECRET instead",
        )
    if not configured:
        return failed(
            name,
            "MINTFAX_WEBHOOK_SECRET is not set: the receiver would refuse every webhook",
            "set MINTFAX_WEBHOOK_SECRET to the signing secret `faxout webhooks register` "
            "printed (register again if it is lost)",
        )
    if url is None:
        return failed(
            name,
            "no receiver to test: FAXOUT_WEBHOOK_SELF_TEST_URL is not set and no endpoint is "
            "registered",
            "set FAXOUT_WEBHOOK_SELF_TEST_URL to the receiver's URL (…/webhooks/mintfax)",
        )
    shown = mask_url_path(url)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as http:
            for index, secret in enumerate(configured, start=1):
                at = now()
                body = self_test_event(at)
                answer = http.post(url, content=body, headers=sign_like_mintfax(body, secret, at))
                if not answer.is_success:
                    which = f"secret {index} of {len(configured)}" if len(configured) > 1 else ""
                    return failed(
                        name,
                        f"the receiver at {shown} answered {answer.status_code} to an event "
                        f"signed as mintfax signs it{' with ' + which if which else ''}"
                        + _refusal_hint(answer.status_code),
                        "give the receiver (`faxout webhooks serve`) the same "
                        "MINTFAX_WEBHOOK_SECRET, keep its clock in sync (NTP), and check its log",
                    )
            at = now()
            body = self_test_event(at)
            wrong = SecretStr("whsec_" + secrets_module.token_urlsafe(24))
            forged = http.post(url, content=body, headers=sign_like_mintfax(body, wrong, at))
            stale_at = at - _STALE_BY
            stale_body = self_test_event(stale_at)
            stale = http.post(
                url,
                content=stale_body,
                headers=sign_like_mintfax(stale_body, configured[0], at=stale_at),
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return failed(
            name,
            f"could not reach the receiver at {shown}: {type(exc).__name__}",
            "start the receiver (`faxout webhooks serve`) or correct "
            "FAXOUT_WEBHOOK_SELF_TEST_URL / the registered URL",
        )
    if forged.status_code != 401 or stale.status_code != 401:
        return failed(
            name,
            f"the receiver at {shown} answered {forged.status_code} to a wrong signature and "
            f"{stale.status_code} to a 10 minute old one (both must be 401)",
            "serve webhooks with `faxout webhooks serve` (or `outbox.webhooks.verify_webhook` "
            "on the raw body), which refuses them",
        )
    return passed(
        name,
        f"the receiver at {shown} accepted an event signed with each of the {len(configured)} "
        "configured secret(s) and refused a wrong and a stale signature",
    )


def _refusal_hint(status: int) -> str:
    if status == 401:
        return " (refused: a different secret, or a clock more than 5 minutes off)"
    if status >= 500:
        return " (it could not record the event: its database?)"
    if status == 404:
        return " (no receiver at that path)"
    return ""


def check_balance(reading: MintfaxReading) -> CheckResult:
    """mintfax's available balance is above zero (a fax needs a hold, or it gets a 402)."""
    name = "balance"
    if reading.balance is None:
        return failed(
            name,
            f"could not read the balance: {reading.balance_error}",
            "check MINTFAX_API_KEY and MINTFAX_BASE_URL",
        )
    available, held = reading.balance.available, reading.balance.held
    if available <= 0:
        return failed(
            name,
            f"available balance is {available} cents ({held} held)",
            "buy credits for this environment in the mintfax dashboard",
        )
    return passed(name, f"{available} cents available ({held} held)")


def check_low_balance_threshold(settings: Settings) -> CheckResult:
    """A low-balance alert is armed (`FAXOUT_LOW_BALANCE_CENTS` above zero)."""
    name = "low_balance_threshold"
    if settings.low_balance_cents <= 0:
        return failed(
            name,
            "FAXOUT_LOW_BALANCE_CENTS is 0: no alert before the balance runs out",
            "set FAXOUT_LOW_BALANCE_CENTS to what a day of faxes costs (cents)",
        )
    return passed(
        name,
        f"an alert fires below {settings.low_balance_cents} cents "
        f"(FAXOUT_LOW_BALANCE_CENTS); a balance pause lifts at {settings.resume_balance_cents}",
    )


def check_rate_limit(settings: Settings, reading: MintfaxReading) -> CheckResult:
    """`FAXOUT_RATE_LIMIT_PER_MINUTE` is at or below mintfax's `X-RateLimit-Limit`, read from
    the headers of a real answer."""
    name = "rate_limit"
    ours = settings.rate_limit_per_minute
    if reading.rate_limit is None or reading.rate_limit.limit is None:
        if reading.webhooks is None and reading.balance is None:
            return failed(
                name,
                f"no answer from mintfax to read X-RateLimit-Limit from: {reading.balance_error}",
                "check MINTFAX_API_KEY and MINTFAX_BASE_URL",
            )
        return skipped(name, "mintfax's answers carry no X-RateLimit-Limit header to compare with")
    theirs = reading.rate_limit.limit
    if ours > theirs:
        return failed(
            name,
            f"FAXOUT_RATE_LIMIT_PER_MINUTE is {ours}, above mintfax's limit of {theirs}/min: "
            "the fleet would meet 429s",
            f"set FAXOUT_RATE_LIMIT_PER_MINUTE={theirs} or less",
        )
    return passed(name, f"FAXOUT_RATE_LIMIT_PER_MINUTE={ours}, mintfax allows {theirs}/min")


def check_postgres(engine: Engine | None, error: str | None) -> CheckResult:
    """Postgres answers a query within the timeout."""
    name = "postgres"
    if engine is None:
        return failed(name, error or "no database", "set DATABASE_URL")
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return failed(
            name, f"unreachable: {_database_error(exc)}", "start Postgres or correct DATABASE_URL"
        )
    return passed(name, f"reachable (PostgreSQL {str(version).split()[0]})")


def check_migrations(engine: Engine) -> CheckResult:
    """The database is at the newest revision this code knows."""
    name = "migrations"
    try:
        current, head = schema.current_revision(engine), schema.head_revision(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return failed(
            name, f"could not read the revision: {_database_error(exc)}", "check DATABASE_URL"
        )
    if current != head:
        return failed(
            name,
            f"the database is at revision {current or 'none (empty)'}, this code expects {head}",
            "run `faxout db upgrade`",
        )
    return passed(name, f"the database is at head ({head})")


def check_redis(settings: Settings, timeout: float) -> CheckResult:
    """Redis (broker and fleet throttle) answers PING within the timeout."""
    name = "redis"
    if not settings.redis_url:
        return failed(name, "REDIS_URL is not set", "set REDIS_URL (redis://host:6379/0)")
    shown = mask_url_password(settings.redis_url)
    try:
        target = RedisTarget.from_settings(settings)
        # A Sentinel-managed Redis: a wrong master name or password is named here.
        warning = redis_conn.check_at_startup(target, timeout=timeout)
        client = redis_conn.client(target, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ConfigurationError as exc:
        return failed(name, str(exc), f"correct {exc.setting}")
    except ValueError as exc:
        return failed(name, f"REDIS_URL is not a Redis URL ({exc})", "correct REDIS_URL")
    if warning is not None:
        return failed(name, warning, "start the sentinels or correct REDIS_URL")
    try:
        client.ping()
    except redis.RedisError as exc:
        return failed(
            name, f"{shown} unreachable: {type(exc).__name__}", "start Redis or correct REDIS_URL"
        )
    finally:
        client.close()
    return passed(name, f"{shown} answers")


def check_fleet_alive(conn: Connection, within_seconds: float) -> CheckResult:
    """A worker, a relay and beat sent a heartbeat within `within_seconds` (`outbox.liveness`,
    on the database's clock)."""
    name = "fleet_alive"
    alive = alive_roles(conn, within_seconds=within_seconds)
    missing = [role for role in REQUIRED_ROLES if role not in alive]
    if missing:
        starts = {
            "worker": "`celery -A workers.app worker -Q faxout,faxout.maintenance` (one or more)",
            "relay": "`faxout relay` (one or more)",
            "beat": "`celery -A workers.app beat` (exactly one)",
        }
        return failed(
            name,
            f"no heartbeat within {within_seconds:g} s from: {', '.join(missing)}",
            "start " + "; ".join(starts[role] for role in missing),
        )
    return passed(name, f"alive within {within_seconds:g} s: {', '.join(sorted(alive))}")


def check_flower(settings: Settings, timeout: float) -> CheckResult:
    """Flower answers its health check (`GET /healthcheck`) at `FAXOUT_FLOWER_URL`."""
    name = "flower"
    if not settings.flower_url:
        return failed(
            name,
            "FAXOUT_FLOWER_URL is not set, so Flower cannot be checked",
            "run `celery -A workers.app flower` and set FAXOUT_FLOWER_URL to its address",
        )
    shown = _host_only(settings.flower_url)
    try:
        answer = httpx.get(
            settings.flower_url.rstrip("/") + "/healthcheck",
            timeout=timeout,
            follow_redirects=False,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return failed(
            name,
            f"{shown} unreachable: {type(exc).__name__}",
            "start Flower (`celery -A workers.app flower`) or correct FAXOUT_FLOWER_URL",
        )
    if answer.status_code != 200:
        return failed(
            name,
            f"{shown}/healthcheck answered {answer.status_code}",
            "point FAXOUT_FLOWER_URL at Flower's own address (scheme, host, port, url prefix)",
        )
    return passed(name, f"Flower answers at {shown}")


def check_retention(settings: Settings) -> CheckResult:
    """How long document bytes are kept is decided: `FAXOUT_RETENTION_DAYS`, or
    `FAXOUT_ZERO_FOOTPRINT` (bytes dropped as soon as a fax is final)."""
    name = "retention"
    days, purge = settings.retention_days, settings.purge_days
    purged = f"; rows and their history are deleted after {purge:g} day(s)" if purge else ""
    if settings.zero_footprint:
        return passed(name, f"document bytes are dropped as soon as a fax is final{purged}")
    if days is None:
        return failed(
            name,
            "FAXOUT_RETENTION_DAYS is not set: documents are kept forever",
            "set FAXOUT_RETENTION_DAYS (or FAXOUT_ZERO_FOOTPRINT=true) to what your compliance "
            "requires, and match mintfax's retention settings in its dashboard",
        )
    return passed(name, f"document bytes of final faxes are removed after {days:g} day(s){purged}")


# A sandbox magic number and a fictional 555 number: neither may reach a real fax line.
_TEST_NUMBERS = ("+15005550001", "+12125550123")


def check_test_numbers(settings: Settings) -> CheckResult:
    """Production refuses the sandbox's magic numbers and fictional 555 numbers, with the one
    number check the helper and the worker share (`outbox.validation.check_number`)."""
    name = "test_numbers"
    accepted = [n for n in _TEST_NUMBERS if check_number(n, "production")[0] is not None]
    if accepted:
        return failed(
            name,
            f"production accepts test number(s) {', '.join(accepted)}",
            "outbox.validation must refuse magic (+1500555xxxx) and fictional 555 numbers in "
            "production: this build is broken, do not go live with it",
        )
    where = (
        "this deployment is production"
        if settings.environment == "production"
        else "this deployment is sandbox, where they are the only numbers mintfax accepts"
    )
    return passed(name, f"production refuses magic and fictional 555 numbers ({where})")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Preflight:
    """One run of every check against `settings`, sharing one mintfax reading and one engine."""

    settings: Settings
    repo_dir: Path = field(default_factory=Path.cwd)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    now: Callable[[], datetime] = _utc_now
    _postgres_reachable: bool = field(default=False, init=False)

    @cached_property
    def reading(self) -> MintfaxReading:
        return read_mintfax(self.settings, self.timeout)

    @cached_property
    def _engine(self) -> tuple[Engine | None, str | None]:
        try:
            return preflight_engine(self.settings, self.timeout), None
        except ConfigurationError as exc:
            return None, str(exc)

    def run(self) -> list[CheckResult]:
        """Every check, in checklist order; an unexpected error fails its item only."""
        s = self.settings
        checks: list[tuple[str, Callable[[], CheckResult]]] = [
            ("api_key_environment", lambda: check_api_key_environment(s)),
            (
                "no_live_key_in_git",
                lambda: check_no_live_key_in_git(self.repo_dir, self._live_keys(), self.timeout),
            ),
            ("webhook_endpoint", lambda: check_webhook_endpoint(self.reading)),
            (
                "webhook_signature",
                lambda: check_webhook_signature(
                    s, receiver_url(s, self.reading), timeout=self.timeout, now=self.now
                ),
            ),
            ("balance", lambda: check_balance(self.reading)),
            ("low_balance_threshold", lambda: check_low_balance_threshold(s)),
            ("rate_limit", lambda: check_rate_limit(s, self.reading)),
            ("postgres", self._postgres),
            ("migrations", self._migrations),
            ("redis", lambda: check_redis(s, self.timeout)),
            ("fleet_alive", self._fleet_alive),
            ("flower", lambda: check_flower(s, self.timeout)),
            ("retention", lambda: check_retention(s)),
            ("test_numbers", lambda: check_test_numbers(s)),
        ]
        results: list[CheckResult] = []
        try:
            for name, check in checks:
                try:
                    results.append(check())
                except Exception as exc:  # one broken item must not hide the others
                    results.append(
                        failed(
                            name,
                            f"the check itself failed: {type(exc).__name__}: {exc}",
                            "report this; run the item's check by hand meanwhile",
                        )
                    )
        finally:
            engine = self._engine[0]
            if engine is not None:
                engine.dispose()
        return [_masked(result, self._secrets()) for result in results]

    def _postgres(self) -> CheckResult:
        result = check_postgres(*self._engine)
        self._postgres_reachable = result.outcome is Outcome.PASSED
        return result

    def _database(self, name: str) -> Engine | CheckResult:
        """The engine, or why `name` cannot be judged: Postgres failed above."""
        engine, error = self._engine
        if engine is None or not self._postgres_reachable:
            return skipped(
                name, f"needs Postgres, which failed above{f': {error}' if error else ''}"
            )
        return engine

    def _migrations(self) -> CheckResult:
        engine = self._database("migrations")
        return engine if isinstance(engine, CheckResult) else check_migrations(engine)

    def _fleet_alive(self) -> CheckResult:
        engine = self._database("fleet_alive")
        if isinstance(engine, CheckResult):
            return engine
        within = ALIVE_WITHIN_HEARTBEATS * self.settings.heartbeat_seconds
        try:
            with engine.connect() as conn:
                return check_fleet_alive(conn, within)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            return failed(
                "fleet_alive",
                f"could not read the heartbeats: {_database_error(exc)}",
                "fix Postgres (above), run `faxout db upgrade`",
            )

    def _live_keys(self) -> list[str]:
        try:
            key = self.settings.api_key().get_secret_value()
        except ConfigurationError:
            return []
        return [key] if key.startswith(_LIVE_PREFIXES) else []

    def _secrets(self) -> list[str]:
        """Every secret value the settings hold, to be masked out of any result."""
        s = self.settings
        found = [secret.get_secret_value() for secret in s.mintfax_webhook_secrets]
        with contextlib.suppress(ConfigurationError):
            found += [secret.get_secret_value() for secret in s.webhook_secrets()]
        with contextlib.suppress(ConfigurationError):
            found.append(s.api_key().get_secret_value())
        for url in (s.database_url, s.redis_url, s.flower_url, s.webhook_self_test_url):
            if url:
                found.append(urlsplit(url).password or "")
        if s.redis_sentinel_password is not None:
            found.append(s.redis_sentinel_password.get_secret_value())
        return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)


def run_preflight(
    settings: Settings,
    *,
    repo_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    now: Callable[[], datetime] = _utc_now,
) -> list[CheckResult]:
    """Check mintfax's go-live checklist against the system `settings` describe.

    `repo_dir` is the checkout scanned for live keys (default: the current directory);
    `timeout` bounds each network call; `now` signs the webhook self-test (tests inject it).
    """
    return Preflight(settings, repo_dir=repo_dir or Path.cwd(), timeout=timeout, now=now).run()


def _masked(result: CheckResult, secrets: Sequence[str]) -> CheckResult:
    detail, fix = result.detail, result.fix
    for secret in secrets:
        detail = detail.replace(secret, _MASK)
        fix = fix.replace(secret, _MASK) if fix is not None else None
    if (detail, fix) == (result.detail, result.fix):
        return result
    return CheckResult(result.name, result.outcome, detail, fix)


def _database_error(exc: sqlalchemy.exc.SQLAlchemyError) -> str:
    origin = getattr(exc, "orig", None) or exc
    first = str(origin).strip().splitlines()
    return f"{type(origin).__name__}: {first[0] if first else ''}".rstrip(": ")


def _host_only(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return "FAXOUT_FLOWER_URL"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
