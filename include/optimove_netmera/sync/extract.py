"""Extract changed customers from Optimove (or a full export file) into the staging table.

Incremental: ``customers/GetCustomerAttributeChangers`` once per mapped attribute over the run's window, paged to
the end, every mapped attribute requested, unioned by CustomerID. Export: a CSV or Parquet file read in chunks.
Either way the rows go to ``sync_staging`` (never to XCom); a retried extract starts its staging afresh.

A staged row's ``attributes`` is ``{"v": {optimove attribute: raw value}, "c": [attributes reported changed]}``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.settings import Settings
from optimove_netmera.store.models import SyncStaging
from optimove_netmera.store.queries import upsert

log = logging.getLogger(__name__)
CUSTOMER_ID_COLUMNS = ("CustomerID", "Client_ID", "ClientID", "customer_id")


def _write(
    conn: Connection, run_id: int, rows: Iterable[tuple[str, dict[str, Any], str | None]], merge: bool = True
) -> int:
    """Upsert staged rows; a customer seen again keeps the latest values and (``merge``) the union of changed names."""
    batch = [
        {"sync_run_id": run_id, "customer_id": cid, "attributes": {"v": values, "c": [changed] if changed else []}}
        for cid, values, changed in rows
    ]
    if not batch:
        return 0
    existing = (
        {}
        if not merge
        else {
            r.customer_id: r.attributes
            for r in conn.execute(
                sa.select(SyncStaging.customer_id, SyncStaging.attributes).where(
                    SyncStaging.sync_run_id == run_id, SyncStaging.customer_id.in_([b["customer_id"] for b in batch])
                )
            )
        }
    )
    for row in batch:
        old = existing.get(row["customer_id"])
        if old:
            row["attributes"]["c"] = sorted(set(old.get("c", [])) | set(row["attributes"]["c"]))
    upsert(
        conn,
        SyncStaging.__table__,
        batch,
        conflict_columns=["sync_run_id", "customer_id"],
        update_columns=["attributes"],
    )
    return len(batch)


def clear_staging(engine: Engine, run_id: int) -> None:
    """Drop whatever an earlier attempt of this run staged."""
    with engine.begin() as conn:
        conn.execute(sa.delete(SyncStaging).where(SyncStaging.sync_run_id == run_id))


def extract_changes(
    engine: Engine, run_id: int, client: OptimoveClient, settings: Settings, since: dt.date, until: dt.date
) -> dict[str, int]:
    """Stage every customer whose mapped attributes changed in [since, until]; returns counts."""
    clear_staging(engine, run_id)
    names = settings.optimove_attributes
    rows_read = 0
    for attribute in names:
        for page in client.iter_customer_attribute_changers(attribute, since, until, names):
            rows_read += len(page)
            with engine.begin() as conn:
                _write(conn, run_id, ((c.customer_id, c.attributes, attribute) for c in page))
    return {"rows_read": rows_read, "fetched": staged_count(engine, run_id)}


def _customer_column(columns: Sequence[str], path: Path) -> str:
    for name in CUSTOMER_ID_COLUMNS:
        if name in columns:
            return name
    raise ValueError(f"export {path} has no customer id column: expected one of {', '.join(CUSTOMER_ID_COLUMNS)}")


def _chunks(path: Path, chunk_rows: int) -> Iterable[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    elif suffix in (".csv", ".gz", ".txt"):
        yield from pd.read_csv(path, chunksize=chunk_rows, dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"export {path}: unsupported file type {suffix!r}; use .csv or .parquet")


def extract_export(engine: Engine, run_id: int, path: str | Path, settings: Settings) -> dict[str, int]:
    """Stage every customer of a CSV/Parquet export (a full refresh); returns counts."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"export file {file} not found (param export_path)")
    clear_staging(engine, run_id)
    names = settings.optimove_attributes
    rows_read = 0
    for chunk in _chunks(file, settings.sync.export_chunk_rows):
        id_col = _customer_column(list(chunk.columns), file)
        missing = [n for n in names if n not in chunk.columns]
        if missing:
            raise ValueError(f"export {file} lacks mapped attribute column(s): {', '.join(missing)}")
        chunk = chunk[[id_col, *names]].astype(object).where(chunk[[id_col, *names]].notna(), None)
        records = chunk.to_dict("records")
        rows_read += len(records)
        with engine.begin() as conn:
            for start in range(0, len(records), 10_000):
                part = records[start : start + 10_000]
                _write(conn, run_id, ((str(r.pop(id_col)).strip(), r, None) for r in part), merge=False)
    return {"rows_read": rows_read, "fetched": staged_count(engine, run_id)}


def staged_count(engine: Engine, run_id: int) -> int:
    """How many customers are staged for the run."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(SyncStaging).where(SyncStaging.sync_run_id == run_id)
        ).scalar_one()
