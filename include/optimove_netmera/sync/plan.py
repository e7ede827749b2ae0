"""Diff the run's customers against the snapshot and plan the Netmera batches, streamed in bounded memory.

Only customers whose fingerprint differs from the snapshot's (or who are new) go on. A snapshot row stores two
fingerprints: of the coerced values delivered, and of the raw values they came from
(:func:`~optimove_netmera.sync.transform.raw_fingerprints`). The raw ones are compared in the database, one
statement a chunk; only the customers whose raw values differ (or who are new or resynced) are coerced and compared
by their coerced values. One whose raw values changed but not its coerced ones (``"5"`` to ``" 5.0"``) is unchanged,
and its snapshot row gets the new fingerprint (not on a dry run), so the next run skips it too. Invalid values are
therefore counted (``dropped``) among the customers coerced: the new, changed and resynced ones.

For each changed customer, ``set_attrs`` are the valid non-empty values and ``unset_attrs`` the attributes delivered
before that are empty or invalid now: a value that cannot be coerced is treated as empty on every path (incremental,
full refresh, resync), so what Netmera holds is a function of Optimove's current data, never of what was valid
before. Set and unset parts are batched separately, at most ``batch_size`` extIds a batch, every batch of a kind full
but its last.

**Memory.** The customers (the run's staging rows, or for a full refresh the export file itself) are read in
chunks sized by ``sync.memory_budget_mb`` (:func:`~optimove_netmera.sync.extract.export_chunk_rows`); each chunk is
compared with the snapshot rows of its own customers (one statement a chunk, in a thread of its own while the chunk
before is diffed). The customers to coerce (raw values changed, new or resynced) are gathered across chunks into
sets of up to half a chunk, since coercing a set costs a fixed overhead besides its rows; each set's change rows are
written to ``sync_changes`` in one bulk insert, in a writer thread while the next chunk is read and diffed (at most
two sets' change rows wait: one for the probe's answers, one for its write). What follows the diff (guard, the
carried rows' checks and numbers) runs in the database or over pages of ids, so no step holds more than two and a
half chunks of customers, whatever the tenant's size.
In order:

1. the latest successful run's not-found changes are looked up (16 bytes a customer) and copied into this run
   (marked ``CARRIED``, one ``INSERT ... SELECT``); a thread of their own then checks the copies with the probe, page
   by page, while the diff goes on;
2. the chunks are diffed; the new and resynced customers among the changes are checked with the existence probe
   (1000 extIds a call, the calls going out while the next set is diffed) and every change row is numbered into its
   batches, in the order written, before it is written. A customer the diff replaces (a changed one, or for a full
   refresh every customer in the export: its row there is the truth) loses its carried copy in the transaction
   that writes its new row. But a customer new to the snapshot whose raw values and extId are the ones its carried
   change was planned from keeps that change: it is not coerced again, nor counted as changed (a full refresh of a
   tenant many of whose customers Netmera does not know would otherwise coerce and rewrite them all every run);
3. the guard, on the counts of step 2, is recorded (:func:`guard_check`); when it tripped the plan is still completed
   and stored, and the load waits for a person's decision (:mod:`optimove_netmera.sync.guard`);
4. once the carried copies are checked, the known ones are numbered after the others, in extId order, by one
   ``UPDATE``.

Netmera silently drops writes for extIds it does not know, so customers new to the snapshot are first checked with
the ``probe`` (``untagUsers`` + ``checkExistence`` of a tag nobody carries: no side effect, the answer lists the
unknown extIds; 1000 extIds a call). Unknown customers are not batched: they are counted as ``not_found`` and
carried over to the next run, which checks them again. A probe answer that does not say who is unknown (the probe
returns None: Netmera's answer carried no ``notExist`` list) is never read as "all known": that chunk's customers
are handled exactly like unknown ones (not sent, counted as ``existence_unknown``, carried over, checked again).
Every batch therefore holds only sendable users, and the profile write calls are exactly ceil(sendable / batch_size).

A ``resync`` (``"all"`` or CustomerIDs) forgets the snapshot for those customers: each is planned as changed
whatever its fingerprint, checked with the probe like a new customer, and sent its full row (every current value
set, every mapped attribute that is empty now unset). Resynced customers do not count towards the guard.

Planning is idempotent: a re-run of the plan task for a run that already has batches returns the stored plan,
so a cleared plan task can never re-plan (and re-send) batches that were delivered; a plan that failed midway is
started again from scratch. A dry run writes its change rows only to count them, and deletes them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine

from optimove_netmera.gc_passes import fewer_gc_passes
from optimove_netmera.settings import ExtIdTransform, Settings
from optimove_netmera.store.attribute_sets import AttributeSets
from optimove_netmera.store.engine import JSON_OPTIONS
from optimove_netmera.store.models import (
    BatchKind,
    BatchStatus,
    ChangeStatus,
    CustomerSnapshot,
    SyncBatch,
    SyncChange,
    SyncRun,
    SyncRunStatus,
    SyncStaging,
)
from optimove_netmera.store.queries import postgres_copy, refresh_statistics, sqlite_values_insert
from optimove_netmera.store.wal import BackgroundCheckpoints
from optimove_netmera.sync.extract import export_chunk_rows, iter_export
from optimove_netmera.sync.json_text import json_array, object_texts, presence
from optimove_netmera.sync.transform import (
    RAW_PART_LENGTH,
    RAW_VERSION,
    fingerprint_values,
    format_fingerprints,
    format_raw,
    parse_fingerprints,
    raw_fingerprints,
    raw_part,
    raw_parts,
    transform,
)

MAX_MAPPED_TASKS = 512
PROBE_CHUNK = 1000
KEYS_PER_QUERY = 10_000  # ids in one IN list (SQLite allows 32766 variables a statement)
Probe = Callable[[list[str]], set[str] | None]  # the unknown extIds; None: the answer did not say
EXISTENCE_UNKNOWN = "existence unknown: Netmera's checkExistence answer carried no notExist list"
EXT_ID_UNKNOWN = "extId unknown to Netmera"
CARRIED = "carried over: existence not checked yet"  # only while the plan runs
# The diff's change rows: JSON already encoded with the JSON columns' own encoder, inserted through untyped columns,
# so a million-row insert skips SQLAlchemy's per-value processing (a third of the diff's time otherwise).
_CHANGE_COLUMNS = (
    "sync_run_id",
    "customer_id",
    "ext_id",
    "new_hash",
    "set_attrs",
    "unset_attrs",
    "present_bits",
    "set_batch_no",
    "unset_batch_no",
    "status",
    "reason",
    "new_customer",
)
_NULLABLE = ("set_batch_no", "unset_batch_no", "reason")  # COPY reads their empty fields as NULL
_CUSTOMER_ID, _EXT_ID, _SET_NO, _UNSET_NO, _STATUS, _REASON, _FRESH = 1, 2, 7, 8, 9, 10, 12  # _FRESH: not stored
UNNUMBERED = -1  # a part to send whose batch number is not given yet
_NOTHING = pa.scalar("", pa.large_string())
_CHANGE_ROWS = sa.table(SyncChange.__tablename__, *(sa.column(c) for c in _CHANGE_COLUMNS))


class _Clock:
    """Adds the seconds since the last lap to ``into[name]``."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.into[name] = round(self.into.get(name, 0.0) + now - self.last, 3)
        self.last = now


@dataclass
class Plan:
    """Counts of the plan, plus the batch-id groups the load tasks map over (all small, XCom-safe)."""

    sync_run_id: int
    fetched: int = 0
    known: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    carried_over: int = 0
    resynced: int = 0
    not_found: int = 0
    existence_unknown: int = 0
    set_entries: int = 0
    unset_entries: int = 0
    set_batches: int = 0
    unset_batches: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    attributes_changed: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # read, diff, probe (Netmera round trips), store
    guard: dict[str, Any] = field(default_factory=dict)  # see :func:`guard_check`
    groups: list[list[int]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """Everything but the groups."""
        out = asdict(self)
        out.pop("groups")
        return out


def _staged_chunks(engine: Engine, run_id: int, rows: int) -> Iterator[tuple[pd.DataFrame, dict[str, list[str]]]]:
    """The run's staged customers, ``rows`` at a time in customer order (index: customer id; one string column per
    Optimove attribute), with the attribute names each was reported changed in."""
    last: str | None = None
    while True:
        # the JSON as text, decoded a page at a time: a decode a row (the column's own) cost a third of the read
        q = (
            sa.select(SyncStaging.customer_id, sa.cast(SyncStaging.attributes, sa.Text))
            .where(SyncStaging.sync_run_id == run_id)
            .order_by(SyncStaging.customer_id)
            .limit(rows)
        )
        if last is not None:
            q = q.where(SyncStaging.customer_id > last)
        with engine.connect() as conn:
            page = conn.execute(q).all()
        if not page:
            return
        last = page[-1][0]
        ids = [r[0] for r in page]
        staged = msgspec.json.decode(f"[{','.join(r[1] for r in page)}]".encode())
        frame = pd.DataFrame.from_records([a["v"] for a in staged], index=pd.Index(ids, name="customer_id"))
        yield frame, {c: names for c, a in zip(ids, staged, strict=True) if (names := a.get("c"))}


def _keyed(conn: Connection, columns: tuple[Any, ...], key: Any, ids: list[str], *where: Any) -> list[Any]:
    """Rows of ``columns`` whose ``key`` is one of ``ids``, KEYS_PER_QUERY ids a query."""
    out: list[Any] = []
    for start in range(0, len(ids), KEYS_PER_QUERY):
        out.extend(conn.execute(sa.select(*columns).where(*where, key.in_(ids[start : start + KEYS_PER_QUERY]))))
    return out


def _snapshot_differing(
    conn: Connection, ids: list[str], raw_hashes: np.ndarray
) -> tuple[np.ndarray, list[str | None], list[str | None]]:
    """The customers (positions in ``ids``) whose snapshot row is missing or holds another raw fingerprint than
    ``raw_hashes``, with their stored fingerprint and the set of attributes delivered to them (``present_bits``; None
    for those not in the snapshot).

    The others' raw values are the ones delivered last: unchanged, and never read into Python. The comparison runs
    in the database, one statement a chunk (SQLite: the chunk as one JSON document; PostgreSQL: two arrays).
    """
    table = CustomerSnapshot.__tablename__
    if conn.dialect.name == "sqlite":
        # Each id behind its raw part, which has a fixed width: substr splits them. (``value ->> k`` parses the
        # element's JSON again for every k: the id and the hash as a pair cost two parses a customer.) Written in
        # Arrow: a Python string a customer cost as much as the statement.
        keyed = pc.binary_join_element_wise(raw_parts(raw_hashes), pa.array(ids, pa.large_string()), _NOTHING)
        document = json_array(keyed)
        if b"\\u0000" in document:  # json_each would cut an id at a NUL: compare in Python
            return _snapshot_differing_keyed(conn, ids, raw_hashes)
        # One row holding every answer: a row at a time, the driver would take the interpreter lock back for each
        # one (and wait for it behind the thread diffing the chunk before).
        n = RAW_PART_LENGTH
        sql = (
            f"SELECT json_group_array(json_array(j.key, s.attr_hash, s.present_bits)) FROM json_each(?) AS j "
            f"LEFT JOIN {table} AS s ON s.customer_id = substr(j.value, {n + 1}) "
            f"WHERE s.attr_hash IS NULL OR substr(s.attr_hash, -{n}) != substr(j.value, 1, {n})"
        )
        rows = msgspec.json.decode(conn.exec_driver_sql(sql, (document,)).scalar_one())
    else:
        signed = raw_hashes.view(np.int64).tolist()
        sql = (
            f"SELECT t.i - 1, s.attr_hash, s.present_bits FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY "
            f"AS t(cid, h, i) LEFT JOIN {table} AS s ON s.customer_id = t.cid WHERE s.attr_hash IS NULL "
            f"OR right(s.attr_hash, {RAW_PART_LENGTH}) <> ':{RAW_VERSION}:' || lpad(to_hex(t.h), 16, '0')"
        )
        rows = conn.exec_driver_sql(sql, (ids, signed)).all()
    pos = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return pos, [r[1] for r in rows], [r[2] for r in rows]


def _snapshot_differing_keyed(
    conn: Connection, ids: list[str], raw_hashes: np.ndarray
) -> tuple[np.ndarray, list[str | None], list[str | None]]:
    """:func:`_snapshot_differing` by keyed queries, compared in Python (ids that JSON cannot carry to SQLite)."""
    columns = (CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash, CustomerSnapshot.present_bits)
    stored = {r[0]: (r[1], r[2]) for r in _keyed(conn, columns, CustomerSnapshot.customer_id, ids)}
    pos, hashes, present = [], [], []
    for i, (cid, raw) in enumerate(zip(ids, raw_hashes.tolist(), strict=True)):
        found = stored.get(cid, (None, None))
        if found[0] is None or raw_part(found[0]) != format_raw(raw):
            pos.append(i)
            hashes.append(found[0])
            present.append(found[1])
    return np.array(pos, dtype=np.int64), hashes, present


def _refresh_raw(conn: Connection, pairs: list[tuple[str, str]]) -> None:
    """Store new fingerprints (customer id, fingerprint) whose coerced part is the one delivered: their raw values
    changed, what Netmera holds did not. Only the snapshot's fingerprint changes (what and when it was delivered do
    not)."""
    if not pairs:
        return
    table = CustomerSnapshot.__tablename__
    if conn.dialect.name == "sqlite":
        pairs = [p for p in pairs if "\x00" not in p[0]]  # json_each would cut it short: left for the next run
        conn.exec_driver_sql(
            f"UPDATE {table} SET attr_hash = j.value ->> 1 FROM json_each(?) AS j "
            f"WHERE {table}.customer_id = j.value ->> 0",
            (msgspec.json.encode(pairs),),
        )
    else:
        conn.exec_driver_sql(
            f"UPDATE {table} AS s SET attr_hash = t.h FROM unnest(%s::text[], %s::text[]) AS t(cid, h) "
            "WHERE s.customer_id = t.cid",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        )


def _known_customers(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(CustomerSnapshot)).scalar_one()


def _previous_run(conn: Connection, run_id: int) -> int | None:
    return conn.execute(
        sa.select(SyncRun.id)
        .where(SyncRun.status == SyncRunStatus.SUCCESS.value, SyncRun.dry_run.is_(False), SyncRun.id < run_id)
        .order_by(SyncRun.id.desc())
        .limit(1)
    ).scalar()


def _carried_pages(conn: Connection, previous: int) -> Iterator[list[Any]]:
    """(customer id, extId, fingerprint) of the changes run ``previous`` found no Netmera user for (the ones to carry
    over), KEYS_PER_QUERY rows a page."""
    c = SyncChange.__table__.c
    where = (c.sync_run_id == previous, c.status == ChangeStatus.NOT_FOUND.value)
    query = sa.select(c.customer_id, c.ext_id, c.new_hash).where(*where)
    result = conn.execute(query, execution_options={"stream_results": True})
    yield from result.partitions(KEYS_PER_QUERY)


def _standing_keys(customer_ids: list[str], ext_ids: list[str], raw_texts: list[str]) -> np.ndarray:
    """A 64-bit key of each (customer id, extId, raw fingerprint's stored part): equal keys, the same change."""
    key = _customer_hashes(customer_ids)
    with np.errstate(over="ignore"):
        for part in (ext_ids, raw_texts):
            key = key * np.uint64(1000003) ^ pd.util.hash_array(np.asarray(part, dtype=object), categorize=False)
    return key


def _carry_over(conn: Connection, run_id: int, previous: int) -> int:
    """Copy run ``previous``'s not-found changes into this run, marked ``CARRIED`` (pending, batch numbers to come);
    returns how many. One ``INSERT ... SELECT``: the rows never pass through Python. It runs before the diff writes
    anything: the diff deletes the copy of each customer it replaces (:func:`_delete_replaced`)."""
    c = SyncChange.__table__.c

    def to_send(column: Any, empty: str) -> Any:  # UNNUMBERED for a part with something in it, else NULL
        text = sa.cast(column, sa.Text)
        return sa.case((sa.or_(column.is_(None), text.in_([empty, "null"])), sa.null()), else_=sa.literal(UNNUMBERED))

    copied = sa.select(
        sa.literal(run_id),
        c.customer_id,
        c.ext_id,
        c.new_hash,
        c.set_attrs,
        c.unset_attrs,
        c.present_bits,
        to_send(c.set_attrs, "{}"),
        to_send(c.unset_attrs, "[]"),
        sa.literal(ChangeStatus.PENDING.value),
        sa.literal(CARRIED),
        c.new_customer,  # not delivered: still without a snapshot row, unless another run delivered it since
    ).where(c.sync_run_id == previous, c.status == ChangeStatus.NOT_FOUND.value)
    return conn.execute(sa.insert(SyncChange).from_select(list(_CHANGE_COLUMNS), copied)).rowcount or 0


def _among(conn: Connection, column: Any, ids: list[str]) -> Any:
    """``column IN ids``, the ids sent as one value (SQLite: a JSON array; PostgreSQL: an array): thousands of bound
    ids cost more to render than to look up. On SQLite, ids with a NUL (which ``json_each`` would cut short) are
    bound one by one (callers pass at most KEYS_PER_QUERY)."""
    if conn.dialect.name != "sqlite":
        return column == sa.any_(sa.literal(ids, ARRAY(sa.Text)))
    document = msgspec.json.encode(ids)
    if b"\\u0000" in document:
        return column.in_(ids)
    return column.in_(sa.select(sa.func.json_each(document).table_valued("value").c.value))


def _delete_replaced(conn: Connection, run_id: int, customer_ids: list[str]) -> int:
    """Delete this run's rows of ``customer_ids`` (their carried changes, which the diff replaces: each customer is
    read once, so the only row it can have yet is the carried one, whatever its probe said); returns how many."""
    deleted = 0
    for start in range(0, len(customer_ids), KEYS_PER_QUERY):
        ids = customer_ids[start : start + KEYS_PER_QUERY]
        where = (SyncChange.sync_run_id == run_id, _among(conn, SyncChange.customer_id, ids))
        deleted += conn.execute(sa.delete(SyncChange).where(*where)).rowcount or 0
    return deleted


@dataclass
class _Diff:
    """What the diff of every chunk adds up to."""

    sets: AttributeSets  # the attribute names' bits (``present_bits``)
    data_changed: int = 0  # the guard counts changes in the data, never an operator's resync
    attr_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Compared:
    """A chunk's customer ids, raw fingerprints and (customers known to the snapshot) their comparison with it."""

    ids: list[str]
    raw_hashes: np.ndarray
    differing: Future[tuple[np.ndarray, list[str | None], list[str | None]]] | None


def _compare_ahead(
    engine: Engine, chunks: Iterable[tuple[pd.DataFrame, dict[str, list[str]]]], settings: Settings, known: bool
) -> Iterator[tuple[pd.DataFrame, dict[str, list[str]], _Compared]]:
    """Each chunk with its raw fingerprints and its snapshot comparison (:func:`_snapshot_differing`), the next
    chunk's comparison running in a thread of its own while the caller diffs this one.

    The comparison is one statement that runs in the database without the interpreter lock; the caller's diff is
    Python work. At most two chunks are held: the one being diffed and the next.
    """
    thread = ThreadPoolExecutor(1, thread_name_prefix="plan-compare")

    def compare(ids: list[str], raw_hashes: np.ndarray) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        with engine.connect() as conn:
            return _snapshot_differing(conn, ids, raw_hashes)

    try:
        ahead: tuple[pd.DataFrame, dict[str, list[str]], _Compared] | None = None
        for raw, names in chunks:
            ids = raw.index.astype("str").tolist()
            raw_hashes = raw_fingerprints(raw, settings.attributes)
            differing = thread.submit(compare, ids, raw_hashes) if known else None
            current, ahead = ahead, (raw, names, _Compared(ids, raw_hashes, differing))
            del raw, names
            if current is not None:
                yield current
                del current  # not held while the next chunk is read
        if ahead is not None:
            yield ahead
    finally:
        thread.shutdown(cancel_futures=True)


@dataclass
class _Candidates:
    """Customers to coerce and compare by their coerced values (raw values differing from the snapshot's, new, or
    resynced), from one read chunk or several, in order; every list and array is aligned with ``ids``."""

    frame: pd.DataFrame  # their raw rows (index: customer id)
    ids: list[str]
    raw_hashes: np.ndarray
    stored: list[str | None]  # the snapshot's fingerprint (None: not in the snapshot, or not read: raw_same)
    present: list[str | None]  # the attributes delivered to them, as bits (likewise)
    is_new: np.ndarray
    raw_same: np.ndarray  # resynced, raw values the ones delivered: not compared, planned because forced
    forced: np.ndarray
    changed_names: dict[str, list[str]]  # the attribute names Optimove reported changed, where it did

    def __len__(self) -> int:
        return len(self.ids)


def _merge(parts: list[_Candidates]) -> _Candidates:
    """One set of candidates holding ``parts`` in order."""
    if len(parts) == 1:
        return parts[0]
    return _Candidates(
        frame=pd.concat([p.frame for p in parts]),
        ids=[c for p in parts for c in p.ids],
        raw_hashes=np.concatenate([p.raw_hashes for p in parts]),
        stored=[h for p in parts for h in p.stored],
        present=[a for p in parts for a in p.present],
        is_new=np.concatenate([p.is_new for p in parts]),
        raw_same=np.concatenate([p.raw_same for p in parts]),
        forced=np.concatenate([p.forced for p in parts]),
        changed_names={c: n for p in parts for c, n in p.changed_names.items()},
    )


class _CandidateBuffer:
    """Gathers the candidates of consecutive chunks into sets of up to ``rows`` customers.

    Coercing a set costs a fixed overhead a column besides its rows: a set of a few hundred customers (a chunk of
    which 1% changed) costs a third of a full chunk's coercion. Fewer than ``rows`` customers are held between
    chunks, and a set handed out is larger than ``rows`` only when one chunk's candidates are."""

    def __init__(self, rows: int) -> None:
        self.rows, self._parts, self._held = rows, [], 0

    def add(self, candidates: _Candidates) -> list[_Candidates]:
        """Hold ``candidates``; returns the sets ready to diff, in order (none, one or two)."""
        ready = []
        if self._parts and self._held + len(candidates) > self.rows:
            ready.append(self.take())
        if len(candidates):
            self._parts.append(candidates)
            self._held += len(candidates)
        if self._held >= self.rows:
            ready.append(self.take())
        return ready

    def take(self) -> _Candidates:
        """The candidates held, as one set; the buffer is empty afterwards."""
        merged = _merge(self._parts)
        self._parts, self._held = [], 0
        return merged

    def __bool__(self) -> bool:
        return bool(self._parts)


def _select(
    raw: pd.DataFrame,
    changed_names: dict[str, list[str]],
    compared: _Compared,
    resync: str | list[str] | None,
    plan: Plan,
    standing: Callable[[list[str], np.ndarray], np.ndarray] | None = None,
) -> tuple[_Candidates, list[str]]:
    """A chunk's candidates (see :class:`_Candidates`), and the customers left to their carried change; counts the
    chunk's customers as fetched and the others as unchanged: their raw values are the ones delivered last.

    ``standing``: given customers new to the snapshot (not resynced) and their raw fingerprints, which of them have
    a change carried over from the last run that stands as it is (:meth:`_ChangeWriter.standing`): those are not
    candidates; the carry-over copies their change (counted there)."""
    plan.fetched += len(raw)
    customer_list, raw_hashes = compared.ids, compared.raw_hashes
    if resync == "all":
        forced_all = np.ones(len(customer_list), dtype=bool)
    elif resync:
        forced_all = np.asarray(pd.Index(customer_list).isin(resync), dtype=bool)
    else:
        forced_all = np.zeros(len(customer_list), dtype=bool)
    plan.resynced += int(forced_all.sum())
    # those whose raw values differ from the snapshot's (new ones included), then the resynced ones whose raw values
    # are the ones delivered (``raw_same``)
    if compared.differing is not None:
        pos, stored, present = compared.differing.result()
    else:
        pos, stored, present = np.arange(len(customer_list)), [None] * len(customer_list), [None] * len(customer_list)
    differing = len(pos)
    if forced_all.any():
        extra = np.setdiff1d(np.flatnonzero(forced_all), pos)
        pos = np.concatenate([pos, extra])
        stored, present = [*stored, *[None] * len(extra)], [*present, *[None] * len(extra)]
    plan.unchanged += len(customer_list) - len(pos)
    is_new = np.zeros(len(pos), dtype=bool)
    is_new[:differing] = np.fromiter((h is None for h in stored[:differing]), dtype=bool, count=differing)
    raw_same = np.zeros(len(pos), dtype=bool)
    raw_same[differing:] = True
    left: list[str] = []
    if standing is not None and (look := np.flatnonzero(is_new & ~forced_all[pos])).size:
        at = pos[look]
        hit = standing([customer_list[i] for i in at.tolist()], raw_hashes[at])
        if hit.any():
            left = [customer_list[i] for i in at[hit].tolist()]
            keep = np.ones(len(pos), dtype=bool)
            keep[look[hit]] = False
            kept = np.flatnonzero(keep).tolist()
            pos, is_new, raw_same = pos[keep], is_new[keep], raw_same[keep]
            stored, present = [stored[i] for i in kept], [present[i] for i in kept]
    # the database answers in its own order (a hash join's, on PostgreSQL): the chunk as it is only when in order
    everyone = len(pos) == len(raw) and bool((pos == np.arange(len(raw))).all())
    ids = customer_list if everyone else [customer_list[i] for i in pos.tolist()]
    candidates = _Candidates(
        frame=raw if everyone else raw.iloc[pos],
        ids=ids,
        raw_hashes=raw_hashes[pos],
        stored=list(stored),
        present=list(present),
        is_new=is_new,
        raw_same=raw_same,
        forced=forced_all[pos],
        changed_names={c: changed_names[c] for c in ids if c in changed_names} if changed_names else {},
    )
    return candidates, left


def _diff_chunk(
    run_id: int, cands: _Candidates, settings: Settings, plan: Plan, acc: _Diff
) -> tuple[list[list[Any]], list[tuple[str, str]]]:
    """Coerce a set of candidates (:class:`_Candidates`, at most a chunk's worth) and compare them with the snapshot
    by their coerced values.

    Returns the change rows (lists in ``_CHANGE_COLUMNS`` order, extId order, JSON encoded, pending, batch numbers
    ``UNNUMBERED``, plus whether each customer is fresh (new or resynced: to be checked with the probe) as the last
    item), and the new fingerprints of the customers whose raw values changed but whose coerced values did not.
    """
    mapping = settings.attributes
    ids, stored, is_new, raw_same, forced = cands.ids, cands.stored, cands.is_new, cands.raw_same, cands.forced
    t = transform(cands.frame, mapping)
    for reason, n in t.dropped.items():
        plan.dropped[reason] = plan.dropped.get(reason, 0) + n
    hashes = fingerprint_values(t)
    same = raw_same.copy()
    seen = np.flatnonzero(~is_new & ~raw_same)
    if seen.size:
        values, valid = parse_fingerprints([stored[i] for i in seen.tolist()])
        same[seen] = valid & (values == hashes[seen])
    changed_mask = ~same
    acc.data_changed += int(changed_mask.sum())
    changed_mask |= forced
    plan.new += int(is_new.sum())
    n_changed = int(changed_mask.sum())
    plan.changed += n_changed
    plan.unchanged += len(ids) - n_changed
    refreshed = np.flatnonzero(same & ~raw_same & ~forced)  # coerced the same, raw not: a new fingerprint
    refresh = list(
        zip(
            [ids[i] for i in refreshed.tolist()],
            format_fingerprints(hashes[refreshed], cands.raw_hashes[refreshed]),
            strict=True,
        )
    )

    idx = np.flatnonzero(changed_mask)
    names = list(t.values.columns)
    picked = idx.tolist()
    customer_ids = [ids[i] for i in picked]
    ext_ids = settings.ext_id.apply_all(customer_ids)
    forced_flags = forced[idx].tolist()
    new_flags = is_new[idx].tolist()  # no snapshot row: the load inserts theirs (SyncChange.new_customer)
    fresh = (is_new[idx] | forced[idx]).tolist()
    all_names = [a.netmera for a in mapping]
    present_before = [cands.present[i] for i in picked]  # what was delivered to each, where the snapshot said
    changed_values = t.values.iloc[idx]
    del t
    filled = changed_values.notna().to_numpy()
    # the set_attrs (the valid non-empty values), and which attributes each row sets: rows share a code exactly
    # when they set the same ones
    set_texts = object_texts(changed_values)
    del changed_values
    codes, sets = presence(filled, names)
    encode = JSON_OPTIONS["json_serializer"]  # what the JSON columns would store
    present_bits = [acc.sets.encode(names_set) for names_set in sets]
    present = [present_bits[c] for c in codes.tolist()]
    set_nos = [UNNUMBERED if f else None for f in filled.any(axis=1).tolist()]
    # Attribute counts: rows that carry the names Optimove reported count those; the others count what they set
    # (summed per column here) and unset (per row below).
    by_optimove = {a.netmera: a.optimove for a in mapping}
    attr_counts = acc.attr_counts
    changed_names = cands.changed_names
    reported_rows = [bool(changed_names.get(c)) for c in customer_ids] if changed_names else [False] * len(idx)
    counted = ~np.asarray(reported_rows, dtype=bool)
    for name, n in zip(names, filled[counted].sum(axis=0).tolist(), strict=True):
        if n:
            attr_counts[by_optimove[name]] = attr_counts.get(by_optimove[name], 0) + n
    for i in np.flatnonzero(~counted).tolist():
        for optimove_name in changed_names[customer_ids[i]]:
            attr_counts[optimove_name] = attr_counts.get(optimove_name, 0) + 1
    # unset: what was delivered before (a resync: any attribute) that is empty or invalid now; an invalid value counts
    # as empty, never sent
    no_unset = encode([])
    unset_texts, unset_nos = [no_unset] * len(idx), [None] * len(idx)
    code_list = codes.tolist()
    decode = acc.sets.decode
    for i, (forced_row, bits) in enumerate(zip(forced_flags, present_before, strict=True)):
        delivered = decode(bits) if bits else ()
        if not (forced_row or delivered):
            continue  # nothing delivered before: nothing to unset
        before = all_names if forced_row else delivered
        unset = sorted(set(before).difference(sets[code_list[i]]))
        if unset:
            unset_texts[i], unset_nos[i] = encode(unset), UNNUMBERED
            if not reported_rows[i]:
                for name in unset:
                    attr_counts[by_optimove[name]] = attr_counts.get(by_optimove[name], 0) + 1
    changed_hashes = format_fingerprints(hashes[idx], cands.raw_hashes[idx])
    pending = ChangeStatus.PENDING.value
    columns = (customer_ids, ext_ids, changed_hashes, set_texts, unset_texts, present, set_nos, unset_nos)
    flags = zip(new_flags, fresh, strict=True)
    changes = [[run_id, *row, pending, None, *f] for row, f in zip(zip(*columns, strict=True), flags, strict=True)]
    changes.sort(key=itemgetter(_EXT_ID))
    return changes, refresh


def _insert_changes(conn: Connection, rows: list[list[Any]]) -> None:
    """Insert change rows (``_CHANGE_COLUMNS`` order, JSON already encoded; an extra last item is ignored): SQLite
    in statements of bound values (:func:`~optimove_netmera.store.queries.sqlite_values_insert`), PostgreSQL with
    ``COPY`` (:func:`~optimove_netmera.store.queries.postgres_copy`, which reads an empty ``reason`` as NULL: a
    ``reason`` of ``""`` goes through SQLAlchemy's multi-row VALUES, as with any other driver)."""
    if not rows:
        return
    n = len(_CHANGE_COLUMNS)
    if conn.dialect.name == "sqlite":
        sqlite_values_insert(conn, SyncChange.__tablename__, _CHANGE_COLUMNS, [r[:n] for r in rows])
        return
    if all(r[_REASON] != "" for r in rows) and postgres_copy(
        conn, SyncChange.__tablename__, _CHANGE_COLUMNS, (r[:n] for r in rows), _NULLABLE
    ):
        return
    conn.execute(sa.insert(_CHANGE_ROWS), [dict(zip(_CHANGE_COLUMNS, r[:n], strict=True)) for r in rows])


def _count(conn: Connection, run_id: int, *where: Any) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(SyncChange).where(SyncChange.sync_run_id == run_id, *where)
    ).scalar_one()


def _delete_changes(engine: Engine, run_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(SyncChange).where(SyncChange.sync_run_id == run_id))


def _customer_hashes(ids: list[str]) -> np.ndarray:
    """A 64-bit hash of each customer id."""
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


class _ChangeWriter:
    """Carries the last run's not-found changes over, then writes each set's change rows in one transaction a write,
    in a thread of its own while the caller reads and diffs.

    Its first writes find the last run's not-found changes and copy them into this run (:func:`_carry_over`) while
    the caller reads the first chunk; a thread of their own then checks the copies with the probe
    (:func:`_probe_carried`) while the diff goes on. A write deletes the copies of the customers the diff replaces
    (:func:`_delete_replaced`) in the transaction that writes their new rows, or before it. :meth:`carry_rest`
    waits for all of it.

    A write of rows first waits for the writes before it, so besides the set being diffed at most one set's rows
    are held; a write without rows (a chunk's customers to look up among the carried ones, new fingerprints) is
    queued without waiting. On SQLite an insert is one statement that runs without the interpreter lock: the write
    and the next chunk's diff use both cores. A write's error is raised by the next :meth:`write` of rows or
    :meth:`wait`. Besides a set's rows it holds 16 bytes for each customer carried over.
    """

    def __init__(self, engine: Engine, run_id: int) -> None:
        self._engine, self._run_id = engine, run_id
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="plan-writer")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="plan-carried")
        self._stop = threading.Event()
        self._one_at_a_time = threading.Lock()  # see :meth:`transaction`
        self._checkpoints = BackgroundCheckpoints(engine)  # SQLite: the log copied beside the writes, not in them
        self._pending: list[Future[None]] = []
        self._previous: int | None = None  # the run whose not-found changes are carried over
        self._carried_hashes = np.zeros(0, dtype=np.uint64)  # of the customers carried over, sorted
        self._standing_keys = np.zeros(0, dtype=np.uint64)  # of their changes (:func:`_standing_keys`), sorted
        self._found: Future[None] | None = None
        self._checked: Future[None] | None = None
        self.carried = 0  # rows carried over, less those the diff replaced

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction of the plan's writes: the writer's and the carried changes' check's, one at a time. Both
        touch carried copies (the writer deletes those the diff replaces, the check sets the unknown ones not found):
        concurrent transactions could lock the same rows in opposite orders (a deadlock on PostgreSQL)."""
        with self._one_at_a_time, self._checkpoints.transaction() as conn:
            yield conn

    def carry_over(self, check: Callable[[threading.Event], None] | None) -> None:
        """Queue the first writes: find the last run's not-found changes (while the caller reads and compares the
        first chunk), copy them into this run, then ``check`` them (the probe, :func:`_probe_carried`, writing through
        :meth:`transaction`) in a thread of their own while the diff goes on; ``check`` stops early once the event
        given is set."""
        self._found = self._thread.submit(self._find_carried)
        self._pending.append(self._found)
        self._pending.append(self._thread.submit(self._copy_carried, check))

    def _find_carried(self) -> None:
        with self._engine.connect() as conn:
            previous = _previous_run(conn, self._run_id)
            if previous is None:
                return
            hashes, keys = [], []
            for page in _carried_pages(conn, previous):
                ids, ext_ids, fingerprints = (list(column) for column in zip(*page, strict=True))
                hashes.append(_customer_hashes(ids))
                keys.append(_standing_keys(ids, ext_ids, [raw_part(h) for h in fingerprints]))
            if hashes:
                self._carried_hashes = np.unique(np.concatenate(hashes))
                self._standing_keys = np.unique(np.concatenate(keys))
            self._previous = previous

    def _copy_carried(self, check: Callable[[threading.Event], None] | None) -> None:
        if self._previous is None or not self._carried_hashes.size:
            return
        with self.transaction() as conn:
            self.carried = _carry_over(conn, self._run_id, self._previous)
        if check is not None and self.carried:
            self._checked = self._checker.submit(check, self._stop)

    def carries_over(self) -> bool:
        """Whether the last run left changes to carry over (waits for their lookup, the first write)."""
        if self._found is not None:
            self._found.result()
        return bool(self._standing_keys.size)

    def standing(self, customer_ids: list[str], raw_hashes: np.ndarray, ext_id: ExtIdTransform) -> np.ndarray:
        """Which of these customers (new to the snapshot, not resynced) have a change carried over from the last run
        planned from the same raw values for the same extId: that change stands as it is, carried over without
        being coerced again (a 64-bit key each, the risk of the raw fingerprints themselves)."""
        if not (self.carries_over() and customer_ids):
            return np.zeros(len(customer_ids), dtype=bool)
        keys = _standing_keys(customer_ids, ext_id.apply_all(customer_ids), raw_parts(raw_hashes).to_pylist())
        return _in_sorted(keys, self._standing_keys)

    def carry_rest(self) -> int:
        """Once the last write is queued: wait for the writes and the carried changes' check; returns how many
        changes were carried over (the diff replaced the others)."""
        self.wait()
        if self._checked is not None:
            self._checked.result()
        return self.carried

    def write(
        self,
        rows: list[list[Any]],
        replacing_carried: list[str] | None = None,
        fingerprints: list[tuple[str, str]] | None = None,
    ) -> None:
        """Queue a write of ``rows`` (with rows, once the writes queued before it have finished);
        ``replacing_carried``: customers whose carried changes the diff replaces (deleted in the same transaction,
        before the rows go in); ``fingerprints``: store those new snapshot fingerprints in the same transaction
        (:func:`_refresh_raw`)."""
        if rows:
            self.wait()
        self._pending.append(self._thread.submit(self._write, rows, replacing_carried, fingerprints))

    def _write(
        self, rows: list[list[Any]], replacing_carried: list[str] | None, fingerprints: list[tuple[str, str]] | None
    ) -> None:
        replaced: list[str] = []
        if replacing_carried and self._carried_hashes.size:  # looked up by their hashes: ids only where one may be
            hit = _in_sorted(_customer_hashes(replacing_carried), self._carried_hashes)
            replaced = [c for c, h in zip(replacing_carried, hit.tolist(), strict=True) if h]
        if not (rows or fingerprints or replaced):
            return
        with self.transaction() as conn:
            self.carried -= _delete_replaced(conn, self._run_id, replaced)
            _insert_changes(conn, rows)
            _refresh_raw(conn, fingerprints or [])

    def wait(self) -> None:
        """Wait for the writes queued; raise the first one's error."""
        pending, self._pending = self._pending, []
        for i, future in enumerate(pending):
            try:
                future.result()
            except BaseException:
                wait_for(pending[i + 1 :])
                raise

    def close(self) -> None:
        """Wait for the writes queued and stop the carried changes' check (without raising: the caller is failing
        already, or has waited), and stop the threads."""
        self._stop.set()
        pending, self._pending = self._pending, []
        wait_for(pending)
        self._thread.shutdown()
        self._checker.shutdown()
        self._checkpoints.close()


def _in_sorted(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_unique`` (sorted, no repeats): a binary search each."""
    if not sorted_unique.size:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_unique, values), sorted_unique.size - 1)
    return sorted_unique[at] == values


class _Numbering:
    """Batch numbers handed out in order: every batch of a kind is full but its last."""

    def __init__(self, size: int) -> None:
        self.size, self.set, self.unset = size, 0, 0

    def number(self, rows: list[list[Any]]) -> None:
        """Number the pending rows' parts (``UNNUMBERED`` ones), in the rows' order."""
        pending = ChangeStatus.PENDING.value
        for r in rows:
            if r[_STATUS] != pending:
                continue
            if r[_SET_NO] == UNNUMBERED:
                r[_SET_NO] = self.set // self.size
                self.set += 1
            if r[_UNSET_NO] == UNNUMBERED:
                r[_UNSET_NO] = self.unset // self.size
                self.unset += 1


def _check(rows: list[list[Any]], probe: Probe, plan: Plan) -> list[tuple[str, str]]:
    """Probe ``rows`` (at most PROBE_CHUNK) and set the unknown (or unanswered) ones not found, in place.

    Returns the (customer id, reason) of those not found."""
    return _mark(rows, _ask(rows, probe), plan)


def _ask(rows: list[list[Any]], probe: Probe) -> set[str] | None:
    """The probe's answer for ``rows`` (no call for none)."""
    return probe([r[_EXT_ID] for r in rows]) if rows else set()


def _mark(rows: list[list[Any]], answer: set[str] | None, plan: Plan) -> list[tuple[str, str]]:
    """Set the rows the probe's ``answer`` lists as unknown (every row, when it did not answer) not found."""
    reason = EXISTENCE_UNKNOWN if answer is None else EXT_ID_UNKNOWN
    gone = []
    for r in rows:
        if answer is None or r[_EXT_ID] in answer:
            r[_SET_NO] = r[_UNSET_NO] = None
            r[_STATUS], r[_REASON] = ChangeStatus.NOT_FOUND.value, reason
            gone.append((r[_CUSTOMER_ID], reason))
    if answer is None:
        plan.existence_unknown += len(gone)
    return gone


def _check_blocks(
    blocks: list[list[list[Any]]], probe: Probe, plan: Plan, pool: ThreadPoolExecutor
) -> list[tuple[str, str]]:
    """:func:`_check` each block (at most PROBE_CHUNK rows), the probe calls ``pool``'s workers at a time.

    Returns the (customer id, reason) of those not found."""
    gone: list[tuple[str, str]] = []
    for rows, answer in zip(blocks, pool.map(lambda rows: _ask(rows, probe), blocks), strict=True):
        gone.extend(_mark(rows, answer, plan))
    return gone


def _probe_carried(
    engine: Engine,
    run_id: int,
    probe: Probe,
    plan: Plan,
    pool: ThreadPoolExecutor,
    in_flight: int,
    stop: threading.Event,
    transaction: Callable[[], AbstractContextManager[Connection]],
) -> None:
    """Check the rows still carried over, PROBE_CHUNK extIds a call, ``in_flight`` calls at once (``pool``), page by
    page, until none is left or ``stop`` is set; the unknown ones are set not found (counted in ``plan``), in a
    ``transaction`` (:meth:`_ChangeWriter.transaction`).

    It runs while the diff deletes the copies it replaces (:func:`_delete_replaced`): only rows still marked
    ``CARRIED`` are read and set, never the diff's own."""
    queue: list[list[Any]] = []
    last: str | None = None
    flush_rows = PROBE_CHUNK * in_flight

    def flush(rows: list[list[Any]]) -> None:
        gone = _check_blocks([rows[i : i + PROBE_CHUNK] for i in range(0, len(rows), PROBE_CHUNK)], probe, plan, pool)
        with transaction() as conn:
            for reason in {r for _, r in gone}:
                ids = [c for c, r in gone if r == reason]
                conn.execute(
                    sa.update(SyncChange)
                    .where(
                        SyncChange.sync_run_id == run_id,
                        SyncChange.reason == CARRIED,
                        _among(conn, SyncChange.customer_id, ids),
                    )
                    .values(status=ChangeStatus.NOT_FOUND.value, reason=reason, set_batch_no=None, unset_batch_no=None)
                )

    while not stop.is_set():
        q = (
            sa.select(SyncChange.customer_id, SyncChange.ext_id)
            .where(SyncChange.sync_run_id == run_id, SyncChange.reason == CARRIED)
            .order_by(SyncChange.customer_id)
            .limit(KEYS_PER_QUERY)
        )
        if last is not None:
            q = q.where(SyncChange.customer_id > last)
        with engine.connect() as conn:
            page = conn.execute(q).all()
        if not page:
            break
        last = page[-1][0]
        for cid, ext_id in page:
            row: list[Any] = [None] * len(_CHANGE_COLUMNS)
            row[_CUSTOMER_ID], row[_EXT_ID] = cid, ext_id
            queue.append(row)
        while len(queue) >= flush_rows and not stop.is_set():
            flush(queue[:flush_rows])
            del queue[:flush_rows]
    if queue and not stop.is_set():
        flush(queue)


def _number_rest(conn: Connection, run_id: int, numbering: _Numbering) -> None:
    """Number the pending parts still ``UNNUMBERED`` in extId order after those numbered already (one ``UPDATE``
    per kind, ranked by the database)."""
    for name in ("set_batch_no", "unset_batch_no"):
        src = SyncChange.__table__.alias("ranked_src")
        ranked = (
            sa.select(
                src.c.customer_id.label("cid"),
                (sa.func.row_number().over(order_by=(src.c.ext_id, src.c.customer_id)) - 1).label("n"),
            )
            .where(
                src.c.sync_run_id == run_id,
                src.c.status == ChangeStatus.PENDING.value,
                src.c[name] == UNNUMBERED,
            )
            .subquery("ranked")
        )
        start = numbering.set if name == "set_batch_no" else numbering.unset
        result = conn.execute(
            sa.update(SyncChange)
            .where(SyncChange.sync_run_id == run_id, SyncChange.customer_id == ranked.c.cid)
            .values({name: (ranked.c.n + start) // numbering.size})
        )
        added = result.rowcount or 0
        if name == "set_batch_no":
            numbering.set += added
        else:
            numbering.unset += added


def existing_plan(engine: Engine, run_id: int, settings: Settings) -> Plan | None:
    """The stored plan of a run that was planned already (None when it was not)."""
    with engine.connect() as conn:
        batches = conn.execute(
            sa.select(SyncBatch.id, SyncBatch.kind).where(SyncBatch.sync_run_id == run_id).order_by(SyncBatch.id)
        ).all()
        counts = conn.execute(sa.select(SyncRun.counts).where(SyncRun.id == run_id)).scalar_one()
    if not batches and not counts.get("planned"):
        return None
    plan = Plan(sync_run_id=run_id, **{k: v for k, v in counts.get("plan", {}).items() if k != "sync_run_id"})
    plan.groups = group_batches([b.id for b in batches], settings.sync.batches_per_task)
    return plan


def group_batches(batch_ids: list[int], per_task: int) -> list[list[int]]:
    """Split batch ids into groups for mapped load tasks, never more than MAX_MAPPED_TASKS groups."""
    if not batch_ids:
        return []
    per_task = max(per_task, math.ceil(len(batch_ids) / MAX_MAPPED_TASKS))
    return [batch_ids[i : i + per_task] for i in range(0, len(batch_ids), per_task)]


@fewer_gc_passes()
def build_plan(
    engine: Engine,
    run_id: int,
    settings: Settings,
    max_change_ratio: float,
    dry_run: bool,
    probe: Probe | None = None,
    export_path: str | None = None,
    resync: str | list[str] | None = None,
) -> Plan:
    """Diff, guard, set aside extIds Netmera does not know (``probe``) and (unless ``dry_run``) store the plan.

    The customers are the run's staging rows, or for a full refresh the export file itself (streamed: staging a
    million rows only to read them back would double the work), each diffed against its own snapshot row. See the
    module docstring for the steps and the memory bound.
    """
    if not dry_run:
        stored = existing_plan(engine, run_id, settings)
        if stored is not None:
            return stored
    clock = _Clock(plan_seconds := {})
    plan = Plan(sync_run_id=run_id, seconds=plan_seconds)
    plan.known = _known_customers(engine)
    _delete_changes(engine, run_id)  # what a plan that failed midway wrote
    probe = None if dry_run else probe
    numbering = _Numbering(settings.sync.batch_size)
    # the existence probe's calls go out sync.load_concurrency at a time
    in_flight = max(1, settings.sync.load_concurrency)
    pool = ThreadPoolExecutor(in_flight, thread_name_prefix="netmera-probe")
    writer = _ChangeWriter(engine, run_id)
    compared_chunks: Iterator[tuple[pd.DataFrame, dict[str, list[str]], _Compared]] | None = None
    checked = Plan(sync_run_id=run_id)  # the carried changes' check counts here: it runs in a thread of its own
    try:
        if probe is not None:
            writer.carry_over(
                lambda stop: _probe_carried(engine, run_id, probe, checked, pool, in_flight, stop, writer.transaction)
            )
        else:
            writer.carry_over(None)
        rows = export_chunk_rows(settings)
        chunks: Iterable[tuple[pd.DataFrame, dict[str, list[str]]]]
        if export_path is not None:
            chunks = ((frame, {}) for frame in iter_export(export_path, settings.optimove_attributes, rows))
        else:
            chunks = _staged_chunks(engine, run_id, rows)
        with engine.begin() as conn:  # every mapped name gets its bit before any set is encoded
            acc = _Diff(AttributeSets.load(conn, [a.netmera for a in settings.attributes]))
        queue: list[list[Any]] = []  # new and resynced rows waiting for a full probe call (fewer than PROBE_CHUNK)
        buffer = _CandidateBuffer(max(1, rows // 2))  # held between chunks: less than half a chunk

        # diffed sets whose existence answers are on their way: (rows, probed blocks, their answers, covered rows,
        # new fingerprints); each is written once the set after it was diffed, so the probe's calls overlap the diff
        outbox: deque[tuple[list[list[Any]], list[list[list[Any]]], list[Future[set[str] | None]], Any, Any]] = deque()

        def send() -> None:
            """The oldest set in ``outbox``: mark the customers its answers say are unknown, number its rows and
            hand them to the writer."""
            changes, fresh, answers, covered, refresh = outbox.popleft()
            for block, answer in zip(fresh, answers, strict=True):
                _mark(block, answer.result(), plan)
            clock.lap("probe")
            numbering.number(changes)
            if changes or covered or refresh:
                # waits for the write before ("store": the time waited); a dry run changes no fingerprint
                writer.write(changes, covered, [] if dry_run else refresh)
            clock.lap("store")

        def diff_and_write(ready: list[_Candidates], covered: list[str] | None) -> None:
            """Diff the sets ``ready``, ask the probe about their new and resynced customers and queue them for
            :func:`send`; ``covered``: customers whose changes are not to be carried over (the writer notes them)."""
            sets: list[_Candidates | None] = [*ready] or [None]  # none ready: the covered customers still go
            for cands in sets:
                changes, refresh = _diff_chunk(run_id, cands, settings, plan, acc) if cands is not None else ([], [])
                del cands
                clock.lap("diff")
                if export_path is None:  # staging: the changed customers' carried changes are not carried
                    covered = [r[_CUSTOMER_ID] for r in changes]
                fresh: list[list[list[Any]]] = []
                answers: list[Future[set[str] | None]] = []
                if probe is not None:  # whole calls only: the rest waits in ``queue`` for the next set's rows
                    queue.extend(r for r in changes if r[_FRESH])
                    changes = [r for r in changes if not r[_FRESH]]
                    while len(queue) >= PROBE_CHUNK:
                        block, queue[:PROBE_CHUNK] = queue[:PROBE_CHUNK], []
                        changes.extend(block)
                        fresh.append(block)
                        answers.append(pool.submit(_ask, block, probe))
                outbox.append((changes, fresh, answers, covered, refresh))
                del changes, refresh, fresh, answers
                covered = None
                while len(outbox) > (1 if probe is not None else 0):
                    send()

        def standing(customer_ids: list[str], raw_hashes: np.ndarray) -> np.ndarray:
            return writer.standing(customer_ids, raw_hashes, settings.ext_id)

        compared_chunks = _compare_ahead(engine, chunks, settings, bool(plan.known))
        for raw, changed_names, compared in compared_chunks:
            clock.lap("read")
            # no carried changes (a first sync): no new customer's key is worked out
            candidates, left = _select(
                raw, changed_names, compared, resync, plan, standing if writer.carries_over() else None
            )
            # a full refresh: the chunk's customers replace what would be carried for them (the export is the truth),
            # but for those whose carried change stands
            covered = compared.ids if export_path is not None else None
            if covered is not None and left:
                standing_ids = set(left)
                covered = [c for c in covered if c not in standing_ids]
            del raw, changed_names, compared
            diff_and_write(buffer.add(candidates), covered)
            del candidates, covered
        if buffer:
            diff_and_write([buffer.take()], None)
        while outbox:
            send()
        if queue:
            assert probe is not None
            _check(queue, probe, plan)
            numbering.number(queue)
            clock.lap("probe")
            writer.write(queue)
            del queue
        writer.wait()
        clock.lap("store")
        plan.carried_over = writer.carry_rest()  # waits for the carried changes' check
        plan.existence_unknown += checked.existence_unknown
        clock.lap("probe")
        plan.guard = guard_check(acc.data_changed, plan.known, max_change_ratio)
        netmera_of = {a.optimove: a.netmera for a in settings.attributes}
        plan.attributes_changed = {netmera_of[k]: v for k, v in sorted(acc.attr_counts.items()) if k in netmera_of}
        with engine.begin() as conn:
            conn.execute(
                sa.update(SyncChange)
                .where(SyncChange.sync_run_id == run_id, SyncChange.reason == CARRIED)
                .values(reason=None)
            )
            _number_rest(conn, run_id, numbering)
            plan.not_found = _count(conn, run_id, SyncChange.status == ChangeStatus.NOT_FOUND.value)
            size = numbering.size
            plan.set_entries, plan.unset_entries = numbering.set, numbering.unset
            plan.set_batches, plan.unset_batches = math.ceil(numbering.set / size), math.ceil(numbering.unset / size)
            if not dry_run:
                _store(conn, run_id, plan, settings)
        clock.lap("store")
    except BaseException:
        writer.close()  # no write may follow the delete
        _delete_changes(engine, run_id)  # a failure: nothing of this plan stays
        raise
    finally:
        writer.close()
        if compared_chunks is not None:
            compared_chunks.close()  # stops the comparison thread (a failure may leave one chunk compared ahead)
        pool.shutdown(cancel_futures=True)
    if dry_run:
        _delete_changes(engine, run_id)
    else:
        # PostgreSQL: the load's queries pick the run's rows by (run, batch number); statistics that predate this
        # run take it for a row or so, and then a batch's body was read through the (run, status) index, every
        # change of the run filtered for each batch (161 against 1.9 ms a body at 300k). After the plan is stored
        # and outside the block that deletes a failed plan's rows: a failure here leaves the stored plan whole.
        refresh_statistics(engine, SyncChange, SyncBatch)
        clock.lap("store")
    return plan


def guard_check(changed: int, known: int, max_change_ratio: float) -> dict[str, Any]:
    """The change guard: ``tripped`` when more than ``max_change_ratio`` of the known customers would change.

    A tripped guard does not stop the plan: the load waits for a person's decision (``sync.guard``).
    """
    ratio = changed / known if known else 0.0
    return {
        "changed": changed,
        "known": known,
        "ratio": round(ratio, 6),
        "max_change_ratio": max_change_ratio,
        "tripped": bool(known) and ratio > max_change_ratio,
    }


def _store(conn: Connection, run_id: int, plan: Plan, settings: Settings) -> None:
    """The batch rows (every batch of a kind is full but its last) and the run's plan counts."""
    size = settings.sync.batch_size
    batches = [
        {
            "sync_run_id": run_id,
            "kind": kind.value,
            "batch_no": no,
            "size": min(size, entries - no * size),
            "status": BatchStatus.PENDING.value,
        }
        for kind, entries in ((BatchKind.SET, plan.set_entries), (BatchKind.UNSET, plan.unset_entries))
        for no in range(math.ceil(entries / size))
    ]
    if batches:
        conn.execute(sa.insert(SyncBatch), batches)
    counts = conn.execute(sa.select(SyncRun.counts).where(SyncRun.id == run_id)).scalar_one()
    conn.execute(
        sa.update(SyncRun).where(SyncRun.id == run_id).values(counts={**counts, "planned": True, "plan": plan.counts()})
    )
    ids = conn.execute(
        sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id).order_by(SyncBatch.kind, SyncBatch.batch_no)
    ).scalars()
    plan.groups = group_batches(list(ids), settings.sync.batches_per_task)
