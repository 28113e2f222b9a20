"""The chaos run's own servers: it restarts them, so it never uses the Postgres or Redis that
other tests (and engineers) share. Postgres is `tests.pg_cluster.PgCluster`; Redis a plain
`redis-server` without persistence, so a restart loses everything it held (the broker's queue,
the throttle, the pause mirror), as invariant 1 allows."""

from __future__ import annotations

from tests.servers import RedisServer, free_port

__all__ = ["PG_PORTS", "REDIS_PORTS", "RedisServer", "free_port"]

PG_PORTS = range(5450, 5460)
REDIS_PORTS = range(6410, 6420)
