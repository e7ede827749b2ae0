"""Generic, dialect-aware statements on the state database (SQLite and PostgreSQL).

* :func:`upsert` / :func:`insert_if_absent`: ``INSERT ... ON CONFLICT`` through each dialect's insert.
* :func:`sqlite_values_insert`: many rows into SQLite in few statements that run without the interpreter lock.
* :func:`one_row_bytes`: one row whose texts (a request body the database built) come back as UTF-8 bytes.
* :func:`claim`, :func:`transition`: race-safe status changes. Each is a
  single conditional ``UPDATE ... WHERE <key> AND status IN (<from>)``; the database decides who wins,
  so two workers (threads, processes, retried tasks) cannot both move the same row. On PostgreSQL
  (READ COMMITTED) the loser blocks on the row lock, re-checks the condition and updates nothing; on
  SQLite writers are serialised and the loser sees the winner's committed status.

  Commit the claim (end the ``session_scope``) *before* doing the external side effect (the HTTP
  request); a claim that is rolled back is no claim. All helpers take a ``Session`` or a ``Connection``
  and leave transaction control to the caller.
"""

from __future__ import annotations

import csv
import io
import itertools
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from optimove_netmera.store.engine import StateDatabaseError
from optimove_netmera.store.models import SyncRun, SyncRunStatus

__all__ = [
    "claim",
    "dialect_insert",
    "dialect_name",
    "insert_if_absent",
    "last_successful_sync",
    "one_row_bytes",
    "sqlite_values_insert",
    "transition",
    "transition_statement",
    "upsert",
]

Bind = Session | sa.Connection
TableLike = sa.Table | type[Any]

DEFAULT_CHUNK_SIZE = 5000
COPY_ROWS = 5000  # rows a COPY statement of postgres_copy


def _table(target: TableLike) -> sa.Table:
    table = target if isinstance(target, sa.Table) else getattr(target, "__table__", None)
    if not isinstance(table, sa.Table):
        raise TypeError(f"expected a Table or a mapped class, got {target!r}")
    return table


def dialect_name(bind: Bind) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a Session or Connection."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    return bind.dialect.name


def dialect_insert(bind: Bind, target: TableLike) -> Any:
    """The dialect's ``insert()`` (with ``on_conflict_do_update/do_nothing`` and ``excluded``).

    Useful to build set-based upserts, e.g. ``dialect_insert(s, T).from_select(...)``. On SQLite an
    ``INSERT ... SELECT ... ON CONFLICT`` needs a ``WHERE`` in the SELECT (``.where(sa.true())``) to
    parse.
    """
    name = dialect_name(bind)
    table = _table(target)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StateDatabaseError(f"upserts are implemented for sqlite and postgresql, not {name!r}")


def _conflict_columns(table: sa.Table, conflict_columns: Sequence[str] | None) -> list[str]:
    columns = list(conflict_columns) if conflict_columns else [c.name for c in table.primary_key.columns]
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {unknown}")
    return columns


def _onupdate_values(table: sa.Table, exclude: Iterable[str]) -> dict[str, Any]:
    """``onupdate`` SQL expressions (e.g. updated_at) that ON CONFLICT DO UPDATE would otherwise skip."""
    skipped = set(exclude)
    values: dict[str, Any] = {}
    for column in table.columns:
        default = column.onupdate
        if column.name in skipped or default is None:
            continue
        if getattr(default, "is_clause_element", False) or getattr(default, "is_scalar", False):
            values[column.name] = default.arg  # type: ignore[attr-defined]
    return values


def _chunks(rows: Sequence[Mapping[str, Any]], size: int) -> Iterable[Sequence[Mapping[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def upsert(
    bind: Bind,
    target: TableLike,
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    conflict_columns: Sequence[str] | None = None,
    update_columns: Sequence[str] | None = None,
    where: sa.ColumnElement[bool] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Insert ``rows``, or update the existing rows that conflict on ``conflict_columns``.

    ``conflict_columns`` default to the primary key (they must match a primary key or unique
    constraint). ``update_columns`` default to every supplied column except the conflict columns; an
    empty list means ``DO NOTHING``. ``where`` is an optional condition on the existing row
    (``table.c.col ...``) that must hold for it to be updated; it may not use an IN list (``in_``/``not_in``), which
    an executemany cannot expand: spell it as ``and_``/``or_`` of comparisons. ``onupdate`` columns such as
    ``updated_at`` are refreshed on update. Every row must have the same keys; rows are sent in
    executemany chunks of ``chunk_size``. Returns the number of rows submitted (drivers do not report
    per-row outcomes of a batched executemany; use :func:`insert_if_absent` to learn whether one row
    was new).
    """
    batch: Sequence[Mapping[str, Any]] = [rows] if isinstance(rows, Mapping) else rows
    if not batch:
        return 0
    table = _table(target)
    keys = list(batch[0].keys())
    conflict = _conflict_columns(table, conflict_columns)
    to_update = [k for k in keys if k not in conflict] if update_columns is None else list(update_columns)

    stmt = dialect_insert(bind, table)
    if to_update:
        set_: dict[str, Any] = {name: stmt.excluded[name] for name in to_update}
        set_.update(_onupdate_values(table, exclude=[*to_update, *conflict]))
        stmt = stmt.on_conflict_do_update(index_elements=conflict, set_=set_, where=where)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=conflict)

    for chunk in _chunks(batch, max(1, chunk_size)):
        bind.execute(stmt, list(chunk))
    return len(batch)


def insert_if_absent(
    bind: Bind,
    target: TableLike,
    values: Mapping[str, Any],
    *,
    conflict_columns: Sequence[str] | None = None,
) -> bool:
    """Insert one row unless one with the same ``conflict_columns`` exists; True if it was inserted.

    Race-safe: of two concurrent callers with the same key exactly one gets True. Typical use: store
    an inbound event under its dedup key and act on it only when this returns True.
    """
    table = _table(target)
    stmt = (
        dialect_insert(bind, table)
        .on_conflict_do_nothing(index_elements=_conflict_columns(table, conflict_columns))
        .returning(*table.primary_key.columns)  # rowcount is unreliable here (psycopg 3 reports -1)
    )
    return bind.execute(stmt, dict(values)).first() is not None


SQLITE_MAX_ROWS_PER_INSERT = 10_000
"""Rows a statement of :func:`sqlite_values_insert` at most (a recipient page), if the variable limit allows."""


def _statement_sizes(count: int, largest: int) -> Iterator[int]:
    """``count`` rows as statement sizes: ``largest`` as often as it fits, then the rest in powers of two (its binary
    digits). So a connection compiles at most ``log2(largest) + 2`` distinct statements, whatever the counts."""
    full, rest = divmod(count, largest)
    yield from itertools.repeat(largest, full)
    size = 1 << max(0, largest.bit_length() - 1)
    while rest:
        if rest >= size:
            yield size
            rest -= size
        size >>= 1


def sqlite_values_insert(
    conn: sa.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    conflict: str = "",
) -> None:
    """Insert ``rows`` (values in ``columns`` order, as SQLite stores them) with multi-row ``INSERT ... VALUES``
    statements of bound parameters; ``conflict``: an ``ON CONFLICT`` clause.

    Each statement runs without the interpreter lock, and SQLite reads the values straight from their bindings: a
    10,000-row page of the send ledger went in in 55-70 ms, against 80-115 ms as one JSON array read by
    ``json_each`` (what this replaced; SQLite also parsed a row's element again for each column, and a text with a
    NUL had to go row by row). A text may hold a NUL (bound with its length, stored whole).

    A statement takes :data:`SQLITE_MAX_ROWS_PER_INSERT` rows, or as many as the build's variable limit allows
    (``SQLITE_MAX_VARIABLE_NUMBER``: 32,766 since SQLite 3.32, 999 before, Debian's 250,000), and what is left over
    goes in statements of powers of two (:func:`_statement_sizes`). The driver keeps each distinct statement it
    compiled (~1 KB a row of 12 values; compiling one of 5,000 rows took 38 ms): a statement for each distinct
    count held 944 MiB after 130 counts. And a full recipient page goes in one statement: after each statement the
    caller waits for the interpreter lock again behind the busy parsing thread, and a page in six statements of
    powers of two staged a 1M campaign in 24.0-26.5 s against 20.5-20.9 s in one.
    """
    if not rows:
        return
    width = len(columns)
    limit = conn.connection.driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    largest = max(1, min(SQLITE_MAX_ROWS_PER_INSERT, limit // width))
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    tail = f" {conflict}" if conflict else ""
    one = f"({', '.join('?' * width)})"
    start = 0
    for size in _statement_sizes(len(rows), largest):
        part = rows[start : start + size]
        start += size
        conn.exec_driver_sql(f"{head}{', '.join([one] * size)}{tail}", tuple(itertools.chain.from_iterable(part)))


def postgres_copy(
    conn: sa.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], nullable: Collection[str]
) -> bool:
    """Insert ``rows`` (values in ``columns`` order as PostgreSQL reads them in text: strings, JSON text, integers,
    None) with ``COPY ... FROM STDIN`` in CSV, in the connection's transaction: 2.5x fewer server microseconds a
    row than a multi-row ``INSERT`` (~1 KB change rows: 31-36 against 80-91 µs). Returns False, having written
    nothing, when the driver is not psycopg2 (the caller inserts instead).

    Every field is quoted (a carriage return, a lone ``\\.`` or a quote in a text are data, not CSV), so an empty
    string stays one; the ``nullable`` columns' empty fields are NULL (``FORCE_NULL``), so None is written there
    and such a column must never hold ``""`` (None in any other column would be stored as ``""``: pass none). A
    NUL in a text is refused by PostgreSQL, as by ``INSERT``."""
    if conn.dialect.driver != "psycopg2":
        return False
    options = "FORMAT csv" + (f", FORCE_NULL ({', '.join(nullable)})" if nullable else "")
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH ({options})"
    rows = iter(rows)
    with conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
        while part := list(itertools.islice(rows, COPY_ROWS)):  # a few MB of CSV at a time, not the whole set
            buffer = io.StringIO()
            csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(part)
            buffer.seek(0)
            cursor.copy_expert(statement, buffer)
    return True


UTF8_ENCODINGS = ("UTF8", "UNICODE")  # psycopg2's names of a UTF-8 client encoding


def one_row_bytes(conn: sa.Connection, statement: sa.TextClause, params: Mapping[str, Any]) -> tuple[Any, ...]:
    """The one row of ``statement``, its texts as UTF-8 ``bytes`` (blobs and other values as the driver gives
    them): e.g. a ~1 MB request body the state database concatenated, sent as it is.

    psycopg2 on a UTF-8 connection hands the texts over as bytes (its ``BYTES`` typecaster, on this statement's
    cursor only), in the connection's transaction. Decoding a body to a ``str`` and encoding it back made two more
    copies of it, each a fresh allocation the size of the body: in a fresh process (every Airflow task) their page
    faults cost a profile load about a third of its process's CPU. Any other connection's texts are encoded (on a
    LATIN1 connection psycopg2's bytes would not be UTF-8); SQLite's blobs are bytes already."""
    if conn.dialect.driver == "psycopg2":
        dbapi = conn.connection.dbapi_connection
        if dbapi.encoding in UTF8_ENCODINGS:  # type: ignore[union-attr]
            import psycopg2.extensions

            compiled = statement.compile(dialect=conn.dialect)
            with dbapi.cursor() as cursor:  # type: ignore[union-attr]
                psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor)
                cursor.execute(str(compiled), compiled.construct_params(params))
                rows = cursor.fetchall()
            if len(rows) != 1:
                raise sa.exc.NoResultFound("no row") if not rows else sa.exc.MultipleResultsFound("several rows")
            return tuple(rows[0])
    row = conn.execute(statement, params).one()
    return tuple(v.encode() if isinstance(v, str) else v for v in row)


def refresh_statistics(engine: sa.Engine, *tables: TableLike) -> None:
    """PostgreSQL: ``ANALYZE`` tables just bulk-written, so the next statements are planned for their real size.

    A table written in bulk has no statistics until autovacuum gets to it (a minute or more, never when it is off):
    the planner then takes it for a handful of rows and may nest-loop a join over it (the send ledger's status
    view: 1.3 s at 100k recipients instead of 54 ms). No-op on SQLite, whose planner does not use row counts."""
    if engine.dialect.name != "postgresql" or not tables:
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE " + ", ".join(_table(t).name for t in tables))


def _statuses(value: str | Iterable[str]) -> list[str]:
    statuses = [value] if isinstance(value, str) else [str(v) for v in value]
    if not statuses:
        raise ValueError("from_status must name at least one status")
    return [str(s) for s in statuses]


def _criteria(table: sa.Table, key: Mapping[str, Any] | None, extra: Sequence[Any]) -> list[Any]:
    clauses: list[Any] = []
    for name, value in (key or {}).items():
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
        column = table.c[name]
        clauses.append(column.is_(None) if value is None else column == value)
    clauses.extend(extra)
    return clauses


def transition_statement(
    target: TableLike,
    *criteria: Any,
    key: Mapping[str, Any] | None = None,
    from_status: str | Iterable[str],
    to_status: str,
    values: Mapping[str, Any] | None = None,
    increment_attempts: bool = False,
    status_column: str = "status",
) -> sa.Update:
    """The conditional ``UPDATE`` of :func:`transition` and :func:`claim`: rows matching ``key`` (column name ->
    value) and ``criteria`` whose ``status_column`` is in ``from_status`` get ``to_status`` and ``values``
    (``attempts`` + 1 with ``increment_attempts``).

    A hot path builds it once and binds its values per execution (``sa.bindparam`` in ``key``, ``criteria`` or
    ``values``): building the statement cost a send worker more of the interpreter than running it."""
    table = _table(target)
    if status_column not in table.c:
        raise ValueError(f"{table.name} has no status column {status_column!r}")
    assignments: dict[str, Any] = {status_column: str(to_status), **dict(values or {})}
    if increment_attempts:
        if "attempts" not in table.c:
            raise ValueError(f"{table.name} has no attempts column")
        assignments["attempts"] = table.c.attempts + 1
    conditions = [*_criteria(table, key, criteria), table.c[status_column].in_(_statuses(from_status))]
    return sa.update(table).where(*conditions).values(assignments)


def claim(
    bind: Bind,
    target: TableLike,
    key: Mapping[str, Any],
    *,
    from_status: str | Iterable[str] = "pending",
    to_status: str = "in_flight",
    values: Mapping[str, Any] | None = None,
    increment_attempts: bool | None = None,
    status_column: str = "status",
) -> bool:
    """Move the row identified by ``key`` from ``from_status`` to ``to_status``; True if this caller won.

    ``key`` maps column names to values (e.g. ``{"id": 7}`` or the batch's natural key). ``values``
    are extra assignments (``request_id``, ``error``...). ``attempts`` is incremented when the table
    has that column, unless ``increment_attempts=False``.
    """
    if increment_attempts is None:
        increment_attempts = "attempts" in _table(target).c
    stmt = transition_statement(
        target,
        key=key,
        from_status=from_status,
        to_status=to_status,
        values=values,
        increment_attempts=increment_attempts,
        status_column=status_column,
    )
    result = bind.execute(stmt)
    return (result.rowcount or 0) > 0  # type: ignore[attr-defined]


def transition(bind: Bind, target: TableLike, *criteria: Any, **how: Any) -> int:
    """Move every row matching ``key``/``criteria`` and ``from_status`` to ``to_status``; return the count. ``how``:
    the keywords of :func:`transition_statement` (``key``, ``from_status``, ``to_status``, ``values``,
    ``increment_attempts``, ``status_column``).

    E.g. cancel a campaign's pending recipients:
    ``transition(s, Recipient, key={"campaign_id": 1, "channel_id": 2}, from_status="pending",
    to_status="cancelled", values={"reason": "campaign cancelled"})``.
    """
    result = bind.execute(transition_statement(target, *criteria, **how))
    return max(result.rowcount or 0, 0)  # type: ignore[attr-defined]


def last_successful_sync(session: Session) -> SyncRun | None:
    """The non-dry-run successful sync run with the latest ``window_end`` (None if there is none).

    The next incremental window starts after its ``window_end``. Served by the index
    ``ix_sync_runs_status_dry_run_window_end`` (an index seek, not a scan).
    """
    stmt = (
        sa.select(SyncRun)
        .where(
            SyncRun.status == SyncRunStatus.SUCCESS.value,
            SyncRun.dry_run == sa.false(),
            SyncRun.window_end.is_not(None),
        )
        .order_by(SyncRun.window_end.desc(), SyncRun.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
