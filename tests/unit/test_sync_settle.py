"""The report's settle pass: a customer whose set and unset batches finished at the same moment is not lost."""

from __future__ import annotations

import sqlalchemy as sa
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import CustomerSnapshot, SyncBatch, SyncChange, SyncRun
from optimove_netmera.sync.load import settle


def test_settle_advances_changes_whose_batches_are_all_delivered(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        run_id = conn.execute(sa.insert(SyncRun).values(dag_id="d", dag_run_id="r").returning(SyncRun.id)).scalar_one()
        conn.execute(
            sa.insert(SyncBatch),
            [
                {"sync_run_id": run_id, "kind": "set", "batch_no": 0, "status": "delivered", "size": 2},
                {"sync_run_id": run_id, "kind": "unset", "batch_no": 0, "status": "delivered", "size": 1},
                {"sync_run_id": run_id, "kind": "set", "batch_no": 1, "status": "failed", "size": 1},
            ],
        )
        base = {
            "sync_run_id": run_id,
            "set_attrs": {"a": 1},
            "unset_attrs": [],
            "present_attrs": ["a"],
            "status": "pending",
            "unset_batch_no": None,
        }
        conn.execute(
            sa.insert(SyncChange),
            [
                {**base, "customer_id": "both", "ext_id": "both", "new_hash": "h1:1", "set_batch_no": 0,
                 "unset_batch_no": 0, "unset_attrs": ["b"]},
                {**base, "customer_id": "done", "ext_id": "done", "new_hash": "h1:2", "set_batch_no": 0,
                 "status": "delivered"},
                {**base, "customer_id": "open", "ext_id": "open", "new_hash": "h1:3", "set_batch_no": 1},
            ],
        )  # fmt: skip
    assert settle(engine, run_id) == 1
    with engine.connect() as conn:
        snap = dict(conn.execute(sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash)).all())
        status = dict(conn.execute(sa.select(SyncChange.customer_id, SyncChange.status)).all())
    assert snap == {"both": "h1:1"}
    assert status == {"both": "delivered", "done": "delivered", "open": "pending"}
    assert settle(engine, run_id) == 0
