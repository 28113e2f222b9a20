"""The schema: migrations run both ways and agree with the models."""

from __future__ import annotations

from sqlalchemy import inspect

from outbox import schema
from outbox.db import make_engine


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        schema.upgrade(engine)
        assert "fax_outbox" in inspect(engine).get_table_names()
        schema.upgrade(engine)  # idempotent
        schema.downgrade(engine, "base")
        names = inspect(engine).get_table_names()
        assert "fax_outbox" not in names and "fax_attempts" not in names
        with engine.connect() as conn:
            leftovers = conn.exec_driver_sql(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'fax_outbox%%'"
            ).all()
            types = conn.exec_driver_sql("SELECT 1 FROM pg_type WHERE typname = 'fax_status'").all()
        assert leftovers == [] and types == []
        schema.upgrade(engine)
        assert schema.current_revision(engine) == schema.head_revision(engine)
    finally:
        engine.dispose()


def test_models_match_migrations(engine) -> None:  # type: ignore[no-untyped-def]
    assert schema.differences(engine) == []


def test_unmigrated_database_is_reported(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        problems = schema.differences(engine)
        assert any("code expects" in p for p in problems)
    finally:
        engine.dispose()
