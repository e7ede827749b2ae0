"""A group of delivered batches that could not be recorded fails the load: the task is never green over batches
whose delivery is not on record, and its retry sends them again (the writes are idempotent) and records them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.store.models import CustomerSnapshot, SyncBatch, SyncChange
from optimove_netmera.sync import load
from sync_plan_helpers import open_run

BATCHES = 3


class _Netmera:
    """Takes every profile write and remembers the extIds of each request."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        self.sent.append([e["extId"] for e in json.loads(body)])
        return count


def test_a_group_not_recorded_fails_the_load_and_the_retry_resends_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, run_id = open_run(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SyncChange),
            [
                {"sync_run_id": run_id, "customer_id": f"c{b}", "ext_id": f"e{b}", "new_hash": f"h:{b}",
                 "set_attrs": {"a": b}, "unset_attrs": [], "present_bits": "1", "set_batch_no": b}
                for b in range(BATCHES)
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(SyncBatch),
            [{"sync_run_id": run_id, "kind": "set", "batch_no": b, "size": 1} for b in range(BATCHES)],
        )
        ids = conn.execute(sa.select(SyncBatch.id).order_by(SyncBatch.batch_no)).scalars().all()

    real, lost = load._complete, []

    def lost_once(conn: Any, run: int, batches: Any) -> int:  # the first recording of batch 0 fails
        if not lost and any(b.batch_no == 0 for b in batches):
            lost.append(True)
            raise sa.exc.OperationalError("UPDATE sync_batches ...", {}, Exception("server closed the connection"))
        return real(conn, run, batches)

    monkeypatch.setattr(load, "_complete", lost_once)
    netmera = _Netmera()
    with pytest.raises(sa.exc.OperationalError):
        load.load_batches(engine, run_id, ids, netmera, concurrency=1)  # type: ignore[arg-type]

    def state() -> tuple[dict[int, str], list[str]]:
        with engine.connect() as conn:
            batches = dict(conn.execute(sa.select(SyncBatch.batch_no, SyncBatch.status)).tuples().all())
            snapshot = conn.execute(sa.select(CustomerSnapshot.customer_id)).scalars().all()
        return batches, sorted(snapshot)

    batches, snapshot = state()
    assert netmera.sent[0] == ["e0"] and batches[0] == "in_flight"  # sent, its delivery not on record
    # the batches after it were cancelled, or sent and recorded by the next group: a customer advanced only then
    assert snapshot == [f"c{b}" for b, status in sorted(batches.items()) if status == "delivered"]
    assert "c0" not in snapshot

    counts = load.load_batches(engine, run_id, ids, netmera, concurrency=1)  # type: ignore[arg-type]  # the retry
    assert state() == ({b: "delivered" for b in range(BATCHES)}, [f"c{b}" for b in range(BATCHES)])
    assert [ext for request in netmera.sent for ext in request].count("e0") == 2  # sent again: nothing lost
    assert counts["batches_skipped"] + counts["batches_sent"] == BATCHES
