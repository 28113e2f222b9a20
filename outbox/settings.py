"""One typed settings object, read once at the edge of each process.

Nothing in `outbox/` reads the environment at import time: processes build a `Settings` with
`Settings.from_env()` (tests pass their own mapping) and hand it, or the pieces it holds, to
the functions they call. Secrets are `pydantic.SecretStr`, so they print as `'**********'` in
reprs, logs and tracebacks (invariant 7).
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from outbox.errors import ConfigurationError
from outbox.keys import api_key_problem

log = logging.getLogger("faxout.settings")

DEFAULT_MINTFAX_BASE_URL = "https://api.mintfax.com/v1"
# The defaults of the knobs below that library code also uses as its own defaults (a
# `SubmitContext`, `RetryPolicy` or `Dispatcher` built without settings, as tests do).
DEFAULT_LEASE_SECONDS = 120
DEFAULT_MAX_SUBMIT_ATTEMPTS = 5
DEFAULT_REDISPATCH_SECONDS = 20.0
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
# This many faxes in a row refused by mintfax with the same error pause the fleet (0: never).
DEFAULT_REJECTION_BREAKER = 10
# Status polling and the balance watch (their knobs are below, in `Settings`).
DEFAULT_POLL_AFTER_SECONDS = 600.0
DEFAULT_POLL_SHARE = 0.2
DEFAULT_LOW_BALANCE_CENTS = 500
DEFAULT_RESUME_BALANCE_CENTS = 1000
# Liveness: heartbeat period, and how long a role may have no live process before one alert.
DEFAULT_HEARTBEAT_SECONDS = 5.0
DEFAULT_LIVENESS_ALERT_SECONDS = 120.0
# The longest throttle wait a worker sleeps while holding a lease (longer: it gives the row back).
MAX_INLINE_WAIT_SECONDS = 1.0
# What a lease must hold beyond the request and the inline wait: the claim's and the record's
# round trips, and the check just before the POST.
LEASE_MARGIN_SECONDS = 2.0

Environment = Literal["sandbox", "production"]
_LEVELS = ("debug", "info", "warning", "error")


def sqlalchemy_url(url: str) -> str:
    """Return `url` with the psycopg 3 driver named, as SQLAlchemy needs it."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigurationError(
        "DATABASE_URL", "must be a postgresql:// URL (postgresql+psycopg:// also accepted)"
    )


def libpq_url(url: str) -> str:
    """Return `url` as plain libpq understands it (psql, psycopg.connect)."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://") :]


class Settings(BaseSettings):
    """Every knob of fax-outbox. Standard names for shared services, `FAXOUT_` for our own."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    # The sentinels' own password (sentinel.conf `requirepass`) when REDIS_URL is a
    # redis+sentinel:// URL, whose user info is the Redis servers' (outbox/redis_conn.py).
    redis_sentinel_password: SecretStr | None = Field(
        default=None, validation_alias="FAXOUT_REDIS_SENTINEL_PASSWORD"
    )

    mintfax_api_key: SecretStr | None = Field(default=None, validation_alias="MINTFAX_API_KEY")
    mintfax_api_key_file: Path | None = Field(default=None, validation_alias="MINTFAX_API_KEY_FILE")
    mintfax_base_url: str = Field(
        default=DEFAULT_MINTFAX_BASE_URL, validation_alias="MINTFAX_BASE_URL"
    )
    # Several secrets (comma or whitespace separated) so a rotation has an overlap window.
    mintfax_webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        validation_alias=AliasChoices("MINTFAX_WEBHOOK_SECRET", "MINTFAX_WEBHOOK_SECRETS"),
    )
    # Or from a file (a secrets mount), read again when it changes: a rotation needs no restart.
    mintfax_webhook_secret_file: Path | None = Field(
        default=None, validation_alias="MINTFAX_WEBHOOK_SECRET_FILE"
    )

    environment: Environment = Field(default="sandbox", validation_alias="FAXOUT_ENVIRONMENT")
    rate_limit_per_minute: int = Field(
        default=60, ge=1, le=100_000, validation_alias="FAXOUT_RATE_LIMIT_PER_MINUTE"
    )
    alert_webhook_url: str | None = Field(default=None, validation_alias="FAXOUT_ALERT_WEBHOOK_URL")
    # Where `faxout preflight` posts its signed self-test event: our own webhook receiver as
    # seen from where preflight runs (unset: the endpoint registered at mintfax).
    webhook_self_test_url: str | None = Field(
        default=None, validation_alias="FAXOUT_WEBHOOK_SELF_TEST_URL"
    )
    lease_seconds: int = Field(
        default=DEFAULT_LEASE_SECONDS, ge=5, le=3600, validation_alias="FAXOUT_LEASE_SECONDS"
    )
    http_timeout_seconds: float = Field(
        default=DEFAULT_HTTP_TIMEOUT_SECONDS,
        gt=0,
        le=300,
        validation_alias="FAXOUT_HTTP_TIMEOUT_SECONDS",
    )
    max_submit_attempts: int = Field(
        default=DEFAULT_MAX_SUBMIT_ATTEMPTS,
        ge=1,
        le=20,
        validation_alias="FAXOUT_MAX_SUBMIT_ATTEMPTS",
    )
    # A circuit breaker: the same refusal for this many faxes in a row across the fleet is a
    # setup problem (an unsupported account feature, a wrong environment), not bad faxes.
    rejection_breaker: int = Field(
        default=DEFAULT_REJECTION_BREAKER,
        ge=0,
        le=100_000,
        validation_alias="FAXOUT_REJECTION_BREAKER",
    )
    # A dispatched row not claimed within this long (its message was lost, e.g. Redis was
    # flushed) is published again; a duplicate message costs one no-op claim.
    redispatch_seconds: float = Field(
        default=DEFAULT_REDISPATCH_SECONDS,
        ge=1,
        le=3600,
        validation_alias="FAXOUT_REDISPATCH_SECONDS",
    )
    # Celery task events, which Flower shows (tests/acceptance: Flower's own `enable_events`
    # did not bring them back in time). Each is a Redis PUBLISH per message on the hot path.
    task_events: bool = Field(default=True, validation_alias="FAXOUT_TASK_EVENTS")
    # --- the admin server (`faxout admin serve`: /metrics and the dashboard) ---
    # Basic-auth credentials, required to bind it beyond loopback; the password from the
    # variable or from a file (a secrets mount), not both.
    admin_user: str | None = Field(default=None, validation_alias="FAXOUT_ADMIN_USER")
    admin_password: SecretStr | None = Field(default=None, validation_alias="FAXOUT_ADMIN_PASSWORD")
    admin_password_file: Path | None = Field(
        default=None, validation_alias="FAXOUT_ADMIN_PASSWORD_FILE"
    )
    # Redis redelivers an unacknowledged message after this long; it must exceed any task.
    broker_visibility_timeout: int = Field(
        default=6 * 3600, ge=1, validation_alias="FAXOUT_BROKER_VISIBILITY_TIMEOUT"
    )
    # --- status polling and balance watch (outbox/poller.py, outbox/balance_watch.py) ---
    # A row accepted this long ago without a final state is read with GET /fax/{id}.
    poll_after_seconds: float = Field(
        default=DEFAULT_POLL_AFTER_SECONDS, ge=1, le=7 * 86_400,
        validation_alias="FAXOUT_POLL_AFTER_SECONDS",
    )  # fmt: skip
    # The largest share of FAXOUT_RATE_LIMIT_PER_MINUTE polls may take (0 turns polling off).
    poll_share: float = Field(
        default=DEFAULT_POLL_SHARE, ge=0, le=1, validation_alias="FAXOUT_POLL_SHARE"
    )
    # Available credit (cents) below which one low-balance alert is raised per episode.
    low_balance_cents: int = Field(
        default=DEFAULT_LOW_BALANCE_CENTS, ge=0, validation_alias="FAXOUT_LOW_BALANCE_CENTS"
    )
    # Available credit (cents) at or above which a balance pause is lifted automatically.
    resume_balance_cents: int = Field(
        default=DEFAULT_RESUME_BALANCE_CENTS, ge=1, validation_alias="FAXOUT_RESUME_BALANCE_CENTS"
    )
    # --- retention (outbox/retention.py) ---
    # Remove the document bytes of a final fax this many days after it became final (unset:
    # keep them); the row, its key and its history stay.
    retention_days: float | None = Field(
        default=None, ge=0, le=36_500, validation_alias="FAXOUT_RETENTION_DAYS"
    )
    # Delete final rows and their history (attempts, events, alerts) this many days after
    # they became final (unset: never). A re-enqueue of a deleted intent is a new fax.
    purge_days: float | None = Field(
        default=None, ge=1, le=36_500, validation_alias="FAXOUT_PURGE_DAYS"
    )
    # Remove the bytes as soon as a fax is final (beat's next pass, seconds later).
    zero_footprint: bool = Field(default=False, validation_alias="FAXOUT_ZERO_FOOTPRINT")
    # Also ask mintfax to delete its copy (DELETE /v1/fax/{id}) once our bytes are gone.
    delete_at_mintfax: bool = Field(default=False, validation_alias="FAXOUT_DELETE_AT_MINTFAX")
    # --- logs (outbox/logs.py) ---
    # One line per event: "json" (one object per line) or "text".
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias="FAXOUT_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="FAXOUT_LOG_LEVEL"
    )
    # --- liveness (outbox/liveness.py) ---
    # How often the relay, beat, workers and webhook receivers publish a heartbeat.
    heartbeat_seconds: float = Field(
        default=DEFAULT_HEARTBEAT_SECONDS, ge=0.1, le=300,
        validation_alias="FAXOUT_HEARTBEAT_SECONDS",
    )  # fmt: skip
    # No relay (or no beat) alive for this long raises one alert per episode.
    liveness_alert_seconds: float = Field(
        default=DEFAULT_LIVENESS_ALERT_SECONDS, ge=1, le=86_400,
        validation_alias="FAXOUT_LIVENESS_ALERT_SECONDS",
    )  # fmt: skip
    # Where operators (and `faxout preflight`) find Flower; optional.
    flower_url: str | None = Field(default=None, validation_alias="FAXOUT_FLOWER_URL")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `from_env` is the one reader of the environment; pydantic-settings' own env source
        # would otherwise overlay os.environ on the mapping a test (or a process) passed in.
        return (init_settings,)

    @field_validator("mintfax_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _split_secrets(value)
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> Settings:
        # A POST must never outlive the lease it is made under (invariant 3): the lease
        # covers the longest inline throttle wait, the request's timeout and a margin.
        needed = self.http_timeout_seconds + MAX_INLINE_WAIT_SECONDS + LEASE_MARGIN_SECONDS
        if self.lease_seconds <= needed:
            raise ConfigurationError(
                "FAXOUT_LEASE_SECONDS",
                f"must exceed FAXOUT_HTTP_TIMEOUT_SECONDS ({self.http_timeout_seconds:g}) plus "
                f"the longest inline throttle wait ({MAX_INLINE_WAIT_SECONDS:g}) and a margin "
                f"({LEASE_MARGIN_SECONDS:g}): more than {needed:g} seconds, got "
                f"{self.lease_seconds}",
            )
        return self

    @model_validator(mode="after")
    def _alert_after_missed_heartbeats(self) -> Settings:
        # A process that missed one beat (a GC pause, a slow database) is not down: the alert
        # waits for at least two heartbeat periods without any live process of the role.
        if self.liveness_alert_seconds < 2 * self.heartbeat_seconds:
            raise ConfigurationError(
                "FAXOUT_LIVENESS_ALERT_SECONDS",
                f"must be at least twice FAXOUT_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), "
                f"got {self.liveness_alert_seconds:g}",
            )
        return self

    @model_validator(mode="after")
    def _retention_fits_together(self) -> Settings:
        # Rows deleted before their bytes were due would make FAXOUT_RETENTION_DAYS a lie, and
        # a deletion at mintfax follows the removal of our own bytes, so it needs one.
        if (
            self.purge_days is not None
            and self.retention_days is not None
            and self.purge_days < self.retention_days
        ):
            raise ConfigurationError(
                "FAXOUT_PURGE_DAYS",
                f"must be at least FAXOUT_RETENTION_DAYS ({self.retention_days:g}), "
                f"got {self.purge_days:g}",
            )
        if self.delete_at_mintfax and self.retention_days is None and not self.zero_footprint:
            raise ConfigurationError(
                "FAXOUT_DELETE_AT_MINTFAX",
                "needs FAXOUT_RETENTION_DAYS or FAXOUT_ZERO_FOOTPRINT: mintfax's copy is "
                "deleted once ours is",
            )
        return self

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if value.strip().lower() in _LEVELS else value.strip().lower()

    @field_validator("mintfax_api_key", mode="before")
    @classmethod
    def _clean_api_key(cls, value: Any) -> Any:
        # The same rule as a key file's: surrounding whitespace (a trailing newline from a
        # secrets mount or `echo`) is not part of the key; anything else the client could not
        # send is refused here, naming the variable and never quoting the value.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return SecretStr(_clean_api_key(value, "MINTFAX_API_KEY"))
        return value

    @model_validator(mode="after")
    def _one_source_for_the_key(self) -> Settings:
        if self.mintfax_api_key is not None and self.mintfax_api_key_file is not None:
            raise ValueError("set MINTFAX_API_KEY or MINTFAX_API_KEY_FILE, not both")
        if self.mintfax_webhook_secrets and self.mintfax_webhook_secret_file is not None:
            raise ValueError("set MINTFAX_WEBHOOK_SECRET or MINTFAX_WEBHOOK_SECRET_FILE, not both")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs carry credentials too (postgresql://user:password@host, redis://:password@host,
        # a chat webhook's token in its path): print them with the secret parts masked.
        for name, value in super().__repr_args__():
            if isinstance(value, str) and name in _MASKED_URL_FIELDS:
                yield name, _MASKED_URL_FIELDS[name](value)
            else:
                yield name, value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment).

        Raises `ConfigurationError` naming the variable when a value is invalid.
        """
        source = dict(os.environ if environ is None else environ)
        fields: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            aliases: list[str] = []
            alias = info.validation_alias
            if isinstance(alias, str):
                aliases = [alias]
            elif isinstance(alias, AliasChoices):
                aliases = [a for a in alias.choices if isinstance(a, str)]
            for env_name in aliases:
                if env_name in source and source[env_name] != "":
                    fields[name] = source[env_name]
                    break
        try:
            return cls.model_validate(fields)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ConfigurationError("environment", _describe_validation_error(exc)) from None

    def require_database_url(self) -> str:
        """The SQLAlchemy URL of the outbox database; a clear error when unset."""
        if not self.database_url:
            raise ConfigurationError("DATABASE_URL", "is not set")
        return sqlalchemy_url(self.database_url)

    def require_redis_url(self) -> str:
        """The Redis URL (broker and throttle); a clear error when unset."""
        if not self.redis_url:
            raise ConfigurationError("REDIS_URL", "is not set")
        return self.redis_url

    def api_key(self) -> SecretStr:
        """The mintfax API key, from `MINTFAX_API_KEY` or read from `MINTFAX_API_KEY_FILE`.

        The file is looked at on every call so that a rotated key (file replaced by a secrets
        manager) is picked up without a restart; it is read again only when it changed.
        """
        if self.mintfax_api_key_file is not None:
            text = _read_secret_file(self.mintfax_api_key_file, "MINTFAX_API_KEY_FILE")
            return SecretStr(_clean_api_key(text, "MINTFAX_API_KEY_FILE"))
        if self.mintfax_api_key is None:
            raise ConfigurationError("MINTFAX_API_KEY", "is not set (nor MINTFAX_API_KEY_FILE)")
        return self.mintfax_api_key

    def webhook_secrets(self) -> tuple[SecretStr, ...]:
        """The webhook signing secrets, from `MINTFAX_WEBHOOK_SECRET` or read from
        `MINTFAX_WEBHOOK_SECRET_FILE` (comma or whitespace separated, as in the variable).

        The file is looked at on every call, like the API key's, so a rotation (`new,old`,
        then `new`) reaches a running receiver without a restart; it is read again only when
        it changed. Raises `ConfigurationError` when the file cannot be read.
        """
        path = self.mintfax_webhook_secret_file
        if path is None:
            return self.mintfax_webhook_secrets
        text = _read_secret_file(path, "MINTFAX_WEBHOOK_SECRET_FILE")
        return tuple(SecretStr(part) for part in _split_secrets(text))

    def admin_credentials(self) -> tuple[str, SecretStr] | None:
        """The admin server's basic-auth user and password; None when neither is set.

        Raises `ConfigurationError` when only one half is set, when both password sources
        are, or when the file cannot be read or is empty (never quoting the password).
        """
        if self.admin_password is not None and self.admin_password_file is not None:
            raise ConfigurationError(
                "FAXOUT_ADMIN_PASSWORD", "set it or FAXOUT_ADMIN_PASSWORD_FILE, not both"
            )
        password = self.admin_password
        if self.admin_password_file is not None:
            try:
                text = self.admin_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(
                    "FAXOUT_ADMIN_PASSWORD_FILE", f"cannot be read ({exc.strerror})"
                ) from None
            if not text:
                raise ConfigurationError("FAXOUT_ADMIN_PASSWORD_FILE", "is empty")
            password = SecretStr(text)
        if self.admin_user is None and password is None:
            return None
        if not self.admin_user or password is None or not password.get_secret_value():
            raise ConfigurationError(
                "FAXOUT_ADMIN_USER",
                "and FAXOUT_ADMIN_PASSWORD (or FAXOUT_ADMIN_PASSWORD_FILE) go together",
            )
        return self.admin_user, password


def environment_from_env(environ: Mapping[str, str] | None = None) -> Environment:
    """`FAXOUT_ENVIRONMENT` alone, validated as `Settings` validates it (default `sandbox`).

    For applications that enqueue without building `Settings` (`outbox.enqueue_fax`): no other
    variable is read, so an application's unrelated (or the workers' invalid) settings never
    stand in the way of writing a fax.
    """
    source = os.environ if environ is None else environ
    name = "FAXOUT_ENVIRONMENT"
    return Settings.from_env({name: source[name]} if name in source else {}).environment


def log_settings_from_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[Literal["text", "json"], str]:
    """(`FAXOUT_LOG_FORMAT`, `FAXOUT_LOG_LEVEL`) alone, validated as `Settings` does; for a
    process that sets up its logs before (or without) its other settings being valid. An
    invalid value raises `ConfigurationError` naming it."""
    source = os.environ if environ is None else environ
    names = ("FAXOUT_LOG_FORMAT", "FAXOUT_LOG_LEVEL")
    settings = Settings.from_env({n: source[n] for n in names if n in source})
    return settings.log_format, settings.log_level


def _warn_if_readable_by_others(path: Path, mode: int, variable: str) -> None:
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _warn_key_file_mode(path, mode, variable)


@functools.cache
def _warn_key_file_mode(path: Path, mode: int, variable: str) -> None:
    # Once per file and mode: the file is looked at before every fax (or webhook). Names the
    # file, never what it holds.
    log.warning(
        "%s %s is readable by group or others (mode %s); "
        "a secret's file should be readable by its owner only (chmod 600)",
        variable,
        path,
        oct(mode),
        extra={"action": "settings.key_file_mode"},
    )


def _split_secrets(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(",", " ").split() if part)


def _read_secret_file(path: Path, variable: str) -> str:
    """What the file `variable` names holds, read again only when the file changed; a
    `ConfigurationError` naming the variable (never the content) when it cannot be read."""
    try:
        info = path.stat()
        _warn_if_readable_by_others(path, stat.S_IMODE(info.st_mode), variable)
        return _read_key_file(path, info.st_mtime_ns, info.st_size, info.st_ino)
    except OSError as exc:
        raise ConfigurationError(variable, f"cannot be read ({exc.strerror})") from None


@functools.lru_cache(maxsize=4)
def _read_key_file(path: Path, mtime_ns: int, size: int, inode: int) -> str:
    # Keyed by what the file is now: a replaced or rewritten file is a new cache entry.
    return path.read_text(encoding="utf-8")


def _clean_api_key(text: str, variable: str) -> str:
    """The API key in `text` (from `variable`), without the whitespace around it.

    Raises `ConfigurationError` naming `variable` (never the value) when what remains is empty
    or is not something the client may send (`outbox.keys.api_key_problem`).
    """
    key = text.strip()
    if not key:
        raise ConfigurationError(variable, "is empty")
    problem = api_key_problem(key)
    if problem is not None:
        raise ConfigurationError(variable, problem)
    return key


def mask_url_password(url: str) -> str:
    """`url` with the password of its user info replaced by `***` (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def mask_url_path(url: str) -> str:
    """Only the scheme and host of `url`: webhook URLs often carry their token in the path."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return "***"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}/***"


_MASKED_URL_FIELDS: dict[str, Callable[[str], str]] = {
    "database_url": mask_url_password,
    "redis_url": mask_url_password,
    "alert_webhook_url": mask_url_path,
    "webhook_self_test_url": mask_url_path,
    "flower_url": mask_url_password,
}


def _describe_validation_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        field = Settings.model_fields.get(loc)
        alias = field.validation_alias if field is not None else None
        if isinstance(alias, AliasChoices):
            alias = alias.choices[0]
        parts.append(f"{alias if isinstance(alias, str) else loc}: {err.get('msg')}")
    return "; ".join(parts)
