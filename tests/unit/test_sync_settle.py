"""Delivery is recorded by the batches: the counts derive it, and the report's settle pass catches a customer whose
set and unset batches finished at the same moment."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from optimove_netmera.http import ApiError
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import CustomerSnapshot, SyncBatch, SyncChange, SyncRun
from optimove_netmera.sync.load import change_counts, delivered_changes, load_batches, load_summary, settle
from sync_plan_helpers import open_run


def test_settle_advances_changes_whose_batches_are_all_delivered(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        run_id, later = (
            conn.execute(sa.insert(SyncRun).values(dag_id="d", dag_run_id=r).returning(SyncRun.id)).scalar_one()
            for r in ("r1", "r2")
        )
        conn.execute(
            sa.insert(SyncBatch),
            [
                {"sync_run_id": run_id, "kind": "set", "batch_no": 0, "status": "delivered", "size": 5},
                {"sync_run_id": run_id, "kind": "unset", "batch_no": 0, "status": "delivered", "size": 2},
                {"sync_run_id": run_id, "kind": "set", "batch_no": 1, "status": "failed", "size": 1},
                {"sync_run_id": run_id, "kind": "unset", "batch_no": 1, "status": "in_flight", "size": 1},
            ],
        )
        base = {
            "sync_run_id": run_id,
            "set_attrs": {"a": 1},
            "unset_attrs": [],
            "present_bits": "1",
            "status": "pending",
            "set_batch_no": 0,
            "unset_batch_no": None,
        }
        both = {"unset_batch_no": 0, "unset_attrs": ["b"]}
        conn.execute(
            sa.insert(SyncChange),
            [
                {**base, **both, "customer_id": "both", "ext_id": "both", "new_hash": "h1:1"},
                {**base, "customer_id": "done", "ext_id": "done", "new_hash": "h1:2", "status": "delivered"},
                {**base, "customer_id": "open", "ext_id": "open", "new_hash": "h1:3", "set_batch_no": 1},
                {**base, "customer_id": "half", "ext_id": "half", "new_hash": "h1:4", "unset_batch_no": 1},
                {**base, "customer_id": "single", "ext_id": "single", "new_hash": "h1:5"},
                {**base, **both, "customer_id": "newer", "ext_id": "newer", "new_hash": "h1:6"},
                {**base, "customer_id": "gone", "ext_id": "gone", "new_hash": "h1:7", "status": "not_found",
                 "set_batch_no": None},
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(CustomerSnapshot),
            [  # "single" advanced by its load task; "newer" by a later run: neither is touched
                {"customer_id": "single", "ext_id": "single", "attr_hash": "h1:5", "sync_run_id": run_id},
                {"customer_id": "newer", "ext_id": "newer", "attr_hash": "h1:later", "sync_run_id": later},
            ],
        )
    expected = {"delivered": 4, "pending": 2, "not_found": 1}  # both, done, single, newer | open, half | gone
    with engine.connect() as conn:
        assert change_counts(conn, run_id) == expected
        delivered = conn.execute(sa.select(SyncChange.customer_id).where(*delivered_changes(run_id))).scalars()
        assert sorted(delivered) == ["both", "done", "newer", "single"]
    assert load_summary(engine, run_id)["changes"] == expected

    assert settle(engine, run_id) == 1
    with engine.connect() as conn:
        snap = dict(conn.execute(sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash)).all())
        status = dict(conn.execute(sa.select(SyncChange.customer_id, SyncChange.status)).all())
    assert snap == {"both": "h1:1", "single": "h1:5", "newer": "h1:later"}
    assert status == {  # the rows are not rewritten: the batches record the delivery
        "both": "pending", "done": "delivered", "open": "pending", "half": "pending", "single": "pending",
        "newer": "pending", "gone": "not_found",
    }  # fmt: skip
    assert settle(engine, run_id) == 0
    with engine.connect() as conn:
        assert change_counts(conn, run_id) == expected
        assert change_counts(conn, later) == {}


class _Netmera:
    """Takes profile writes, refusing the unset calls (a 503) while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, list[str]]] = []

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        if self.down and call == "unsetProfileAttributes":
            raise ApiError("unset failed", service="netmera", status=503, ambiguous=True)
        entries = json.loads(body)
        assert len(entries) == count
        self.sent.append((call.removesuffix("ProfileAttributes"), [e["extId"] for e in entries]))
        return count


def test_a_customer_advances_once_every_part_is_delivered(db_url: str) -> None:
    engine, run_id = open_run(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SyncBatch),
            [
                {"sync_run_id": run_id, "kind": "set", "batch_no": 0, "size": 2},
                {"sync_run_id": run_id, "kind": "unset", "batch_no": 0, "size": 2},
            ],
        )
        row = {"sync_run_id": run_id, "set_attrs": {"a": 1}, "unset_attrs": [], "present_bits": "1",
               "set_batch_no": None, "unset_batch_no": None}  # fmt: skip
        conn.execute(
            sa.insert(SyncChange),
            [
                {**row, "customer_id": "set", "ext_id": "e-set", "new_hash": "h:1", "set_batch_no": 0},
                {**row, "customer_id": "both", "ext_id": "e-both", "new_hash": "h:2", "set_batch_no": 0,
                 "unset_batch_no": 0, "unset_attrs": ["b"]},
                {**row, "customer_id": "unset", "ext_id": "e-unset", "new_hash": "h:3", "set_attrs": {},
                 "unset_batch_no": 0, "unset_attrs": ["b"], "present_bits": "0"},
            ],
        )  # fmt: skip
        ids = conn.execute(sa.select(SyncBatch.id).order_by(SyncBatch.id)).scalars().all()

    def snapshot() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash)).all())

    netmera = _Netmera()
    with pytest.raises(ApiError):
        load_batches(engine, run_id, ids, netmera)  # type: ignore[arg-type]
    assert netmera.sent == [("set", ["e-both", "e-set"])]
    assert snapshot() == {"set": "h:1"}  # "both" waits for its unset part
    assert load_summary(engine, run_id)["changes"] == {"delivered": 1, "pending": 2}
    assert settle(engine, run_id) == 0

    netmera.down = False
    assert load_batches(engine, run_id, ids, netmera)["delivered"] == 2  # type: ignore[arg-type]
    assert netmera.sent[1:] == [("unset", ["e-both", "e-unset"])]  # the set batch is not sent again
    assert snapshot() == {"set": "h:1", "both": "h:2", "unset": "h:3"}
    assert load_summary(engine, run_id)["changes"] == {"delivered": 3}
