"""Settings: read from a mapping at the edge, validated, and never showing a secret."""

from __future__ import annotations

import pytest

from outbox.dispatch import Dispatcher
from outbox.errors import ConfigurationError
from outbox.retry import RetryPolicy
from outbox.settings import (
    DEFAULT_MINTFAX_BASE_URL,
    Settings,
    environment_from_env,
    libpq_url,
    mask_url_password,
    sqlalchemy_url,
)
from outbox.submit import SubmitContext

SECRET_ENV = {
    "DATABASE_URL": "postgresql://faxout:db-pass-123@db.internal:5432/faxout",
    "REDIS_URL": "redis://:redis-pass-456@cache.internal:6379/0",
    "MINTFAX_API_KEY": "fx_live_api-key-789",
    "MINTFAX_WEBHOOK_SECRET": "whsec_old-secret-1, whsec_new-secret-2",
    "FAXOUT_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/hook-token-000",
}
SECRET_VALUES = [
    "db-pass-123",
    "redis-pass-456",
    "fx_live_api-key-789",
    "old-secret-1",
    "new-secret-2",
    "hook-token-000",
]


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "sandbox"
    assert settings.mintfax_base_url == DEFAULT_MINTFAX_BASE_URL == "https://api.mintfax.com/v1"
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.mintfax_webhook_secrets == ()


def test_an_explicit_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAXOUT_ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    settings = Settings.from_env({"FAXOUT_RATE_LIMIT_PER_MINUTE": "120"})
    assert settings.environment == "sandbox"
    assert settings.database_url is None
    assert settings.rate_limit_per_minute == 120


def test_process_environment_is_read_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAXOUT_ENVIRONMENT", "production")
    monkeypatch.setenv("FAXOUT_LEASE_SECONDS", "60")
    settings = Settings.from_env()
    assert settings.environment == "production"
    assert settings.lease_seconds == 60


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_env({"FAXOUT_ENVIRONMENT": "", "DATABASE_URL": ""})
    assert settings.environment == "sandbox"
    assert settings.database_url is None


def test_values_are_typed() -> None:
    settings = Settings.from_env(
        {
            "FAXOUT_ENVIRONMENT": "production",
            "FAXOUT_HTTP_TIMEOUT_SECONDS": "2.5",
            "FAXOUT_MAX_SUBMIT_ATTEMPTS": "7",
            "MINTFAX_BASE_URL": "http://127.0.0.1:8025/v1",
        }
    )
    assert settings.environment == "production"
    assert settings.http_timeout_seconds == 2.5
    assert settings.max_submit_attempts == 7
    assert settings.mintfax_base_url == "http://127.0.0.1:8025/v1"


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ValueError, match="frozen"):
        settings.environment = "production"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FAXOUT_ENVIRONMENT": "staging"}, "FAXOUT_ENVIRONMENT"),
        ({"FAXOUT_ENVIRONMENT": "Production"}, "FAXOUT_ENVIRONMENT"),
        ({"FAXOUT_LEASE_SECONDS": "soon"}, "FAXOUT_LEASE_SECONDS"),
        ({"FAXOUT_LEASE_SECONDS": "1"}, "FAXOUT_LEASE_SECONDS"),
        ({"FAXOUT_RATE_LIMIT_PER_MINUTE": "0"}, "FAXOUT_RATE_LIMIT_PER_MINUTE"),
        ({"FAXOUT_HTTP_TIMEOUT_SECONDS": "-1"}, "FAXOUT_HTTP_TIMEOUT_SECONDS"),
    ],
)
def test_a_malformed_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert variable in str(caught.value)
    # The value itself is not echoed: the same path reports variables that hold secrets.
    assert next(iter(env.values())) not in str(caught.value)


def test_two_sources_for_the_api_key_are_refused_without_showing_the_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {"MINTFAX_API_KEY": "fx_live_api-key-789", "MINTFAX_API_KEY_FILE": "/run/key"}
        )
    assert "MINTFAX_API_KEY_FILE" in str(caught.value)
    assert "api-key-789" not in str(caught.value)


def test_webhook_secrets_are_split_for_rotation() -> None:
    settings = Settings.from_env({"MINTFAX_WEBHOOK_SECRET": "whsec_a,whsec_b whsec_c\n"})
    assert [s.get_secret_value() for s in settings.mintfax_webhook_secrets] == [
        "whsec_a",
        "whsec_b",
        "whsec_c",
    ]
    plural = Settings.from_env({"MINTFAX_WEBHOOK_SECRETS": "whsec_x"})
    assert [s.get_secret_value() for s in plural.mintfax_webhook_secrets] == ["whsec_x"]


def test_api_key_comes_from_the_environment() -> None:
    settings = Settings.from_env({"MINTFAX_API_KEY": "fx_test_abc"})
    assert settings.api_key().get_secret_value() == "fx_test_abc"


def test_missing_api_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="MINTFAX_API_KEY is not set"):
        Settings.from_env({}).api_key()


def test_no_secret_appears_in_repr_or_str() -> None:
    settings = Settings.from_env(SECRET_ENV)
    shown = repr(settings) + str(settings) + f"{settings}"
    for secret in SECRET_VALUES:
        assert secret not in shown
    # Enough is left to debug a wrong host or user.
    assert "faxout:***@db.internal:5432/faxout" in shown
    assert ":***@cache.internal:6379/0" in shown
    assert "https://hooks.example.com/***" in shown
    # The values themselves are intact for the code that needs them.
    assert settings.database_url == SECRET_ENV["DATABASE_URL"]
    assert settings.api_key().get_secret_value() == "fx_live_api-key-789"


def test_require_urls_fail_clearly_when_unset() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not set"):
        settings.require_database_url()
    with pytest.raises(ConfigurationError, match="REDIS_URL is not set"):
        settings.require_redis_url()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d"),
    ],
)
def test_database_urls_are_given_the_psycopg3_driver(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected
    assert libpq_url(url) == expected.replace("postgresql+psycopg://", "postgresql://")
    assert Settings.from_env({"DATABASE_URL": url}).require_database_url() == expected


@pytest.mark.parametrize("url", ["mysql://u@h/d", "sqlite:///x.db", "h:5432/d"])
def test_non_postgres_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        sqlalchemy_url(url)
    assert "DATABASE_URL" in str(caught.value)
    assert url not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("redis://:p@h:6379/1", "redis://:***@h:6379/1"),
        ("postgresql:///d?host=/tmp", "postgresql:///d?host=/tmp"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "sandbox"),
        ({"FAXOUT_ENVIRONMENT": ""}, "sandbox"),
        ({"FAXOUT_ENVIRONMENT": "sandbox"}, "sandbox"),
        ({"FAXOUT_ENVIRONMENT": "production"}, "production"),
        # An application's (or the workers') other variables never stop an enqueue.
        ({"FAXOUT_ENVIRONMENT": "production", "FAXOUT_LEASE_SECONDS": "zero"}, "production"),
    ],
)
def test_the_enqueue_helper_reads_only_the_environment_name(
    environ: dict[str, str], expected: str
) -> None:
    assert environment_from_env(environ) == expected


def test_an_unknown_environment_name_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="FAXOUT_ENVIRONMENT"):
        environment_from_env({"FAXOUT_ENVIRONMENT": "staging"})


def test_the_environment_name_comes_from_the_process_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAXOUT_ENVIRONMENT", "production")
    assert environment_from_env() == "production"


def test_library_defaults_are_the_settings_defaults() -> None:
    """Objects built without settings (tests, scripts) behave as a default deployment."""
    settings = Settings.from_env({})
    assert RetryPolicy().max_attempts == settings.max_submit_attempts
    assert SubmitContext.__dataclass_fields__["lease_seconds"].default == settings.lease_seconds
    dispatcher_default = Dispatcher.__dataclass_fields__["redispatch_after"].default
    assert dispatcher_default == settings.redispatch_seconds
