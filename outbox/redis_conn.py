"""Every Redis client of fax-outbox is built here, from the one `REDIS_URL`.

`REDIS_URL` names either one Redis server or a Redis managed by Sentinel:

    redis://[[user]:password@]host:6379/0                       one server (also rediss://)
    redis+sentinel://[[user]:password@]s1:26379,s2:26379/mymaster/0
                                                                 ask the sentinels s1, s2 ...
                                                                 for master `mymaster`, db 0

In the sentinel form the user and password are the Redis servers' (the master's), exactly as
in `redis://`; the sentinels' own password, when they have one (`requirepass` in
sentinel.conf), is `FAXOUT_REDIS_SENTINEL_PASSWORD`. They are two settings because they are
two secrets: a sentinel that refuses the master's password, or the reverse, is a common
misconfiguration, and each gets an error naming the setting at fault.

The URL is parsed here and nowhere else (`RedisTarget.from_settings`); the throttle, the
pause mirror, webhook counters, the status view, preflight and the Celery broker
(`broker_options`, kombu's `sentinel://` transport with `master_name`) are all built from the
same `RedisTarget`, so all of them follow a failover: a sentinel-managed client asks the
sentinels for the master again whenever its connection breaks or the old master answers
READONLY. redis-py is imported only by the functions that connect (the `[worker]` extra).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

from outbox.errors import ConfigurationError
from outbox.settings import Settings, mask_url_password

if TYPE_CHECKING:
    import redis

log = logging.getLogger("faxout.redis")

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_DIRECT_SCHEMES = ("redis", "rediss", "unix")
_URL_FORM = f"{SENTINEL_SCHEME}://[:password@]host1:26379,host2:26379/master_name/db"


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one server (`url`), or the sentinels that know master `master_name`.

    Its repr shows no password (they are `SecretStr`, and `url` is masked).
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: SecretStr | None = None
    sentinel_password: SecretStr | None = None

    @property
    def is_sentinel(self) -> bool:
        """True when the sentinels are asked where the master is."""
        return bool(self.sentinels)

    @property
    def shown(self) -> str:
        """The URL with its password masked, for logs, errors and status lines."""
        return mask_url_password(self.url)

    def __repr__(self) -> str:
        if not self.is_sentinel:
            return f"RedisTarget({self.shown!r})"
        return f"RedisTarget({self.shown!r}, master={self.master_name!r}, db={self.db})"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTarget:
        """`REDIS_URL` (and `FAXOUT_REDIS_SENTINEL_PASSWORD`) of `settings`, parsed.

        Raises `ConfigurationError` naming the variable when it is unset or malformed.
        """
        return parse_redis_url(
            settings.require_redis_url(), sentinel_password=settings.redis_sentinel_password
        )


def parse_redis_url(url: str, *, sentinel_password: SecretStr | None = None) -> RedisTarget:
    """The `RedisTarget` that `url` names (see the module docstring for the two forms).

    Raises `ConfigurationError("REDIS_URL", ...)` saying what is wrong, never quoting the
    password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError("REDIS_URL", f"is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme in _DIRECT_SCHEMES:
        if sentinel_password is not None:
            raise ConfigurationError(
                "FAXOUT_REDIS_SENTINEL_PASSWORD",
                f"is set but REDIS_URL names no sentinels (use {SENTINEL_SCHEME}://)",
            )
        return RedisTarget(url=url)
    if scheme != SENTINEL_SCHEME:
        raise ConfigurationError(
            "REDIS_URL",
            f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}:// "
            f"(got {parts.scheme or 'no scheme'}://)",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError("REDIS_URL", f"takes no query or fragment here: {_URL_FORM}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    sentinels = tuple(_sentinel_address(h) for h in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ConfigurationError("REDIS_URL", f"names no master: {_URL_FORM}")
    if len(path) > 2 or (len(path) == 2 and path[1] and not path[1].isdigit()):
        raise ConfigurationError(
            "REDIS_URL", f"the part after the master is a db number: {_URL_FORM}"
        )
    return RedisTarget(
        url=url,
        sentinels=sentinels,
        master_name=path[0],
        db=int(path[1]) if len(path) == 2 and path[1] else 0,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def _credentials(userinfo: str) -> tuple[str | None, SecretStr | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (SecretStr(unquote(password)) if colon and password else None)


def _sentinel_address(text: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = text.strip(), str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")  # an IPv6 address in brackets
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            "REDIS_URL", f"has a sentinel address that is not host:port ({text!r}): {_URL_FORM}"
        )
    return host, int(port)


def client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A redis-py client of `target`'s Redis (for a sentinel target: of its current master).

    `options` are connection options (`socket_timeout`, `health_check_interval` ...). A
    sentinel-managed client asks the sentinels for the master on every new connection, so
    after a failover its next command reaches the new master; the sentinels get the same
    timeouts and their own password.
    """
    import redis
    from redis.sentinel import Sentinel

    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **options)
    global _following_pool
    if _following_pool is None:
        _following_pool = _following_pool_class()
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, options),
        **options,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master_name,
        redis_class=redis.Redis,
        connection_pool_class=_following_pool,
        db=target.db,
        username=target.username,
        password=_reveal(target.password),
    )
    return master


# How often a sentinel-managed client asks whether the master moved, while it is in use;
# after no sentinel answered, ten times less often (each try may cost a timeout per sentinel).
MASTER_RECHECK_SECONDS = 1.0
# The longest wait for one sentinel's answer.
SENTINEL_TIMEOUT_SECONDS = 2.0
_following_pool: type | None = None


def _following_pool_class() -> type:
    """redis-py's sentinel pool, also asking the sentinels every `MASTER_RECHECK_SECONDS`
    (when a connection is taken) whether the master moved.

    redis-py asks only when it opens a connection or the old master answers READONLY. After a
    `SENTINEL FAILOVER` the old master stays a writable master for seconds until the
    sentinels demote it (measured here: over 5 s), and open connections keep writing to it:
    a pause or throttle state written there would be lost at its demotion. Asking again
    drops the idle connections to the old master, and a busy one is dropped when given back
    (`owns_connection`), so the next command reaches the new master.
    """
    import time

    from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

    class FollowingSentinelPool(SentinelConnectionPool):
        _next_check = 0.0

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + MASTER_RECHECK_SECONDS
                # Disconnects the idle connections if it moved. The sentinels down: open
                # connections to the master still work, and a new one reports the error
                # itself, as the RedisError its callers translate.
                try:
                    self.get_master_address()  # type: ignore[no-untyped-call]
                except MasterNotFoundError:
                    self._next_check = now + 10 * MASTER_RECHECK_SECONDS
            return super().get_connection(*args, **kwargs)

    return FollowingSentinelPool


def broker_options(
    target: RedisTarget, transport_options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The Celery `broker_url` and `broker_transport_options` for `target`.

    A sentinel target becomes kombu's own form: `sentinel://` URLs, one per sentinel, joined
    by `;`, carrying the master's credentials and the db, plus `master_name` and the
    sentinels' password (`sentinel_kwargs`) in the transport options.
    """
    if not target.is_sentinel:
        return target.url, dict(transport_options)
    userinfo = ""
    if target.username or target.password:
        userinfo = quote(target.username or "", safe="")
        if target.password is not None:
            userinfo += ":" + quote(target.password.get_secret_value(), safe="")
        userinfo += "@"
    url = ";".join(
        f"sentinel://{userinfo}{_host(host)}:{port}/{target.db}" for host, port in target.sentinels
    )
    options = dict(transport_options)
    options["master_name"] = target.master_name
    options["sentinel_kwargs"] = _sentinel_kwargs(target, transport_options)
    return url, options


def check_at_startup(target: RedisTarget, *, timeout: float = 2.0) -> str | None:
    """Ask the sentinels once, at process start, whether `target` can work at all.

    Raises `ConfigurationError` when it never will: a sentinel refuses
    `FAXOUT_REDIS_SENTINEL_PASSWORD`, an address in `REDIS_URL` is not a sentinel, no
    sentinel that answers knows the master name, or the master refuses `REDIS_URL`'s
    password. Returns a one-line warning when no sentinel answers (they may be restarting:
    the process starts and its clients keep asking), None when all is well or `target` is
    one server (nothing to ask).
    """
    if not target.is_sentinel:
        return None
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    unreachable: list[str] = []
    master: tuple[str, int] | None = None
    for host, port in target.sentinels:
        where = f"{host}:{port}"
        probe = redis.Redis(
            host=host,
            port=port,
            password=_reveal(target.sentinel_password),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one question: the answer decides, not a retry
        )
        try:
            answer = probe.sentinel_get_master_addr_by_name(target.master_name)
        except redis.AuthenticationError:
            if _is_redis_server(host, port, target, timeout):
                raise ConfigurationError(
                    "REDIS_URL",
                    f"names {where}, a Redis server, where a sentinel is expected "
                    f"(sentinels listen on {DEFAULT_SENTINEL_PORT} by default)",
                ) from None
            raise ConfigurationError(
                "FAXOUT_REDIS_SENTINEL_PASSWORD",
                f"is refused by the sentinel at {where}"
                + ("" if target.sentinel_password else " (it wants a password)"),
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            unreachable.append(f"{where} ({type(exc).__name__})")
            continue
        except redis.ResponseError as exc:
            if "without any password configured" in str(exc):
                raise ConfigurationError(
                    "FAXOUT_REDIS_SENTINEL_PASSWORD",
                    f"is set but the sentinel at {where} has no password",
                ) from None
            raise ConfigurationError(
                "REDIS_URL",
                f"names {where}, which is not a Redis Sentinel ({exc}; sentinels listen on "
                f"{DEFAULT_SENTINEL_PORT} by default)",
            ) from None
        finally:
            probe.close()
        if isinstance(answer, (list, tuple)) and len(answer) == 2:
            host = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
            master = (host, int(answer[1]))
            break
    if master is None and len(unreachable) == len(target.sentinels):
        return (
            f"no sentinel of REDIS_URL answers ({', '.join(unreachable)}); "
            "Redis clients will keep asking them"
        )
    if master is None:
        raise ConfigurationError(
            "REDIS_URL",
            f"names master {target.master_name!r}, which no sentinel that answered knows "
            "(see `SENTINEL MASTERS` on a sentinel, or its sentinel.conf `sentinel monitor`)",
        )
    return _check_master(target, master, timeout)


def _is_redis_server(host: str, port: int, target: RedisTarget, timeout: float) -> bool:
    """True when `host:port`, which refused the sentinels' password, takes the Redis password
    and does not know SENTINEL: REDIS_URL lists a Redis server among the sentinels (a common
    slip: the server's port instead of the sentinel's)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if target.password is None:
        return False
    probe = redis.Redis(
        host=host,
        port=port,
        username=target.username,
        password=target.password.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        probe.sentinel_get_master_addr_by_name(target.master_name)
    except redis.ResponseError as exc:
        return "unknown command" in str(exc).lower()
    except redis.RedisError:
        return False
    finally:
        probe.close()
    return False


def _check_master(target: RedisTarget, address: tuple[str, int], timeout: float) -> str | None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    where = f"{address[0]}:{address[1]}"
    probe = redis.Redis(
        host=address[0],
        port=address[1],
        db=target.db,
        username=target.username,
        password=_reveal(target.password),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        probe.ping()
    except redis.AuthenticationError:
        raise ConfigurationError(
            "REDIS_URL",
            f"has a password that master {target.master_name!r} at {where} refuses "
            "(the sentinels' own password is FAXOUT_REDIS_SENTINEL_PASSWORD)",
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return f"master {target.master_name!r} at {where} does not answer ({type(exc).__name__})"
    except redis.ResponseError as exc:
        if "without any password configured" in str(exc):
            raise ConfigurationError(
                "REDIS_URL",
                f"has a password but master {target.master_name!r} at {where} has none",
            ) from None
        raise ConfigurationError("REDIS_URL", f"master at {where} refused: {exc}") from None
    finally:
        probe.close()
    return None


def warn_at_startup(target: RedisTarget, *, timeout: float = 2.0) -> None:
    """`check_at_startup`, its warning written as one log line (errors still raised)."""
    warning = check_at_startup(target, timeout=timeout)
    if warning is not None:
        log.warning("%s", warning, extra={"action": "redis.sentinels_unreachable"})


def _sentinel_kwargs(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    # Given explicitly, redis-py uses these alone for the sentinels. A sentinel's answer is a
    # few bytes: one silent for SENTINEL_TIMEOUT_SECONDS is as good as down, and the next is
    # asked (a blackholed sentinel must not hold a command for the Redis timeout).
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    for name in ("socket_timeout", "socket_connect_timeout"):
        given = kwargs.get(name)
        kwargs[name] = (
            SENTINEL_TIMEOUT_SECONDS if given is None else min(given, SENTINEL_TIMEOUT_SECONDS)
        )
    # redis-py retries each command 3 times with backoff (up to 10 s): for a sentinel that is
    # down, 7 s of sleeping before the next is asked, ~20 s for three, with a command waiting.
    # The next sentinel is the retry.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password.get_secret_value()
    return kwargs


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
