"""Engines and connections: the only place that turns a URL into a database handle."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session

from outbox.settings import sqlalchemy_url


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
