"""Apply and check the Alembic migrations that define the outbox schema."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from outbox.models import metadata

# Objects that live in migrations only (functions, triggers are invisible to autogenerate).
_IGNORED_DIFFS = {"alembic_version"}


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the packaged migrations and at `engine`."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` (default: the newest). Safe to run repeatedly."""
    with engine.begin() as conn:
        # Serialise concurrent upgrades (several workers starting at once).
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7246011)")
        config = alembic_config(engine)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Migrate the database down to `revision` (default: an empty schema)."""
    with engine.begin() as conn:
        config = alembic_config(engine)
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def differences(engine: Engine) -> list[str]:
    """What differs between the migrated database and `outbox.models`; empty when they agree."""
    problems: list[str] = []
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        problems.append(f"database is at revision {current}, code expects {head}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        for diff in compare_metadata(context, metadata):
            text = repr(diff)
            if any(name in text for name in _IGNORED_DIFFS):
                continue
            problems.append(text)
    return problems
