"""Test tiers and the real services they run on.

- `tests/unit`: no I/O.
- `tests/integration`: real Postgres and Redis. Each test gets its own database cloned from a
  template migrated once per session, and its own Redis database index, flushed first.
- `tests/acceptance`: real processes (CLI, workers, servers) on top of the same.

`DATABASE_URL` / `REDIS_URL` are used when set; otherwise embedded servers are started once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from outbox import schema
from outbox.db import make_engine
from outbox.settings import libpq_url
from tests.sandbox_fixtures import *  # noqa: F403 (the mintfax sandbox fixtures)
from tests.sandbox_fixtures import SERVER_FIXTURES
from workers.single_host import embedded

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The chaos run (tests/chaos, `make chaos`) takes minutes and restarts servers of its own:
    # only a `-m` expression that names it selects it, never `make test` or a bare pytest.
    if "chaos" not in (config.option.markexpr or ""):
        chaos = [item for item in items if item.get_closest_marker("chaos")]
        if chaos:
            config.hook.pytest_deselected(items=chaos)
            items[:] = [item for item in items if not item.get_closest_marker("chaos")]
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        # tests/sandbox holds both tiers: a test that starts the simulator or a webhook
        # receiver (through a fixture) is an acceptance test, the rest are unit tests.
        if tier == "sandbox" and SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            tier = "acceptance"
        if tier in ("integration", "acceptance"):
            item.add_marker(getattr(pytest.mark, tier))
    # Real-process tests first: most of their time is waiting (on processes, on real time), and
    # started last they were a tail of minutes with the fast tests long done; in front, xdist's
    # workers fill those waits with the fast tests.
    order = {"acceptance": 0, "integration": 1}
    items.sort(key=lambda item: min((order.get(m.name, 2) for m in item.iter_markers()), default=2))


def _worker_number(config: pytest.Config) -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker.startswith("gw") else 0


@pytest.fixture(scope="session")
def service_urls() -> Iterator[embedded.ServiceURLs]:
    """The Postgres and Redis this session runs on (given by the environment, or embedded)."""
    with embedded.services(
        os.environ.get("DATABASE_URL") or None, os.environ.get("REDIS_URL") or None
    ) as urls:
        yield urls


def _with_database(url: str, name: str) -> str:
    return libpq_url(make_url(libpq_url(url)).set(database=name).render_as_string(False))


def _admin(service_urls: embedded.ServiceURLs) -> psycopg.Connection:
    return psycopg.connect(libpq_url(service_urls.database_url), autocommit=True)


@pytest.fixture(scope="session")
def template_database(
    service_urls: embedded.ServiceURLs, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database migrated to head, cloned by every test that needs one."""
    name = f"faxout_tpl_{_worker_number(request.config)}_{os.getpid()}"
    with _admin(service_urls) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(service_urls.database_url, name)
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    yield name
    with _admin(service_urls) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(service_urls: embedded.ServiceURLs) -> Iterator[str]:
    """A fresh, unmigrated database (for migration tests)."""
    name = f"faxout_e_{uuid.uuid4().hex[:12]}"
    with _admin(service_urls) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(service_urls.database_url, name)
    with _admin(service_urls) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(service_urls: embedded.ServiceURLs, template_database: str) -> Iterator[str]:
    """A migrated database of this test's own (libpq URL)."""
    name = f"faxout_t_{uuid.uuid4().hex[:12]}"
    with _admin(service_urls) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _with_database(service_urls.database_url, name)
    with _admin(service_urls) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on this test's database."""
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def redis_url(service_urls: embedded.ServiceURLs, request: pytest.FixtureRequest) -> str:
    """A Redis database index of this xdist worker's own, flushed before the test."""
    parts = urlsplit(service_urls.redis_url)
    index = 1 + _worker_number(request.config)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, ""))
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
