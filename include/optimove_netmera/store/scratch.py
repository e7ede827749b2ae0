"""Throwaway PostgreSQL databases for tests and benchmarks (never used by the integration itself)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from optimove_netmera.store.engine import dispose_engines

ADMIN_URL_ENV = "OPTIMOVE_NETMERA_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """The admin connection: ``$OPTIMOVE_NETMERA_TEST_POSTGRES_URL``, else the local server's ``postgres`` DB."""
    return os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)


def check_reachable(url: str | None = None) -> str | None:
    """None when the server answers, else the first line of the reason."""
    engine = sa.create_engine(url or admin_url(), poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as err:
        return str(getattr(err, "orig", err)).strip().splitlines()[0]
    finally:
        engine.dispose()
    return None


@contextmanager
def throwaway_database(prefix: str = "onm_test", url: str | None = None) -> Iterator[str]:
    """Create ``<prefix>_<random>``, yield its URL (password included), drop it (even with open connections)."""
    admin = sa.create_engine(url or admin_url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"{prefix}_{secrets.token_hex(5)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def empty_schema(url: str) -> None:
    """Drop and recreate the ``public`` schema of ``url`` (every table gone)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()
