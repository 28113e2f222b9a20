"""Fixtures for acceptance tests: a fleet of real processes per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.acceptance.fleet import Fleet, fleet_env, log_dir
from workers.single_host.stack import Stack


@pytest.fixture
def fleet(database_url: str, redis_url: str, engine: Engine, tmp_path: Path) -> Iterator[Fleet]:
    """A stack on this test's database and Redis; the test starts what it needs."""
    stack = Stack(fleet_env(database_url, redis_url), log_dir(tmp_path))
    harness = Fleet(stack, engine, redis_url)
    try:
        yield harness
    finally:
        stack.stop_all(grace=15)
