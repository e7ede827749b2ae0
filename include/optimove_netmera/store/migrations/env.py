"""Alembic environment of the state database.

Run through :func:`optimove_netmera.store.migrate` (or ``python -m optimove_netmera.store``), which
builds the alembic ``Config`` in code and passes either an open connection
(``config.attributes["connection"]``) or a URL (``config.attributes["url"]``).
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import context

from optimove_netmera.store.engine import VERSION_TABLE
from optimove_netmera.store.models import Base

config = context.config
target_metadata = Base.metadata

# Serialises concurrent migrators on PostgreSQL (held until the migration transaction ends).
ADVISORY_LOCK_KEY = zlib.crc32(b"optimove_netmera.state_db.migrate")


def _url() -> sa.engine.URL:
    url = config.attributes.get("url")
    if url is None:
        raise RuntimeError("no state database URL: run migrations through optimove_netmera.store.migrate()")
    return sa.engine.make_url(url)


def _options(dialect_name: str) -> dict[str, object]:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",  # SQLite cannot ALTER most things in place
        # SQLite DDL is transactional; the migration engine issues BEGIN IMMEDIATE itself.
        "transactional_ddl": True,
    }


def run_migrations_offline() -> None:
    """Emit the migration SQL to stdout instead of running it (``upgrade --sql``)."""
    url = _url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(url.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection handed over by ``migrate()`` (or a fresh one)."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
        with engine.connect() as own_connection:
            _run(own_connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: sa.Connection) -> None:
    dialect_name = connection.dialect.name
    context.configure(connection=connection, **_options(dialect_name))
    with context.begin_transaction():
        if dialect_name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        context.run_migrations()
        if dialect_name == "sqlite":
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"foreign key violations after migrating: {problems[:10]}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
