"""The checks of `faxout preflight` that judge data alone (no I/O): what mintfax said, the
settings, the self-test's signature. The checks that call out are tested against real
services in tests/acceptance/test_preflight.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from outbox.errors import WebhookRefused
from outbox.events import FAX_EVENTS
from outbox.fax_client import Balance, RateLimitInfo
from outbox.preflight import (
    SELF_TEST_EVENT,
    CheckResult,
    MintfaxReading,
    Outcome,
    Preflight,
    _masked,
    check_api_key_environment,
    check_balance,
    check_low_balance_threshold,
    check_rate_limit,
    check_retention,
    check_test_numbers,
    check_webhook_endpoint,
    receiver_url,
    self_test_event,
    sign_like_mintfax,
)
from outbox.settings import Settings
from outbox.webhooks import parse_event, verify_webhook

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SECRET = SecretStr("whsec_test_preflight_unit_0001")
BASE = {"MINTFAX_API_KEY": "fx_test_unit_key_123456", "FAXOUT_ENVIRONMENT": "sandbox"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def endpoint(events: list[str] | None, *, active: bool = True, url: str = "https://h/x") -> Any:
    return {"id": "e", "url": url, "events": events, "is_active": active}


# -- the self-test's signature -------------------------------------------------------------


def test_the_self_test_is_signed_exactly_as_the_verifier_expects() -> None:
    body = self_test_event(NOW)
    event = verify_webhook(body, sign_like_mintfax(body, SECRET, NOW), [SECRET], NOW)
    assert event.event_type == SELF_TEST_EVENT
    assert SELF_TEST_EVENT not in FAX_EVENTS  # so the reconciler applies it to nothing
    assert event.data == {} and event.event_id.startswith("evt_preflight_")
    again = self_test_event(NOW)
    assert parse_event(again).event_id != event.event_id  # a fresh id each time


def test_a_wrong_secret_or_a_stale_time_is_refused_by_the_verifier() -> None:
    body = self_test_event(NOW)
    other = SecretStr("whsec_test_someone_else_0000000")
    with pytest.raises(WebhookRefused) as wrong:
        verify_webhook(body, sign_like_mintfax(body, other, NOW), [SECRET], NOW)
    assert wrong.value.status == 401
    old = NOW - timedelta(minutes=10)
    stale = self_test_event(old)
    with pytest.raises(WebhookRefused) as late:
        verify_webhook(stale, sign_like_mintfax(stale, SECRET, old), [SECRET], NOW)
    assert late.value.status == 401


# -- webhook endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "outcome", "words"),
    [
        ([endpoint(None)], Outcome.PASSED, "1 active endpoint(s)"),
        ([endpoint(["fax.delivered", "fax.failed", "balance.low"])], Outcome.PASSED, "receive"),
        (
            [endpoint(["fax.delivered", "fax.failed"]), endpoint(["balance.low"])],
            Outcome.PASSED,
            "2 active endpoint(s)",
        ),
        ([endpoint(["fax.delivered"])], Outcome.FAILED, "fax.failed, balance.low"),
        ([endpoint(None, active=False)], Outcome.FAILED, "no active webhook endpoint"),
        (
            [endpoint(["fax.delivered", "fax.failed"]), endpoint(None, active=False)],
            Outcome.FAILED,
            "balance.low",
        ),
        ([], Outcome.FAILED, "no active webhook endpoint"),
    ],
)
def test_webhook_endpoints(endpoints: list[Any], outcome: Outcome, words: str) -> None:
    result = check_webhook_endpoint(MintfaxReading(webhooks=endpoints))
    assert result.outcome is outcome, result
    assert words in result.detail
    assert (result.fix is not None) == (outcome is Outcome.FAILED)


def test_an_unreadable_endpoint_list_fails_with_mintfaxs_answer() -> None:
    reading = MintfaxReading(webhooks_error="mintfax answered 401 unauthenticated: bad key")
    result = check_webhook_endpoint(reading)
    assert result.outcome is Outcome.FAILED and "401 unauthenticated" in result.detail


def test_the_receiver_url_setting_wins_over_the_registered_one() -> None:
    reading = MintfaxReading(
        webhooks=[endpoint(None, active=False, url="https://old/x"), endpoint(None)]
    )
    assert receiver_url(settings(), reading) == "https://h/x"  # the first active one
    own = settings(FAXOUT_WEBHOOK_SELF_TEST_URL="http://10.0.0.5:8080/webhooks/mintfax")
    assert receiver_url(own, reading) == "http://10.0.0.5:8080/webhooks/mintfax"
    assert receiver_url(settings(), MintfaxReading(webhooks_error="down")) is None


# -- balance and rate limit ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "outcome"), [(1, Outcome.PASSED), (0, Outcome.FAILED), (-5, Outcome.FAILED)]
)
def test_balance_must_be_above_zero(available: int, outcome: Outcome) -> None:
    result = check_balance(MintfaxReading(balance=Balance(available=available, held=7)))
    assert result.outcome is outcome
    assert f"{available} cents" in result.detail and "7 held" in result.detail


def test_the_low_balance_threshold_must_be_set() -> None:
    assert check_low_balance_threshold(settings()).outcome is Outcome.PASSED
    off = check_low_balance_threshold(settings(FAXOUT_LOW_BALANCE_CENTS="0"))
    assert off.outcome is Outcome.FAILED and "FAXOUT_LOW_BALANCE_CENTS" in (off.fix or "")


def limit(value: int | None) -> RateLimitInfo:
    return RateLimitInfo(limit=value, remaining=None, reset_seconds=None, observed_at=NOW)


@pytest.mark.parametrize(
    ("ours", "theirs", "outcome"),
    [("60", 60, Outcome.PASSED), ("59", 60, Outcome.PASSED), ("61", 60, Outcome.FAILED)],
)
def test_the_rate_limit_is_at_most_mintfaxs(ours: str, theirs: int, outcome: Outcome) -> None:
    reading = MintfaxReading(webhooks=[], rate_limit=limit(theirs))
    result = check_rate_limit(settings(FAXOUT_RATE_LIMIT_PER_MINUTE=ours), reading)
    assert result.outcome is outcome, result
    if outcome is Outcome.FAILED:
        assert result.fix == "set FAXOUT_RATE_LIMIT_PER_MINUTE=60 or less"


def test_the_rate_limit_without_a_header_is_skipped_and_without_an_answer_fails() -> None:
    no_header = check_rate_limit(settings(), MintfaxReading(webhooks=[], rate_limit=limit(None)))
    assert no_header.outcome is Outcome.SKIPPED
    assert check_rate_limit(settings(), MintfaxReading(webhooks=[])).outcome is Outcome.SKIPPED
    silent = MintfaxReading(webhooks_error="timed out", balance_error="timed out")
    assert check_rate_limit(settings(), silent).outcome is Outcome.FAILED


# -- the key, retention, test numbers ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "environment", "outcome", "words"),
    [
        ("fx_test_abcdef123", "sandbox", Outcome.PASSED, "fx_test_****"),
        ("fx_live_abcdef123", "production", Outcome.PASSED, "fx_live_****"),
        ("fx_live_abcdef123", "sandbox", Outcome.FAILED, "live key"),
        ("fx_test_abcdef123", "production", Outcome.FAILED, "sandbox (test) key"),
        ("sk_abcdef123", "sandbox", Outcome.FAILED, "unknown prefix"),
    ],
)
def test_the_key_prefix_fits_the_environment(
    key: str, environment: str, outcome: Outcome, words: str
) -> None:
    result = check_api_key_environment(
        settings(MINTFAX_API_KEY=key, FAXOUT_ENVIRONMENT=environment)
    )
    assert result.outcome is outcome
    assert words in result.detail
    assert key not in result.detail + (result.fix or "")
    assert key[8:] not in result.detail + (result.fix or "")


def test_a_missing_key_fails_naming_both_variables(tmp_path: Path) -> None:
    result = check_api_key_environment(Settings.from_env({}))
    assert result.outcome is Outcome.FAILED
    assert "MINTFAX_API_KEY_FILE" in (result.fix or "")
    gone = Settings.from_env({"MINTFAX_API_KEY_FILE": str(tmp_path / "missing")})
    assert "cannot be read" in check_api_key_environment(gone).detail


def test_retention_is_configured_by_days_or_zero_footprint() -> None:
    assert check_retention(settings()).outcome is Outcome.FAILED
    days = check_retention(settings(FAXOUT_RETENTION_DAYS="30", FAXOUT_PURGE_DAYS="365"))
    assert days.outcome is Outcome.PASSED
    assert "after 30 day(s)" in days.detail and "deleted after 365 day(s)" in days.detail
    zero = check_retention(settings(FAXOUT_ZERO_FOOTPRINT="true"))
    assert zero.outcome is Outcome.PASSED and "as soon as" in zero.detail


def test_production_refuses_test_numbers() -> None:
    for environment in ("sandbox", "production"):
        result = check_test_numbers(settings(FAXOUT_ENVIRONMENT=environment))
        assert result.outcome is Outcome.PASSED, result
        assert f"this deployment is {environment}" in result.detail


# -- no secret in any result ---------------------------------------------------------------


def test_every_configured_secret_is_masked_out_of_results() -> None:
    s = settings(
        MINTFAX_API_KEY="fx_live_canary_api_key",
        MINTFAX_WEBHOOK_SECRET="whsec_canary_one,whsec_canary_two",
        DATABASE_URL="postgresql://app:db-canary@db/app",
        REDIS_URL="redis://:redis-canary@r:6379/0",
        FAXOUT_FLOWER_URL="http://u:flower-canary@f:5555",
        FAXOUT_ENVIRONMENT="production",
    )
    secrets = Preflight(s)._secrets()
    leaky = CheckResult(
        "x",
        Outcome.FAILED,
        "fx_live_canary_api_key whsec_canary_two db-canary redis-canary",
        "whsec_canary_one flower-canary",
    )
    masked = _masked(leaky, secrets)
    assert masked.detail == "**** **** **** ****"
    assert masked.fix == "**** ****"
    clean = CheckResult("y", Outcome.PASSED, "nothing secret")
    assert _masked(clean, secrets) is clean


# -- the command's own refusals ------------------------------------------------------------


def test_preflight_without_the_worker_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from workers import cli

    monkeypatch.setitem(cli._EXTRA_MODULES, "worker", ("httpx", "no_such_module_for_faxout"))
    done = CliRunner().invoke(cli.app, ["preflight"])
    assert done.exit_code == 2
    assert "`faxout preflight` needs the [worker] extra" in " ".join(done.output.split())


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "301"])
def test_preflight_refuses_a_timeout_that_is_not_a_short_positive_time(timeout: str) -> None:
    from typer.testing import CliRunner

    from workers import cli

    done = CliRunner().invoke(cli.app, ["preflight", "--timeout", timeout], env=BASE)
    assert done.exit_code == 2
    assert "--timeout must be" in " ".join(done.output.split())
