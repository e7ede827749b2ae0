"""Load planned batches into Netmera, resumably.

Each batch (at most 1000 extIds) is one ``setProfileAttributes`` or ``unsetProfileAttributes`` request; a load
task keeps ``sync.load_concurrency`` of them in flight and records their outcomes in bulk (:func:`load_batches`).
Each request body is built by the state database from the JSON the plan stored and sent as it is.
Its row in ``sync_batches`` goes pending -> in_flight -> delivered (or failed / dead), so a retried or cleared load task
skips what was delivered and re-sends only what was not. Both calls are idempotent (the same values again), so
re-sending a batch whose outcome was lost with its worker is safe.

Customers Netmera does not know were set aside by the plan (see :mod:`optimove_netmera.sync.plan`), so every
batch holds only users Netmera knows. A customer's snapshot advances only when every part of its change (set and
unset) was delivered.

A delivered change's row is not rewritten: it stays ``pending``, and its batches' status records the delivery. A
pending change whose every part's batch is delivered *is* delivered (:func:`change_counts`,
:func:`delivered_changes`). Marking each row delivered rewrote every ~1 KB change row once more (SQLite rewrites the
whole record, PostgreSQL a new row version), about 60% of the recording's database work per customer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from optimove_netmera.http import ApiError, is_payload_rejection
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.store.models import (
    BatchKind,
    BatchStatus,
    ChangeStatus,
    CustomerSnapshot,
    DeadLetter,
    DeadLetterKind,
    SyncBatch,
    SyncChange,
    utcnow,
)
from optimove_netmera.store.queries import dialect_insert, one_row_bytes, upsert

log = logging.getLogger(__name__)
KEYS = 10_000  # ids in one IN list


def _changes_of(conn: Connection, run_id: int, kind: str, batch_no: int) -> list[Any]:
    """The batch's entries: customer id, extId and the part this batch sends (``profile``), in extId order."""
    is_set = kind == BatchKind.SET.value
    column = SyncChange.set_batch_no if is_set else SyncChange.unset_batch_no
    part = SyncChange.set_attrs if is_set else SyncChange.unset_attrs
    return conn.execute(
        sa.select(SyncChange.customer_id, SyncChange.ext_id, part.label("profile"))
        .where(SyncChange.sync_run_id == run_id, column == batch_no)
        .order_by(SyncChange.ext_id)
    ).all()


def _claim(conn: Connection, batch_ids: Sequence[int]) -> list[Any]:
    """pending/failed -> in_flight, also in_flight (its worker died: the write is idempotent, so re-send it), in one
    conditional ``UPDATE`` per KEYS ids; returns the batches this caller won (delivered and dead ones are not)."""
    won: list[Any] = []
    for start in range(0, len(batch_ids), KEYS):
        won.extend(
            conn.execute(
                sa.update(SyncBatch)
                .where(
                    SyncBatch.id.in_(batch_ids[start : start + KEYS]),
                    SyncBatch.status.in_(
                        [BatchStatus.PENDING.value, BatchStatus.FAILED.value, BatchStatus.IN_FLIGHT.value]
                    ),
                )
                .values(status=BatchStatus.IN_FLIGHT.value, attempts=SyncBatch.attempts + 1)
                .returning(SyncBatch.id, SyncBatch.kind, SyncBatch.batch_no, SyncBatch.attempts)
            ).all()
        )
    order = {b: i for i, b in enumerate(batch_ids)}
    return sorted(won, key=lambda b: order[b.id])


_PARTS = ((BatchKind.SET, SyncChange.set_batch_no), (BatchKind.UNSET, SyncChange.unset_batch_no))


def _batch_nos(run_id: int, kind: BatchKind, delivered: bool) -> Any:
    """The numbers of the run's ``kind`` batches that are (``delivered``) or are not delivered."""
    status = SyncBatch.status == BatchStatus.DELIVERED.value
    return sa.select(SyncBatch.batch_no).where(
        SyncBatch.sync_run_id == run_id, SyncBatch.kind == kind.value, status if delivered else ~status
    )


def _part_delivered(run_id: int, kind: BatchKind, column: Any) -> Any:
    """The change has no ``kind`` part, or the batch holding it was delivered (the delivered batches' numbers are
    listed once per statement, not looked up per change)."""
    return sa.or_(column.is_(None), column.in_(_batch_nos(run_id, kind, True)))


def _pending(scoped: bool) -> Any:
    # Scoped by batch numbers, the status must not pick the (run, status) index (SQLite would walk every pending
    # row): ``|| ''`` keeps the condition and leaves the scope's keys to choose the rows.
    return (SyncChange.status.concat("") if scoped else SyncChange.status) == ChangeStatus.PENDING.value


def delivered_changes(run_id: int) -> tuple[Any, ...]:
    """Conditions on ``SyncChange``: the run's delivered changes, i.e. pending ones whose every part's batch is
    delivered, and rows an earlier version marked ``delivered``."""
    every_part = sa.and_(
        SyncChange.status == ChangeStatus.PENDING.value,
        *(_part_delivered(run_id, kind, column) for kind, column in _PARTS),
    )
    return (SyncChange.sync_run_id == run_id, sa.or_(SyncChange.status == ChangeStatus.DELIVERED.value, every_part))


def change_counts(conn: Connection, run_id: int) -> dict[str, int]:
    """The run's changes by status, a pending change whose every part's batch is delivered counted as delivered.

    The stored statuses are counted on the (run, status) index; the pending changes still open are those with a
    part in a batch not delivered, found through the batch-number indexes (a few rows at the end of a run)."""
    counts = {
        status: int(n)
        for status, n in conn.execute(
            sa.select(SyncChange.status, sa.func.count())
            .where(SyncChange.sync_run_id == run_id)
            .group_by(SyncChange.status)
        ).all()
    }
    pending = counts.pop(ChangeStatus.PENDING.value, 0)
    if pending:
        parts = [
            sa.select(SyncChange.customer_id).where(
                SyncChange.sync_run_id == run_id, _pending(True), column.in_(_batch_nos(run_id, kind, False))
            )
            for kind, column in _PARTS
        ]
        union = sa.union(*parts).subquery()
        still_open = conn.execute(sa.select(sa.func.count()).select_from(union)).scalar_one()
        if pending - still_open:
            counts[ChangeStatus.DELIVERED.value] = counts.get(ChangeStatus.DELIVERED.value, 0) + pending - still_open
        if still_open:
            counts[ChangeStatus.PENDING.value] = still_open
    return counts


_SNAPSHOT_COLUMNS = ["customer_id", "ext_id", "attr_hash", "present_bits", "delivered_at", "sync_run_id"]


def _snapshot_rows(run_id: int, source: Any) -> Any:
    """The snapshot rows of the changes in ``source`` (``SyncChange``'s table or a selection of its columns)."""
    c = source.c
    return sa.select(c.customer_id, c.ext_id, c.new_hash, c.present_bits, utcnow(), sa.literal(run_id, sa.BigInteger()))


def _upsert_snapshot(conn: Connection, rows: Any) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE`` of ``rows`` (:func:`_snapshot_rows`) into the snapshot."""
    insert = dialect_insert(conn, CustomerSnapshot).from_select(_SNAPSHOT_COLUMNS, rows)
    return insert.on_conflict_do_update(
        index_elements=["customer_id"], set_={c: insert.excluded[c] for c in _SNAPSHOT_COLUMNS if c != "customer_id"}
    )


def _split_advance(conn: Connection, run_id: int, *where: Any) -> Any:
    """PostgreSQL: one statement that reads the changes once and inserts the snapshot rows of the customers the plan
    found new (``SyncChange.new_customer``) with a plain ``INSERT``, upserting the others; returns how many rows it
    wrote. A third of an upsert is its conflict check (a speculative insertion): a plain insert of 300k rows took
    0.88-0.93 s against 1.35-1.43 s. Reading the ~1 KB change rows a second time would cost what it saves."""
    changes = SyncChange.__table__
    picked = (
        sa.select(
            changes.c.customer_id, changes.c.ext_id, changes.c.new_hash, changes.c.present_bits, changes.c.new_customer
        )
        .where(changes.c.sync_run_id == run_id, *where)
        .cte("picked")
    )
    fresh = (
        dialect_insert(conn, CustomerSnapshot)
        .from_select(_SNAPSHOT_COLUMNS, _snapshot_rows(run_id, picked).where(picked.c.new_customer))
        .returning(sa.literal_column("1"))
        .cte("fresh")
    )
    known = (
        _upsert_snapshot(conn, _snapshot_rows(run_id, picked).where(~picked.c.new_customer))
        .returning(sa.literal_column("1"))
        .cte("known")
    )
    count = lambda cte: sa.select(sa.func.count()).select_from(cte).scalar_subquery()  # noqa: E731
    return sa.select(count(fresh) + count(known))


UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


def _unique_violation(exc: sa.exc.IntegrityError) -> bool:
    """Whether the driver's error is a unique violation (psycopg2's ``pgcode``, psycopg's ``sqlstate``)."""
    return UNIQUE_VIOLATION in (getattr(exc.orig, "pgcode", None), getattr(exc.orig, "sqlstate", None))


def _advance_snapshot(conn: Connection, run_id: int, *where: Any) -> int:
    """Record the run's pending changes matching ``where`` as what Netmera now holds: set-based, whatever their
    number (the change rows are not rewritten). Returns how many advanced.

    PostgreSQL inserts the rows of the customers the plan found new and upserts the others (:func:`_split_advance`)
    under a savepoint: a customer planned as new whose row is there after all (another run delivered it since the
    plan) fails the insert, and the group is upserted instead. SQLite upserts every row: it has no data-modifying
    ``WITH``, and a statement per kind of customer would read the change rows twice."""
    if conn.dialect.name == "postgresql":
        try:
            with conn.begin_nested():
                return int(conn.execute(_split_advance(conn, run_id, *where)).scalar_one())
        except sa.exc.IntegrityError as exc:
            if not _unique_violation(exc):
                raise  # not a row found after all: the upsert would not mend it
            log.info("a customer planned as new has a snapshot row already: the group is upserted")
    rows = _snapshot_rows(run_id, SyncChange.__table__).where(SyncChange.sync_run_id == run_id, *where)
    return conn.execute(_upsert_snapshot(conn, rows)).rowcount or 0


def _complete(conn: Connection, run_id: int, batches: Sequence[Any]) -> int:
    """Mark delivered batches (one statement for the group) and advance the snapshot of their customers whose
    every part is now delivered; returns how many advanced.

    The customers are chosen by the batches' numbers (``set_batch_no``/``unset_batch_no IN``: a few values, keyed
    by the (run, batch number) indexes), not by listing their customer ids: a statement per kind whatever the
    group's size, and no thousands of bound ids to render. Only the other part's batch is looked up per customer:
    this part's batches are the ones just marked."""
    if not batches:
        return 0
    conn.execute(
        sa.update(SyncBatch)
        .where(SyncBatch.id.in_([b.id for b in batches]))
        .values(status=BatchStatus.DELIVERED.value, error=None)
    )
    advanced = 0
    for kind, column in _PARTS:
        numbers = sorted({b.batch_no for b in batches if b.kind == kind.value})
        if numbers:
            other = [_part_delivered(run_id, k, c) for k, c in _PARTS if k is not kind]
            advanced += _advance_snapshot(conn, run_id, _pending(True), column.in_(numbers), *other)
    return advanced


def settle(engine: Engine, run_id: int) -> int:
    """Advance the snapshot for pending changes with both a set and an unset part, both delivered, that no load
    task advanced; returns how many.

    Two load tasks finishing the set and the unset part of one customer at the same moment can each miss the
    other's commit; this final pass (run by the verify step and the report) catches those customers. A customer
    whose snapshot this run (or a later one) already advanced is left as it is.
    """
    advanced = (
        CustomerSnapshot.customer_id == SyncChange.customer_id,
        CustomerSnapshot.sync_run_id >= run_id,
    )
    with engine.begin() as conn:
        return _advance_snapshot(
            conn,
            run_id,
            _pending(True),
            SyncChange.unset_batch_no.is_not(None),
            SyncChange.set_batch_no.is_not(None),
            *(_part_delivered(run_id, kind, column) for kind, column in _PARTS),
            ~sa.exists().where(*advanced),
        )


def _dead_letter(conn: Connection, run_id: int, batch: Any, changes: Sequence[Any], reason: str) -> None:
    kind = DeadLetterKind.PROFILE_SET if batch.kind == BatchKind.SET.value else DeadLetterKind.PROFILE_UNSET
    upsert(
        conn,
        DeadLetter.__table__,
        [
            {
                "kind": kind.value,
                "ref": f"sync_run:{run_id}",
                "customer_id": c.customer_id,
                "ext_id": c.ext_id,
                "payload": {"profile": c.profile},
                "reason": reason,
                "attempts": batch.attempts,
            }
            for c in changes
        ],
        conflict_columns=["kind", "ref", "customer_id"],
        update_columns=["payload", "reason", "attempts"],
    )
    conn.execute(
        sa.update(SyncChange)
        .where(SyncChange.sync_run_id == run_id, SyncChange.customer_id.in_([c.customer_id for c in changes]))
        .values(status=ChangeStatus.DEAD.value, reason=reason)
    )
    conn.execute(
        sa.update(SyncBatch).where(SyncBatch.id == batch.id).values(status=BatchStatus.DEAD.value, error=reason)
    )


def _body_sql(dialect: str, part: str, column: str) -> str:
    """The query of a batch's request body, built by the state database in one row: no entry passes through
    Python (fetching 1000 rows and encoding them held the interpreter lock, which the load's threads share). Each
    entry is concatenated from the extId, quoted as JSON by the database, and the JSON text the plan stored for
    the part (not parsed again), in extId order. Binds ``run`` and ``no`` (the batch number)."""
    entry = "'{\"extId\":' || %s(ext_id) || ',\"profile\":' || %s || '}'"
    where = f"sync_run_id = :run AND {column} = :no"
    if dialect == "postgresql":
        entries = f"string_agg({entry % ('to_json', part + '::text')}, ',' ORDER BY ext_id)"
        return f"SELECT count(*), '[' || coalesce({entries}, '') || ']' FROM sync_changes WHERE {where}"
    entries = f"group_concat({entry % ('json_quote', part)}, ',')"  # in the subquery's order (SQLite)
    ordered = f"SELECT ext_id, {part} FROM sync_changes WHERE {where} ORDER BY ext_id"
    return f"SELECT count(*), CAST('[' || coalesce({entries}, '') || ']' AS BLOB) FROM ({ordered})"


def _send(engine: Engine, run_id: int, batch: Any, client: NetmeraClient) -> None:
    """One profile write: the batch's request body, built by the state database from the JSON text the plan
    stored (:func:`_body_sql`), fetched as bytes (:func:`~optimove_netmera.store.queries.one_row_bytes`) and
    sent as it is."""
    is_set = batch.kind == BatchKind.SET.value
    part, column = ("set_attrs", "set_batch_no") if is_set else ("unset_attrs", "unset_batch_no")
    with engine.connect() as conn:
        sql = sa.text(_body_sql(conn.dialect.name, part, column))
        count, body = one_row_bytes(conn, sql, {"run": run_id, "no": batch.batch_no})
    call = "setProfileAttributes" if is_set else "unsetProfileAttributes"
    client.write_encoded_profiles(call, body, count)


# Groups of delivered batches recorded at once: PostgreSQL runs two recording transactions side by side (their
# upserts touch different customers); SQLite has one writer, and a second recorder only waited for the lock.
RECORDERS = {"postgresql": 2}


def _record(engine: Engine, run_id: int, group: Sequence[Any]) -> int:
    """Record a group of delivered batches in one transaction (:func:`_complete`); returns how many advanced."""
    with engine.begin() as conn:
        return _complete(conn, run_id, group)


def load_batches(
    engine: Engine, run_id: int, batch_ids: Sequence[int], client: NetmeraClient, concurrency: int = 1
) -> dict[str, int]:
    """Deliver the given batches of a run, ``concurrency`` requests in flight at once.

    The batches are claimed in one statement; worker threads only read their batch and send it, and recording
    threads (:data:`RECORDERS`) write the outcomes: each group of batches that finished while the recorders were
    busy is marked delivered and advances the snapshot in one transaction of set-based statements (keyed by batch
    number). Two groups recorded at once can each miss a customer whose set and unset parts they hold, as two load
    tasks can: :func:`settle` catches those. A batch Netmera rejects as invalid (400/413/422) is dead-lettered with
    the reason; any other failure (after the client's retries, or a 401/403/404 that no retry fixes), or a group
    that could not be recorded, lets the requests in flight finish and be recorded, puts the batches not started
    back to pending and raises, so the task fails and its retry (or a clear) resumes from there: a batch sent but
    not recorded is still in flight, and is sent again.
    """
    counts = {"batches_sent": 0, "batches_skipped": 0, "batches_dead": 0, "delivered": 0}
    ids = list(batch_ids)
    with engine.begin() as conn:
        claimed = _claim(conn, ids)
    counts["batches_skipped"] = len(ids) - len(claimed)
    error: BaseException | None = None
    finished: list[Any] = []
    recorders = RECORDERS.get(engine.dialect.name, 1)
    recording: dict[Future[int], int] = {}  # a group being recorded -> its number of batches

    def fail(exc: BaseException) -> None:
        nonlocal error
        if error is None:
            error = exc
            for other in sending:
                other.cancel()

    with (
        ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="netmera-load") as pool,
        ThreadPoolExecutor(max_workers=recorders, thread_name_prefix="netmera-record") as recorder,
    ):
        futures = {pool.submit(_send, engine, run_id, b, client): b for b in claimed}
        sending = set(futures)
        while sending or recording or finished:
            # a group per transaction: one as soon as enough finished (or the last), while a recorder is free
            if finished and len(recording) < recorders and (len(finished) >= concurrency or not sending):
                recording[recorder.submit(_record, engine, run_id, finished)] = len(finished)
                finished = []
            done, _ = wait(sending | set(recording), return_when=FIRST_COMPLETED)
            for future in done:
                if future in recording:
                    size = recording.pop(future)
                    if (exc := future.exception()) is not None:
                        fail(exc)
                    else:
                        counts["delivered"] += future.result()
                        counts["batches_sent"] += size
                    continue
                sending.discard(future)
                batch = futures[future]
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is None:
                    finished.append(batch)
                elif isinstance(exc, ApiError) and is_payload_rejection(exc):
                    reason = str(exc)
                    log.error("batch %s/%s rejected permanently, dead-lettered: %s", batch.kind, batch.batch_no, reason)
                    with engine.begin() as conn:
                        changes = _changes_of(conn, run_id, batch.kind, batch.batch_no)
                        _dead_letter(conn, run_id, batch, changes, reason)
                    counts["batches_dead"] += 1
                else:  # transient, or configuration (401/403/404): fail, never discard
                    with engine.begin() as conn:
                        conn.execute(
                            sa.update(SyncBatch)
                            .where(SyncBatch.id == batch.id)
                            .values(status=BatchStatus.FAILED.value, error=str(exc))
                        )
                    fail(exc)
        unstarted = [futures[f].id for f in futures if f.cancelled()]
    if unstarted:
        with engine.begin() as conn:
            conn.execute(
                sa.update(SyncBatch)
                .where(SyncBatch.id.in_(unstarted), SyncBatch.status == BatchStatus.IN_FLIGHT.value)
                .values(status=BatchStatus.PENDING.value)
            )
    if error is not None:
        raise error
    return counts


def load_summary(engine: Engine, run_id: int) -> dict[str, Any]:
    """Counts of the run's batches and changes by status (what the report shows)."""
    with engine.connect() as conn:
        batches = dict(
            conn.execute(
                sa.select(SyncBatch.status, sa.func.count())
                .where(SyncBatch.sync_run_id == run_id)
                .group_by(SyncBatch.status)
            ).all()
        )
        changes = change_counts(conn, run_id)
        dead = conn.execute(
            sa.select(sa.func.count()).select_from(DeadLetter).where(DeadLetter.ref == f"sync_run:{run_id}")
        ).scalar_one()
    return {"batches": batches, "changes": changes, "dead_lettered": dead}
