"""Engines and connections: the only place that turns a URL into a database handle."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session

from outbox.settings import libpq_url, sqlalchemy_url


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine on psycopg 3 with liveness checks on by default."""
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    return create_engine(sqlalchemy_url(database_url), **kwargs)


def as_connection(conn_or_session: Connection | Session) -> Connection:
    """The Connection behind `conn_or_session`, inside the caller's own transaction."""
    if isinstance(conn_or_session, Session):
        return conn_or_session.connection()
    if isinstance(conn_or_session, Connection):
        return conn_or_session
    raise TypeError(
        f"expected a sqlalchemy Connection or Session, got {type(conn_or_session).__name__}"
    )


class AsyncConnections:
    """Autocommit psycopg connections for code on an event loop (the webhook receiver's batch
    writes), kept per loop for reuse: a few writers, each holding one connection at a time.

    A connection that failed in any way, or whose user was cancelled, is closed, not kept:
    its state is unknown. There is no ping before use (it would double the round trips): a
    kept connection that the server dropped meanwhile fails on first use, and
    `connection()` says whether it was kept so the caller can retry on a new one. Not
    psycopg_pool: its background tasks and loop binding buy nothing for two connections.
    """

    def __init__(self, database_url: str, *, keep: int = 4, connect_timeout: int = 5) -> None:
        self._url = libpq_url(database_url)
        self._keep = keep
        self._connect_timeout = connect_timeout
        self._idle: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[psycopg.AsyncConnection[Any]]
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def for_engine(cls, engine: Engine, **kwargs: Any) -> AsyncConnections:
        """Connections to the database `engine` connects to, with its credentials."""
        return cls(engine.url.render_as_string(hide_password=False), **kwargs)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], bool]]:
        """A connection of this loop's, and whether it was kept from an earlier use (a kept
        one may have been dropped by the server since)."""
        idle = self._idle.setdefault(asyncio.get_running_loop(), [])
        kept = bool(idle)
        conn = idle.pop() if kept else await self._connect()
        try:
            yield conn, kept
        except BaseException:
            await conn.close()
            raise
        if conn.closed or conn.broken or len(idle) >= self._keep:
            await conn.close()
        else:
            idle.append(conn)

    async def aclose(self) -> None:
        """Close the connections this loop keeps (at shutdown)."""
        idle = self._idle.pop(asyncio.get_running_loop(), [])
        for conn in idle:
            await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=self._connect_timeout
        )
