"""REDIS_URL's two forms, parsed in one place (outbox/redis_conn.py), and what each client and
the Celery broker are given; no I/O."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from outbox import redis_conn
from outbox.errors import ConfigurationError
from outbox.redis_conn import RedisTarget, parse_redis_url
from outbox.settings import Settings

SENTINEL_URL = "redis+sentinel://:r3dis%40pw@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/3"


def test_a_plain_url_is_one_server_passed_through() -> None:
    target = parse_redis_url("redis://:pw@localhost:6379/2")
    assert not target.is_sentinel and target.url == "redis://:pw@localhost:6379/2"
    assert redis_conn.broker_options(target, {"visibility_timeout": 7}) == (
        "redis://:pw@localhost:6379/2",
        {"visibility_timeout": 7},
    )
    assert "pw" not in repr(target) and "***" in repr(target)


def test_the_sentinel_form_names_sentinels_master_db_and_the_masters_password() -> None:
    target = parse_redis_url(SENTINEL_URL, sentinel_password=SecretStr("s3ntinel"))
    assert target.is_sentinel
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379))
    assert target.master_name == "mymaster" and target.db == 3
    assert target.password is not None and target.password.get_secret_value() == "r3dis@pw"
    assert target.username is None
    shown = repr(target)
    assert "r3dis" not in shown and "s3ntinel" not in shown and "mymaster" in shown


def test_the_db_defaults_to_0_and_a_user_is_kept() -> None:
    target = parse_redis_url("redis+sentinel://app:pw@h1/m")
    assert target.db == 0 and target.username == "app" and target.sentinels == (("h1", 26379),)
    assert parse_redis_url("redis+sentinel://h1:26379/m/").db == 0


def test_the_broker_is_kombus_sentinel_transport_with_both_passwords_in_their_places() -> None:
    target = parse_redis_url(SENTINEL_URL, sentinel_password=SecretStr("s3ntinel"))
    url, options = redis_conn.broker_options(
        target, {"visibility_timeout": 7, "socket_timeout": 10}
    )
    # kombu: one sentinel:// URL per sentinel, joined by ';', the master's credentials and db
    # in each (kombu reads the first's), the sentinels' password in sentinel_kwargs.
    assert url == (
        "sentinel://:r3dis%40pw@10.0.0.1:26379/3;"
        "sentinel://:r3dis%40pw@10.0.0.2:26380/3;"
        "sentinel://:r3dis%40pw@sentinel-c:26379/3"
    )
    retry = options["sentinel_kwargs"].pop("retry")
    assert options == {
        "visibility_timeout": 7,
        "socket_timeout": 10,
        "master_name": "mymaster",
        # A sentinel's answer is small: its timeouts are capped (2 s), both set.
        "sentinel_kwargs": {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "password": "s3ntinel",
        },
    }
    assert retry.get_retries() == 0  # the next sentinel is the retry, not a sleep


def test_kombu_reads_the_sentinel_url_as_meant() -> None:
    from kombu import Connection

    target = parse_redis_url(SENTINEL_URL)
    url, options = redis_conn.broker_options(target, {})
    conn = Connection(url, transport_options=options)
    assert conn.transport_cls == "sentinel"
    assert conn.password == "r3dis@pw" and conn.virtual_host == "3"
    assert conn.alt == url.split(";")
    assert "r3dis" not in conn.as_uri()


def test_a_sentinel_client_asks_the_sentinels_with_their_own_password() -> None:
    target = parse_redis_url(SENTINEL_URL, sentinel_password=SecretStr("s3ntinel"))
    client = redis_conn.client(target, socket_timeout=5)
    pool = client.connection_pool
    assert pool.connection_kwargs["password"] == "r3dis@pw"
    assert pool.connection_kwargs["db"] == 3
    manager = pool.sentinel_manager  # type: ignore[attr-defined]
    first = manager.sentinels[0].connection_pool.connection_kwargs
    assert first["password"] == "s3ntinel" and first["socket_timeout"] == 2.0
    assert (first["host"], first["port"]) == ("10.0.0.1", 26379)
    client.close()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://h/m", "must start with redis://"),
        ("redis+sentinel://h1:26379", "names no master"),
        ("redis+sentinel://h1:26379/", "names no master"),
        ("redis+sentinel://h1:26379/m/x", "db number"),
        ("redis+sentinel://h1:26379/m/0/extra", "db number"),
        ("redis+sentinel://h1:port/m", "not host:port"),
        ("redis+sentinel://h1:26379,/m", "not host:port"),
        ("redis+sentinel://h1:99999/m", "not host:port"),
        ("redis+sentinel://h1/m?sentinel_password=x", "no query"),
    ],
)
def test_a_malformed_url_is_refused_naming_redis_url(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url(url)
    assert caught.value.setting == "REDIS_URL" and said in caught.value.reason


def test_a_password_never_appears_in_the_refusal() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url("redis+sentinel://:hunter22@h1:x/m")
    assert "hunter22" not in str(caught.value)


def test_a_sentinel_password_without_sentinels_is_a_mistake_said_so() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url("redis://localhost/0", sentinel_password=SecretStr("x"))
    assert caught.value.setting == "FAXOUT_REDIS_SENTINEL_PASSWORD"


def test_settings_hide_both_passwords() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": SENTINEL_URL, "FAXOUT_REDIS_SENTINEL_PASSWORD": "s3ntinel"}
    )
    shown = repr(settings)
    assert "r3dis" not in shown and "s3ntinel" not in shown
    assert "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/3" in shown
    target = RedisTarget.from_settings(settings)
    assert target.sentinel_password is not None
    assert target.sentinel_password.get_secret_value() == "s3ntinel"


def test_an_unset_redis_url_is_refused_naming_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisTarget.from_settings(Settings.from_env({}))
    assert caught.value.setting == "REDIS_URL"


def test_one_server_needs_no_startup_question() -> None:
    assert redis_conn.check_at_startup(parse_redis_url("redis://localhost:1/0")) is None


def test_every_redis_client_of_the_processes_is_built_through_redis_conn() -> None:
    """A client built elsewhere would read REDIS_URL its own way and miss the sentinels."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    builders = re.compile(r"\bfrom_url\(|\bRedis\(|\bStrictRedis\(|\bSentinel\(|\bmaster_for\(")
    found = [
        f"{path.relative_to(root)}:{number}"
        for package in ("outbox", "workers")
        for path in sorted((root / package).rglob("*.py"))
        if path.name != "redis_conn.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if builders.search(line)
    ]
    assert found == []
