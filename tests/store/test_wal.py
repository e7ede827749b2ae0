"""SQLite's log checkpointed beside a bulk writer (``store.wal.BackgroundCheckpoints``), on a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from optimove_netmera.store import create_state_engine
from optimove_netmera.store.engine import SQLITE_WAL_SIZE_LIMIT
from optimove_netmera.store.wal import BackgroundCheckpoints

ROWS = 6000  # ~6 MB: over the 1000 pages (4 KiB each) a commit checkpoints at by default


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def engine(path: Path) -> Iterator[sa.Engine]:
    """A state engine on a SQLite file holding one table ``t``."""
    engine = create_state_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    yield engine
    engine.dispose()


@pytest.fixture
def checkpoints(engine: sa.Engine) -> Iterator[BackgroundCheckpoints]:
    checkpoints = BackgroundCheckpoints(engine)
    yield checkpoints
    checkpoints.close()


def insert(conn: sa.Connection, start: int) -> None:
    conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", [(start + i, "x" * 1000) for i in range(ROWS)])


def autocheckpoint(raw: object) -> int:
    return raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0]  # type: ignore[attr-defined]


def test_a_plain_commit_copies_the_log_into_the_file(engine: sa.Engine, path: Path) -> None:
    """What the class avoids, shown by the same measure its tests use: the database file grows at the commit."""
    before = os.path.getsize(path)
    with engine.begin() as conn:
        insert(conn, 0)
    assert os.path.getsize(path) > before + ROWS * 1000


def test_commits_leave_the_copy_to_the_thread_and_the_connection_as_it_was(
    engine: sa.Engine, path: Path, checkpoints: BackgroundCheckpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert checkpoints.enabled
    requested: list[int] = []
    real_request = checkpoints._request
    monkeypatch.setattr(checkpoints, "_request", lambda: requested.append(1))
    before = os.path.getsize(path)
    with checkpoints.transaction() as conn:
        raw = conn.connection.dbapi_connection
        assert autocheckpoint(raw) == 0  # off for this transaction's commit
        insert(conn, 0)
    assert requested == [1]
    assert os.path.getsize(path) < before + ROWS * 1000  # the rows are in the log only: the commit copied nothing
    assert autocheckpoint(raw) == 1000  # the pooled connection goes back as it came
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == ROWS  # committed
    real_request()  # the background checkpoint copies them
    checkpoints.close()
    assert os.path.getsize(path) > before + ROWS * 1000


def test_a_failed_transaction_is_rolled_back_and_the_connection_restored(
    engine: sa.Engine, checkpoints: BackgroundCheckpoints
) -> None:
    with pytest.raises(RuntimeError, match="boom"), checkpoints.transaction() as conn:
        raw = conn.connection.dbapi_connection
        insert(conn, 0)
        raise RuntimeError("boom")
    assert autocheckpoint(raw) == 1000
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0


def test_in_memory_sqlite_is_a_plain_transaction() -> None:
    engine = create_state_engine("sqlite://")
    checkpoints = BackgroundCheckpoints(engine)
    assert not checkpoints.enabled
    with checkpoints.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
    checkpoints.close()


def test_the_log_file_shrinks_back_to_a_limit_once_reset(engine: sa.Engine) -> None:
    """Checkpoints lagging a bulk writer let the log grow; every SQLite state connection caps the file it keeps."""
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar_one() == SQLITE_WAL_SIZE_LIMIT


def test_a_connection_whose_checkpoints_cannot_be_turned_back_on_is_closed_not_pooled(
    engine: sa.Engine, checkpoints: BackgroundCheckpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sa.Connection.exec_driver_sql

    def failing_restore(self: sa.Connection, statement: str, *args: object, **kwargs: object) -> object:
        if statement.startswith("PRAGMA wal_autocheckpoint = ") and not statement.endswith("= 0"):
            raise sa.exc.OperationalError(statement, None, Exception("disk I/O error"))
        return real(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.Connection, "exec_driver_sql", failing_restore)
    with checkpoints.transaction() as conn:
        raw = conn.connection.dbapi_connection
        insert(conn, 0)
    monkeypatch.undo()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        autocheckpoint(raw)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == ROWS  # the commit stands
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
