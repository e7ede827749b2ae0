"""Extract changed customers from Optimove (or a full export file) into the staging table.

Incremental: ``customers/GetCustomerAttributeChangers`` per mapped attribute over the run's windows (see
:func:`change_windows`), paged to the end, every mapped attribute requested, unioned by CustomerID. Export: a CSV or
Parquet file streamed in chunks (:func:`iter_export`; the plan reads it, nothing is staged).
Either way the rows go to ``sync_staging`` (never to XCom); a retried extract starts its staging afresh.

A staged row's ``attributes`` is ``{"v": {optimove attribute: raw value}, "c": [attributes reported changed]}``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.settings import Settings
from optimove_netmera.store.models import CustomerSnapshot, SyncStaging
from optimove_netmera.store.queries import upsert
from optimove_netmera.sync.runs import INITIAL_SINCE, clear_staging

log = logging.getLogger(__name__)
CUSTOMER_ID_COLUMNS = ("CustomerID", "Client_ID", "ClientID", "customer_id")
# What one customer-attribute cell of a chunk costs while it is planned (raw string, coerced value, hash, the change
# row's dict and its JSON), measured on 20 attributes with tracemalloc plus Arrow's pool; sizes the chunks.
BYTES_PER_CELL = 600
MIN_CHUNK_ROWS = 100


def _write(
    conn: Connection,
    run_id: int,
    rows: Iterable[tuple[str, dict[str, Any], str | None]],
    mode: Literal["merge", "replace", "first"] = "merge",
) -> int:
    """Stage rows. A customer staged already: ``merge`` keeps the latest values and the union of changed names,
    ``replace`` keeps the latest row, ``first`` keeps the first row (every copy carries the same values)."""
    batch = [
        {"sync_run_id": run_id, "customer_id": cid, "attributes": {"v": values, "c": [changed] if changed else []}}
        for cid, values, changed in rows
    ]
    if not batch:
        return 0
    if mode == "merge":
        existing = conn.execute(
            sa.select(SyncStaging.customer_id, SyncStaging.attributes).where(
                SyncStaging.sync_run_id == run_id, SyncStaging.customer_id.in_([b["customer_id"] for b in batch])
            )
        )
        old = {r.customer_id: r.attributes for r in existing}
        for row in batch:
            if row["customer_id"] in old:
                merged = set(old[row["customer_id"]].get("c", [])) | set(row["attributes"]["c"])
                row["attributes"]["c"] = sorted(merged)
    upsert(
        conn,
        SyncStaging.__table__,
        batch,
        conflict_columns=["sync_run_id", "customer_id"],
        update_columns=[] if mode == "first" else ["attributes"],
    )
    return len(batch)


def change_windows(since: dt.date, until: dt.date, initial: bool = False) -> list[tuple[dt.date, dt.date]]:
    """The changers windows that find every customer whose value at the end of ``until`` differs from what was
    delivered, i.e. the value at the end of ``since`` (the previous window's last day).

    ``GetCustomerAttributeChangers`` compares the value at the *start* of StartDate with the value at the end of
    EndDate, so ``[since, until]`` alone misses a value changed on ``since`` and reverted later (it compares the
    value before the change with the value after the revert, while Netmera holds the changed value).
    ``[since + 1, until]`` compares the end of ``since`` with the end of ``until``: exactly the stale customers.
    ``[since, until]`` is kept as well, so a change recorded on ``since`` after the previous run read it is
    still found. Customers listed without a real change are dropped by the diff. An initial run has one window.
    """
    if initial or since >= until:
        return [(since, until)]
    return [(since, until), (since + dt.timedelta(days=1), until)]


def extract_changes(
    engine: Engine,
    run_id: int,
    client: OptimoveClient,
    settings: Settings,
    since: dt.date,
    until: dt.date,
    initial: bool = False,
) -> dict[str, int]:
    """Stage every customer whose mapped attributes changed since ``since`` (see :func:`change_windows`).

    The attributes are fetched concurrently (``sync.extract_concurrency`` threads sharing the client's rate
    limiter, so Optimove's limit, not page processing, paces the extraction); staging writes are serialised. An
    ``initial`` extraction (every customer is new, so every copy of a customer is the same) stages each customer
    once and skips the copies the other attributes' pages repeat.
    """
    clear_staging(engine, run_id)
    names = settings.optimove_attributes
    lock = threading.Lock()
    mode: Literal["merge", "first"] = "first" if initial else "merge"

    seen: set[str] = set()  # initial mode: every copy of a customer carries the same values; stage it once

    windows = change_windows(since, until, initial)

    def one(attribute: str) -> int:
        read = 0
        skip = seen if initial else ()
        pages = (
            page
            for start, end in windows
            for page in client.iter_customer_attribute_changers(attribute, start, end, names, skip_customers=skip)
        )
        for page in pages:
            read += len(page)
            with lock:
                if initial:
                    rows = [(c.customer_id, c.attributes, None) for c in page if c.customer_id not in seen]
                    seen.update(r[0] for r in rows)
                else:
                    rows = [(c.customer_id, c.attributes, attribute) for c in page]
                if rows:
                    with engine.begin() as conn:
                        _write(conn, run_id, rows, mode)
        return read

    workers = max(1, min(settings.sync.extract_concurrency, len(names)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optimove-extract") as pool:
        rows_read = sum(pool.map(one, names))
    return {"rows_read": rows_read, "fetched": staged_count(engine, run_id)}


def extract_resync(
    engine: Engine,
    run_id: int,
    client: OptimoveClient,
    settings: Settings,
    until: dt.date,
    resync: str | list[str],
    full_window: bool = True,
) -> dict[str, int]:
    """Stage the current values of the customers to resync (``"all"`` or CustomerIDs) next to the changers.

    A changers window from ``since`` (2000-01-01) lists every customer whose value is not empty (nothing was set
    before), with every mapped attribute: that is each customer's full current row (``full_window``; an initial
    extraction has read it already). A resynced customer found in no page has every mapped attribute empty: it is
    staged with empty values (``"all"``: every customer in the snapshot), so what Netmera holds for it is unset.
    """
    wanted = None if resync == "all" else set(resync)
    names = settings.optimove_attributes
    lock = threading.Lock()

    def one(attribute: str) -> int:
        read = 0
        for page in client.iter_customer_attribute_changers(attribute, INITIAL_SINCE, until, names):
            read += len(page)
            rows = [(c.customer_id, c.attributes, None) for c in page if wanted is None or c.customer_id in wanted]
            if rows:
                with lock, engine.begin() as conn:
                    _write(conn, run_id, rows, "merge")
        return read

    rows_read = 0
    if full_window:
        workers = max(1, min(settings.sync.extract_concurrency, len(names)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optimove-resync") as pool:
            rows_read = sum(pool.map(one, names))
    with engine.connect() as conn:
        q = sa.select(SyncStaging.customer_id).where(SyncStaging.sync_run_id == run_id)
        staged = set(conn.execute(q).scalars())
        if wanted is None:
            wanted = set(conn.execute(sa.select(CustomerSnapshot.customer_id)).scalars())
    empty = {name: None for name in names}
    missing = sorted(wanted - staged)
    for start in range(0, len(missing), 5000):
        with engine.begin() as conn:
            _write(conn, run_id, [(cid, dict(empty), None) for cid in missing[start : start + 5000]], "first")
    return {"resync_rows_read": rows_read, "resync_empty": len(missing), "fetched": staged_count(engine, run_id)}


def _customer_column(columns: Sequence[str], path: Path) -> str:
    for name in CUSTOMER_ID_COLUMNS:
        if name in columns:
            return name
    raise ValueError(f"export {path} has no customer id column: expected one of {', '.join(CUSTOMER_ID_COLUMNS)}")


def _columns(file: Path) -> list[str]:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        return list(pq.ParquetFile(file).schema_arrow.names)
    if suffix in (".csv", ".txt"):
        return list(pd.read_csv(file, nrows=0, dtype=str).columns)
    raise ValueError(f"export {file}: unsupported file type {suffix!r}; use .csv or .parquet")


def _check_export(path: str | Path, names: Sequence[str]) -> tuple[Path, str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"export file {file} not found (param export_path)")
    columns = _columns(file)
    id_col = _customer_column(columns, file)
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"export {file} lacks mapped attribute column(s): {', '.join(missing)}")
    return file, id_col


def _arrow_chunks(file: Path, columns: list[str], rows: int) -> Iterator[pa.Table]:
    """The export's ``columns`` in tables of exactly ``rows`` rows (the last one shorter), read as a stream.

    Parquet is read batch by batch; a CSV through Arrow's streaming reader with every column as a string (an
    empty cell is ``""``, never NULL, as pandas' ``keep_default_na=False``).
    """
    if file.suffix.lower() == ".parquet":
        batches: Iterable[pa.RecordBatch] = pq.ParquetFile(file).iter_batches(batch_size=rows, columns=columns)
    else:
        batches = pacsv.open_csv(
            file,
            read_options=pacsv.ReadOptions(block_size=8 << 20),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types=dict.fromkeys(columns, pa.string()), strings_can_be_null=False
            ),
        )
    buffered: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        buffered.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(buffered)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            buffered, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buffered)


def _ids(column: pa.ChunkedArray) -> pd.Series:
    """Customer ids as stripped strings."""
    return column.to_pandas().astype("str").str.strip()


def _id_hashes(file: Path, id_col: str, rows: int) -> Iterator[np.ndarray]:
    """A 64-bit hash of each row's customer id (stripped as :func:`_ids` strips it), chunk by chunk.

    Text ids are stripped and hashed in Arrow, as bytes (no Python string is made); ids of another type
    are hashed as :func:`_ids` renders them."""
    for table in _arrow_chunks(file, [id_col], rows):
        column = table.column(0)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            stripped = pc.utf8_trim_whitespace(column.cast(pa.large_string()))
            yield pd.util.hash_array(stripped.cast(pa.large_binary()).to_numpy(zero_copy_only=False), categorize=False)
        else:
            yield pd.util.hash_pandas_object(_ids(column), index=False).to_numpy()


def _superseded(file: Path, id_col: str, rows: int) -> tuple[int, np.ndarray]:
    """(rows in the export, sorted positions of rows that a later row of the same customer replaces).

    One pass over the id column keeps a 64-bit hash of each id (8 bytes a row, sorted in place; never the rows);
    only when two hashes are equal does a second pass collect those candidates' ids to tell real duplicates from
    collisions.
    """
    parts = list(_id_hashes(file, id_col, rows))
    ordered = np.concatenate(parts) if parts else np.array([], dtype=np.uint64)
    del parts
    total = len(ordered)
    ordered.sort()
    candidates = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not candidates.size:
        return total, np.array([], dtype=np.int64)
    positions: dict[str, list[int]] = {}
    offset = 0
    for table, hashes in zip(_arrow_chunks(file, [id_col], rows), _id_hashes(file, id_col, rows), strict=True):
        hit = np.flatnonzero(np.isin(hashes, candidates))
        ids = _ids(table.column(0)).to_numpy()
        for i in hit.tolist():
            positions.setdefault(ids[i], []).append(offset + i)
        offset += table.num_rows
    superseded = sorted(p for ps in positions.values() for p in ps[:-1])
    return total, np.array(superseded, dtype=np.int64)


def iter_export(path: str | Path, names: Sequence[str], rows: int) -> Iterator[pd.DataFrame]:
    """A CSV/Parquet customer export as frames of at most ``rows`` customers (strings; index = customer id, one
    column per attribute in ``names``), streamed: the file is never held whole. A customer listed twice keeps its
    last row (the earlier rows are skipped, see :func:`_superseded`)."""
    file, id_col = _check_export(path, names)
    _, superseded = _superseded(file, id_col, rows)
    offset = 0
    for table in _arrow_chunks(file, [id_col, *names], rows):
        frame = table.to_pandas()
        if other := {c: "str" for c, kind in frame.dtypes.items() if kind != "str"}:  # text columns are already
            frame = frame.astype(other)
        frame[id_col] = frame[id_col].str.strip()
        lo, hi = np.searchsorted(superseded, [offset, offset + len(frame)])
        if hi > lo:
            frame = frame.drop(index=frame.index[superseded[lo:hi] - offset])
        offset += table.num_rows
        frame = frame.set_index(id_col)
        frame.index.name = "customer_id"
        yield frame


def export_chunk_rows(settings: Settings) -> int:
    """Customers a chunk of the export (or of the staging table) holds within ``sync.memory_budget_mb``."""
    cells = max(1, len(settings.attributes))
    return max(MIN_CHUNK_ROWS, settings.sync.memory_budget_mb * 2**20 // (cells * BYTES_PER_CELL))


def extract_export(engine: Engine, run_id: int, path: str | Path, settings: Settings) -> dict[str, int]:
    """A full refresh: check the export (columns, readability) and count its rows and customers.

    The plan streams the file itself (see :func:`iter_export`), so nothing is staged for this mode.
    """
    clear_staging(engine, run_id)
    file, id_col = _check_export(path, settings.optimove_attributes)
    rows, superseded = _superseded(file, id_col, export_chunk_rows(settings))
    return {"rows_read": rows, "fetched": rows - len(superseded)}


def staged_count(engine: Engine, run_id: int) -> int:
    """How many customers are staged for the run."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(SyncStaging).where(SyncStaging.sync_run_id == run_id)
        ).scalar_one()
