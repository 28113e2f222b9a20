"""Alembic migrations of the fax-outbox schema (shipped inside the package)."""
