"""Engines, sessions and migrations of the state database (no Airflow imports).

The state database is a SQLAlchemy URL: ``OPTIMOVE_NETMERA_STATE_DB_URL``, else a SQLite file
``optimove_netmera_state.db`` under ``AIRFLOW_HOME`` (or ``~/airflow``). Supported backends are SQLite
(development, ``airflow standalone``) and PostgreSQL through either driver
(``postgresql+psycopg2://...`` or ``postgresql+psycopg://...``).

Schema changes ship as alembic migrations inside this package; :func:`migrate` runs them without an
``alembic.ini`` on disk, recording the revision in the table ``optimove_netmera_alembic_version`` so the
state tables can share a database with another alembic-managed application.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "DEFAULT_SQLITE_FILENAME",
    "ENV_URL",
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
    "VERSION_TABLE",
    "StateDatabaseError",
    "alembic_config",
    "check_database",
    "create_state_engine",
    "current_revision",
    "default_state_db_url",
    "dispose_engines",
    "downgrade",
    "get_engine",
    "head_revision",
    "migrate",
    "redact_url",
    "session_scope",
]

log = logging.getLogger(__name__)

ENV_URL = "OPTIMOVE_NETMERA_STATE_DB_URL"
DEFAULT_SQLITE_FILENAME = "optimove_netmera_state.db"
VERSION_TABLE = "optimove_netmera_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_WAL_SIZE_LIMIT = 64 * 2**20  # bytes: the log file's size once reset (PRAGMA journal_size_limit)
POSTGRES_CONNECT_TIMEOUT_S = 10
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
UPGRADE_HINT = (
    "run `python -m optimove_netmera.store upgrade` (add `--url URL` when the database is not the one "
    f"in {ENV_URL}), or call optimove_netmera.store.migrate() from code"
)

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()
# alembic keeps its running context in module globals (alembic.context, alembic.op): one at a time per
# process. Across processes the database serialises migrators (see env.py).
_ALEMBIC_LOCK = threading.RLock()


class StateDatabaseError(RuntimeError):
    """The state database is misconfigured, unreachable, or not at the schema this code needs.

    ``url`` is the database URL with its password redacted; the message never contains the password.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


# --------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------

_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@")


def redact_url(url: str | URL) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs and error messages)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))


def _scrub(text: str, url: URL | None) -> str:
    """Remove the URL's password from a driver message, should the driver have echoed it."""
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text


def default_state_db_url() -> str:
    """The state database URL: ``$OPTIMOVE_NETMERA_STATE_DB_URL``, else an absolute SQLite file URL
    ``sqlite:///<AIRFLOW_HOME or ~/airflow>/optimove_netmera_state.db``."""
    configured = os.environ.get(ENV_URL, "").strip()
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME", "").strip() or "~/airflow"
    path = Path(home).expanduser().absolute() / DEFAULT_SQLITE_FILENAME
    return f"sqlite:///{path}"


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or (database.startswith("file:") and "mode=memory" in database + str(url.query))


def _parse_url(url: str | URL | None) -> URL:
    """Resolve ``url`` (default: :func:`default_state_db_url`) and validate it."""
    raw: str | URL = default_state_db_url() if url is None else url
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            raise StateDatabaseError(f"the state database URL is empty; set {ENV_URL} or pass a URL")
    try:
        parsed = make_url(raw)
    except exc.ArgumentError as err:
        raise StateDatabaseError(
            f"invalid state database URL {redact_url(raw)!s}: {err}. "
            "Expected e.g. sqlite:////abs/path/state.db or postgresql+psycopg2://user:pass@host:5432/db",
            url=redact_url(raw),
        ) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise StateDatabaseError(
            f"unsupported state database backend {backend!r} in {redact_url(parsed)}; "
            f"use one of: {', '.join(SUPPORTED_BACKENDS)}",
            url=redact_url(parsed),
        )
    if backend == "sqlite" and not _is_sqlite_memory(parsed):
        database = parsed.database or ""
        if not database.startswith("file:") and not os.path.isabs(database):
            raise StateDatabaseError(
                f"the SQLite state database path in {redact_url(parsed)} is relative; Airflow tasks run "
                "from other working directories, so use an absolute path (sqlite:////abs/path/state.db)",
                url=redact_url(parsed),
            )
    return parsed


def _url_key(url: URL) -> str:
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------------
# Engines and sessions
# --------------------------------------------------------------------------------------------------


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (persistent). Converting a new file briefly needs an exclusive lock, and
    SQLite does not run the busy handler for it, so concurrent first connections retry here."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_pragmas(dbapi_connection: Any, *, wal: bool, foreign_keys: bool) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if wal:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            # a log grown past this (checkpoints lagging a bulk writer: store/wal.py) shrinks back when next reset
            cursor.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_SIZE_LIMIT}")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    finally:
        cursor.close()


def _json_dumps(value: Any) -> str:
    """JSON columns' serializer: msgspec (several times faster than ``json.dumps`` on staged rows and plans).

    Unlike ``json.dumps`` it writes NaN as ``null`` (PostgreSQL's JSONB refuses ``NaN``) and UTF-8 unescaped.
    """
    return msgspec.json.encode(value).decode()


JSON_OPTIONS: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": msgspec.json.decode}


def _engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {
            **JSON_OPTIONS,
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        }
        if _is_sqlite_memory(url):
            kwargs["poolclass"] = StaticPool  # one shared connection, or each checkout gets a new empty DB
        return kwargs
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "optimove_netmera"
    kwargs = {**JSON_OPTIONS, "pool_pre_ping": True, "pool_recycle": 1800, "connect_args": connect_args}
    if url.get_driver_name() == "psycopg2":
        # executemany of INSERT ... ON CONFLICT (upserts) and UPDATEs otherwise runs row by row
        # (about 4x slower); psycopg 3 pipelines executemany by itself.
        kwargs["executemany_mode"] = "values_plus_batch"
    return kwargs


def create_state_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """Create a new (uncached) engine with the state database's settings.

    SQLite: WAL journal, ``busy_timeout`` of 30 s, foreign keys enforced, ``check_same_thread=False``.
    PostgreSQL: ``pool_pre_ping``, a connect timeout and ``application_name=optimove_netmera``; with
    psycopg2 also ``executemany_mode="values_plus_batch"`` so bulk upserts and updates are batched.
    Extra ``kwargs`` go to :func:`sqlalchemy.create_engine`. Most callers want :func:`get_engine`.
    """
    parsed = _parse_url(url)
    options = _engine_kwargs(parsed)
    if "connect_args" in kwargs:
        options["connect_args"] = {**options["connect_args"], **kwargs.pop("connect_args")}
    options.update(kwargs)
    engine = sa.create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        wal = not _is_sqlite_memory(parsed)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, wal=wal, foreign_keys=True)

    return engine


def get_engine(url: str | URL | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: :func:`default_state_db_url`), created once."""
    parsed = _parse_url(url)
    key = _url_key(parsed)
    engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = create_state_engine(parsed)
            _ENGINES[key] = engine
        return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (tests; before dropping a database)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


def _forget_parent_connections() -> None:
    # A forked child (LocalExecutor, Celery prefork) must not reuse the parent's pooled sockets.
    for engine in list(_ENGINES.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_connections)


@contextmanager
def connection(bind: Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A connection for a few statements: ``bind`` itself when it is one (a caller that holds one for several steps
    saves a pool checkout, and its ping, per step), else one checked out of the engine's pool for the block.

    A transaction the block's statements began (a read's) ends with it, so a held connection leaves each step idle
    and the next sees what was committed meanwhile; a write commits its own (``with conn.begin():``).
    """
    if isinstance(bind, sa.Connection):
        began = bind.in_transaction()
        try:
            yield bind
        finally:
            if not began and bind.in_transaction():
                bind.rollback()
    else:
        with bind.connect() as conn:
            yield conn


@contextmanager
def session_scope(engine: Engine | str | None = None) -> Iterator[Session]:
    """A transaction as a ``Session``: committed on success, rolled back on error, always closed.

    ``engine`` is an Engine, a URL, or ``None`` for :func:`get_engine`'s default. ORM objects stay
    usable after the block (``expire_on_commit=False``). A database error caused by an unreachable or
    unmigrated database is re-raised as :class:`StateDatabaseError` saying what to do; any other error
    propagates unchanged.
    """
    bound = engine if isinstance(engine, Engine) else get_engine(engine)
    session = Session(bind=bound, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (exc.OperationalError, exc.ProgrammingError, exc.InterfaceError) as err:
        _quiet_rollback(session)
        translated = _diagnose(bound, err)
        if translated is not None:
            raise translated from err
        raise
    except BaseException:
        _quiet_rollback(session)
        raise
    finally:
        session.close()


def _quiet_rollback(session: Session) -> None:
    try:
        session.rollback()
    except exc.SQLAlchemyError:
        log.debug("rollback failed on a broken state database connection", exc_info=True)


# --------------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------------


def _reason(err: BaseException, url: URL | None) -> str:
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    first_line = text.splitlines()[0] if text else type(err).__name__
    return _scrub(first_line, url)


def _unreachable(url: URL, err: BaseException) -> StateDatabaseError:
    shown = redact_url(url)
    if url.get_backend_name() == "sqlite":
        advice = "Check that the file's directory exists and is writable, and that no other process holds"
        advice += " a long write lock"
    else:
        advice = "Check that the database server is running and reachable and that the credentials are right"
    return StateDatabaseError(
        f"cannot connect to the optimove-netmera state database at {shown}: {_reason(err, url)}. "
        f"{advice}; the URL comes from {ENV_URL} (or the URL you passed).",
        url=shown,
    )


def _revision_error(url: URL, revision: str | None) -> StateDatabaseError | None:
    head = head_revision()
    if revision == head:
        return None
    shown = redact_url(url)
    if revision is not None and not _is_known_revision(revision):
        return StateDatabaseError(
            f"the optimove-netmera state database at {shown} is at schema revision {revision!r}, which "
            f"this version of the code does not know (its newest is {head!r}); install the matching "
            "optimove-netmera version, or downgrade the database with the version that created it",
            url=shown,
        )
    found = "no schema (never migrated)" if revision is None else f"schema revision {revision!r}"
    return StateDatabaseError(
        f"the optimove-netmera state database at {shown} is not migrated: it has {found}, this code "
        f"needs {head!r}; {UPGRADE_HINT}",
        url=shown,
    )


def _diagnose(engine: Engine, err: BaseException) -> StateDatabaseError | None:
    """Explain a failed statement: unreachable, not migrated, or (None) a genuine query error."""
    try:
        with engine.connect() as connection:
            revision = _read_revision(connection)
    except exc.SQLAlchemyError as probe:
        return _unreachable(engine.url, probe)
    return _revision_error(engine.url, revision)


def check_database(url: str | URL | None = None) -> str:
    """Connect and verify the schema is at the head revision; return that revision.

    Raises :class:`StateDatabaseError` (password redacted) when the database is unreachable, not
    migrated, or newer than this code.
    """
    parsed = _parse_url(url)
    revision = current_revision(parsed)
    problem = _revision_error(parsed, revision)
    if problem is not None:
        raise problem
    return str(revision)


# --------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------


def alembic_config(url: str | URL | None = None) -> Config:
    """An in-memory alembic ``Config`` for the package's migrations (no ini file needed).

    The URL travels in ``config.attributes["url"]`` (not the ini options, where ``%`` in a
    URL-encoded password would break interpolation).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_table", VERSION_TABLE)
    if url is not None:
        config.attributes["url"] = _parse_url(url)
    return config


@lru_cache(maxsize=1)
def _script_directory() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest migration revision shipped with this package."""
    head = _script_directory().get_current_head()
    if head is None:
        raise StateDatabaseError(f"no migrations found in {MIGRATIONS_DIR}")
    return str(head)


def _is_known_revision(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def _read_revision(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def current_revision(url: str | URL | None = None) -> str | None:
    """The schema revision the database is at (``None`` when never migrated)."""
    parsed = _parse_url(url)
    engine = get_engine(parsed)
    try:
        with engine.connect() as connection:
            return _read_revision(connection)
    except exc.SQLAlchemyError as err:
        raise _unreachable(parsed, err) from err


def _migration_engine(url: URL) -> Engine:
    """A throwaway engine for running migrations.

    On SQLite it uses explicit ``BEGIN IMMEDIATE`` transactions (pysqlite otherwise runs DDL outside
    any transaction), so a migration is atomic and concurrent migrators queue behind each other.
    Foreign keys are not enforced while the schema changes (as alembic's batch mode requires); env.py
    runs ``PRAGMA foreign_key_check`` before committing.
    """
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, poolclass=NullPool, connect_args=_engine_kwargs(url)["connect_args"])
    engine = sa.create_engine(
        url,
        poolclass=NullPool,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy, not pysqlite, emit BEGIN
        _sqlite_pragmas(dbapi_connection, wal=True, foreign_keys=False)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _run_alembic(url: URL, action: str, revision: str, **kwargs: Any) -> None:
    from alembic import command

    memory = url.get_backend_name() == "sqlite" and _is_sqlite_memory(url)
    if url.get_backend_name() == "sqlite" and not memory and url.database:
        database = url.database.removeprefix("file:").split("?", 1)[0]
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(url)
    # An in-memory database exists only inside its engine's single connection: migrate that one.
    engine = get_engine(url) if memory else _migration_engine(url)
    try:
        try:
            connection = engine.connect()
        except exc.SQLAlchemyError as err:
            raise _unreachable(url, err) from err
        with connection, _ALEMBIC_LOCK:
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision, **kwargs)
    finally:
        if not memory:
            engine.dispose()


def migrate(url: str | URL | None = None, revision: str = "head") -> str | None:
    """Upgrade the state database to ``revision`` (default: the newest); return the revision reached.

    Idempotent and safe to call concurrently from several processes (PostgreSQL: an advisory lock;
    SQLite: ``BEGIN IMMEDIATE``). A missing SQLite directory is created.
    """
    parsed = _parse_url(url)
    log.info("migrating state database %s to %s", redact_url(parsed), revision)
    _run_alembic(parsed, "upgrade", revision)
    return current_revision(parsed)


def downgrade(url: str | URL | None, revision: str) -> str | None:
    """Downgrade the state database to ``revision`` (``"base"`` drops every table); return the result."""
    parsed = _parse_url(url)
    log.info("downgrading state database %s to %s", redact_url(parsed), revision)
    _run_alembic(parsed, "downgrade", revision)
    return current_revision(parsed)
