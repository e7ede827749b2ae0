"""The plan's change rows are stored exactly as given, whichever way they travel: SQLite's one-statement insert,
PostgreSQL's ``COPY`` in CSV, or the multi-row ``INSERT`` (a ``reason`` of ``""``). Texts that CSV or COPY treat
specially must come back unchanged: an empty string is not NULL, ``\\N`` and ``NULL`` are strings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.store import SyncChange, get_engine, migrate, queries
from optimove_netmera.sync import plan, runs

TRICKY = [
    "",
    "a,b",
    'quote"d',
    "back\\slash",
    "new\nline",
    "cr\rlf",
    "tab\t",
    " lead",
    "trail ",
    "\\.",
    "ünï 🚀",
    "NULL",
    "\\N",
    '"',
    ",",
    "\n\\.\n",
    "\r\n",
]


def stored(engine: sa.Engine, run_id: int) -> list[tuple[Any, ...]]:
    c = SyncChange
    columns = (c.customer_id, c.ext_id, c.new_hash, c.set_attrs, c.unset_attrs, c.present_bits, c.set_batch_no)
    with engine.connect() as conn:
        query = sa.select(*columns, c.unset_batch_no, c.status, c.reason, c.new_customer)
        query = query.where(c.sync_run_id == run_id)
        return sorted(tuple(r) for r in conn.execute(query.order_by(c.customer_id)))


def test_change_rows_are_stored_exactly_as_given(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "COPY_ROWS", 4)  # PostgreSQL: the rows go in several COPY statements
    migrate(db_url)
    engine = get_engine(db_url)
    run_id = runs.open_run(engine, "d", "r1", {}, dt.date(2026, 11, 30)).sync_run_id
    rows, expected = [], []
    for i, text in enumerate(TRICKY):
        attrs = {"name": text, "n": i}
        number = i if i % 3 else None
        row = [run_id, f"C{i:02d}{text}", text, f"h1:{i}", json.dumps(attrs), "[]", f"{i:x}", number, None]
        new = i % 2 == 0  # new_customer
        rows.append([*row, "pending", None, new, not new])  # the last item (fresh) is not stored
        expected.append((f"C{i:02d}{text}", text, f"h1:{i}", attrs, [], f"{i:x}", number, None, "pending", None, new))
    carried = [run_id, "Z", "Z", "h1:z", "{}", '["a"]', "0", None, 7, "not_found", "", True, False]  # reason ""
    with engine.begin() as conn:
        plan._insert_changes(conn, rows)
        plan._insert_changes(conn, [carried])
    expected.append(("Z", "Z", "h1:z", {}, ["a"], "0", None, 7, "not_found", "", True))
    assert stored(engine, run_id) == sorted(expected)
