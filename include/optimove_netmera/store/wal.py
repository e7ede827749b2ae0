"""SQLite's write-ahead log checkpointed beside a bulk writer instead of by it.

In WAL mode a commit that leaves the log over ``wal_autocheckpoint`` pages (1000 by default) copies the log into the
database there and then, in the committing thread. A plan's writer commits ~50 MB of change rows a time, so a
first sync of a million customers spent over 5 s of its writer's ~20 s in those copies, while the diff waited for
the writer. :class:`BackgroundCheckpoints` turns the writer's automatic checkpoints off for its own transactions and
runs a passive checkpoint (it waits for nobody and blocks nobody) in a thread of its own after each commit, while
the writer goes on with the next insert.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from optimove_netmera.store.engine import _is_sqlite_memory

log = logging.getLogger(__name__)


class BackgroundCheckpoints:
    """Transactions whose commits leave the WAL checkpoint to a thread of its own (SQLite files only; on PostgreSQL
    and in-memory SQLite, :meth:`transaction` is ``engine.begin()``).

    At most one checkpoint runs and one waits; :meth:`close` waits for them. A checkpoint that fails is logged and
    left to the next commit of any connection (the log keeps every committed row either way).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.enabled = engine.dialect.name == "sqlite" and not _is_sqlite_memory(engine.url)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wal-checkpoint") if self.enabled else None
        self._waiting: Future[None] | None = None  # the last one queued

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction (committed on success, rolled back on error) whose commit does not checkpoint."""
        if not self.enabled:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._engine.connect() as conn:
            before = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint = 0")
            conn.commit()
            try:
                with conn.begin():
                    yield conn
            finally:
                try:  # the pooled connection as it was
                    conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(before)}")
                    conn.commit()
                except Exception as exc:  # the transaction's own outcome stands; this connection is dropped
                    log.warning("could not turn WAL checkpoints back on (%s): connection closed", type(exc).__name__)
                    conn.invalidate()  # never back in the pool with its checkpoints off
        self._request()

    def _request(self) -> None:
        assert self._thread is not None
        if self._waiting is not None and not self._waiting.running() and not self._waiting.done():
            return  # the one waiting will copy this commit's pages too
        self._waiting = self._thread.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:  # an optimisation: the next commit of any connection checkpoints instead
            log.warning("background WAL checkpoint failed (%s); the next commit makes one", type(exc).__name__)

    def close(self) -> None:
        """Wait for the checkpoints queued and stop the thread."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
