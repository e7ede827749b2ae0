"""A load inserts the snapshot rows of the customers its plan found new and upserts the others' (PostgreSQL, one
statement a group); a customer planned as new whose row is there after all (another run delivered it since the
plan) is upserted, never lost and never a failed load (SQLite and PostgreSQL). Expected rows are written out here."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from optimove_netmera.store.models import CustomerSnapshot, SyncBatch, SyncChange
from optimove_netmera.sync import load
from sqlalchemy.engine import Engine
from sync_plan_helpers import open_run


class _Netmera:
    """Takes every profile write."""

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        assert len(json.loads(body)) == count
        return count


def planned(db_url: str, new: dict[str, bool], batch_of: dict[str, int]) -> tuple[Engine, int, list[int]]:
    """A run whose plan sets attribute ``a`` of each customer in ``new`` (flagged new as given), in the set batch
    ``batch_of[customer]``; its engine, id and batch ids."""
    engine, run_id = open_run(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SyncChange),
            [
                {"sync_run_id": run_id, "customer_id": c, "ext_id": f"x{c}", "new_hash": f"new:{c}",
                 "set_attrs": {"a": c}, "unset_attrs": [], "present_bits": "1", "set_batch_no": batch_of[c],
                 "new_customer": is_new}
                for c, is_new in new.items()
            ],
        )  # fmt: skip
        numbers = sorted(set(batch_of.values()))
        conn.execute(
            sa.insert(SyncBatch),
            [
                {"sync_run_id": run_id, "kind": "set", "batch_no": b, "size": list(batch_of.values()).count(b)}
                for b in numbers
            ],
        )
        ids = conn.execute(sa.select(SyncBatch.id).order_by(SyncBatch.batch_no)).scalars().all()
    return engine, run_id, list(ids)


def stored_before(engine: Engine, customers: list[str], run_id: int) -> None:
    """Snapshot rows for ``customers`` as run ``run_id`` delivered them (an old hash, no attribute)."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(CustomerSnapshot),
            [
                {
                    "customer_id": c,
                    "ext_id": f"x{c}",
                    "attr_hash": f"old:{c}",
                    "present_bits": "0",
                    "sync_run_id": run_id,
                }
                for c in customers
            ],
        )


def snapshot(engine: Engine) -> dict[str, tuple[str, str, str, int]]:
    s = CustomerSnapshot
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.customer_id, s.ext_id, s.attr_hash, s.present_bits, s.sync_run_id)).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_new_and_known_customers_advance_in_one_group_and_are_counted(db_url: str) -> None:
    new = {"A": True, "B": False, "C": True, "D": False}
    engine, run_id, ids = planned(db_url, new, {"A": 0, "B": 0, "C": 1, "D": 1})
    stored_before(engine, ["B", "D"], 0)
    counts = load.load_batches(engine, run_id, ids, _Netmera(), concurrency=2)  # type: ignore[arg-type]
    assert counts["delivered"] == 4 and counts["batches_sent"] == 2
    assert snapshot(engine) == {c: (f"x{c}", f"new:{c}", "1", run_id) for c in "ABCD"}


def test_a_customer_planned_new_whose_row_exists_is_upserted(db_url: str) -> None:
    """C was new when the plan compared it; another run has delivered it since. Its group's insert fails on C's row
    and the group is upserted: every customer of it advances, C's row takes this run's values, and the other
    group (no such customer) is recorded as usual."""
    new = {"A": True, "B": False, "C": True, "D": True}
    engine, run_id, ids = planned(db_url, new, {"A": 0, "B": 0, "C": 0, "D": 1})
    stored_before(engine, ["B"], 0)
    stored_before(engine, ["C"], run_id + 1)
    counts = load.load_batches(engine, run_id, ids, _Netmera(), concurrency=1)  # type: ignore[arg-type]
    assert counts["delivered"] == 4 and counts["batches_sent"] == 2
    assert snapshot(engine) == {c: (f"x{c}", f"new:{c}", "1", run_id) for c in "ABCD"}
    with engine.connect() as conn:
        statuses = conn.execute(sa.select(SyncBatch.status).where(SyncBatch.sync_run_id == run_id)).scalars().all()
    assert statuses == ["delivered", "delivered"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_failure_other_than_a_row_found_is_not_retried_as_an_upsert(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a unique violation means a customer planned as new has a row already; any other integrity error of the
    group's statement (here a NOT NULL one) fails the load, the batch left in flight for the retry to send again."""
    engine, run_id, ids = planned(db_url, {"A": True}, {"A": 0})
    broken = sa.text("INSERT INTO customer_snapshot (customer_id) VALUES ('A') RETURNING 1")
    monkeypatch.setattr(load, "_split_advance", lambda conn, run, *where: broken)
    with pytest.raises(sa.exc.IntegrityError, match="not-null"):
        load.load_batches(engine, run_id, ids, _Netmera())  # type: ignore[arg-type]
    assert snapshot(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(sa.select(SyncBatch.status)).scalars().all() == ["in_flight"]
