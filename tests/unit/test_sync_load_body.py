"""A profile request's body, built by the state database: every entry of the batch, its extId quoted as JSON, in extId
order, read from the index in that order (nothing sorted: migration 0007)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import SyncBatch, SyncChange, SyncRun
from optimove_netmera.sync.load import _body_sql, load_batches

# ASCII, so that code-point order is every collation's order; a quote and a backslash must come out escaped
EXT_IDS = [f"E{i:03d}" for i in range(40)] + ['E"quoted', "E\\slash", "A-first", "z-last"]


class _Capturing:
    """Takes every profile write and keeps its body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes, int]] = []

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        self.bodies.append((call, body, count))
        return count


def _plan(db_url: str) -> tuple[Any, int]:
    """A run with one set batch and one unset batch over EXT_IDS, its rows inserted in a shuffled order."""
    migrate(db_url)
    engine = get_engine(db_url)
    shuffled = random.Random(7).sample(EXT_IDS, len(EXT_IDS))
    with engine.begin() as conn:
        run_id = conn.execute(sa.insert(SyncRun).values(dag_id="d", dag_run_id="r").returning(SyncRun.id)).scalar_one()
        conn.execute(
            sa.insert(SyncBatch),
            [{"sync_run_id": run_id, "kind": kind, "batch_no": 0, "size": len(EXT_IDS)} for kind in ("set", "unset")],
        )
        conn.execute(
            sa.insert(SyncChange),
            [
                {
                    "sync_run_id": run_id,
                    "customer_id": f"c-{ext_id}",
                    "ext_id": ext_id,
                    "new_hash": "h",
                    "set_attrs": {"n": i},
                    "unset_attrs": ["gone"],
                    "present_attrs": ["n"],
                    "set_batch_no": 0,
                    "unset_batch_no": 0,
                }
                for i, ext_id in enumerate(shuffled)
            ],
        )
    return engine, run_id


def test_a_body_lists_the_batch_in_ext_id_order(db_url: str) -> None:
    engine, run_id = _plan(db_url)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id)).scalars().all()
    client = _Capturing()
    assert load_batches(engine, run_id, ids, client)["batches_sent"] == 2  # type: ignore[arg-type]
    calls = {call: (json.loads(body), count) for call, body, count in client.bodies}
    assert set(calls) == {"setProfileAttributes", "unsetProfileAttributes"}
    for call, (entries, count) in calls.items():
        assert count == len(entries) == len(EXT_IDS)
        assert [e["extId"] for e in entries] == sorted(EXT_IDS), call
    profiles = {e["extId"]: e["profile"] for e in calls["setProfileAttributes"][0]}
    assert profiles['E"quoted'] == {"n": random.Random(7).sample(EXT_IDS, len(EXT_IDS)).index('E"quoted')}
    assert all(e["profile"] == ["gone"] for e in calls["unsetProfileAttributes"][0])


def _plan_nodes(conn: sa.Connection, sql: str, params: dict[str, Any]) -> list[str]:
    """The nodes of the statement's query plan (SQLite: the lines of ``EXPLAIN QUERY PLAN``; PostgreSQL: node types)."""
    if conn.dialect.name == "sqlite":
        return [row[-1] for row in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"), params)]
    # a handful of rows would be read whole and sorted; a batch's 1000 are not: take the index as a batch would
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
    plan = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) {sql}"), params).scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(f"{node['Node Type']} {node.get('Index Name', '')}".strip())
        stack.extend(node.get("Plans", []))
    return nodes


@pytest.mark.parametrize(("part", "column"), [("set_attrs", "set_batch_no"), ("unset_attrs", "unset_batch_no")])
def test_a_body_is_read_in_index_order_with_nothing_sorted(db_url: str, part: str, column: str) -> None:
    engine, run_id = _plan(db_url)
    with engine.begin() as conn:
        nodes = _plan_nodes(conn, _body_sql(conn.dialect.name, part, column), {"run": run_id, "no": 0})
    assert not [n for n in nodes if "TEMP B-TREE" in n or n.startswith(("Sort", "Incremental Sort"))], nodes
    assert any(f"ix_sync_changes_sync_run_id_{column}_ext_id" in n for n in nodes), nodes
