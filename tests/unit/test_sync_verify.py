"""The verify step's pieces: value comparison, mapping fingerprint, first-run rule, sample; the report's notices."""

from __future__ import annotations

import datetime as dt
import random

import sqlalchemy as sa
from optimove_netmera.settings import AttributeMapping
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import ChangeStatus, SyncChange, SyncRun
from optimove_netmera.sync import runs, verify

DAY = dt.date(2026, 11, 30)


def test_kept_compares_values_the_way_netmera_returns_them() -> None:
    assert verify.kept(12.5, 12.5, "number") and verify.kept(7.0, 7, "number")
    assert not verify.kept("7", 7, "number") and not verify.kept(True, 1, "number")
    assert verify.kept(True, True, "boolean") and not verify.kept("true", True, "boolean")
    assert not verify.kept(1, True, "boolean")
    assert verify.kept(1764460800000, 1764460800000, "date")
    assert verify.kept("2025-11-30T00:00:00Z", 1764460800000, "date")
    assert not verify.kept("2025-11-29", 1764460800000, "date")
    assert verify.kept("Ada", "Ada", "string") and not verify.kept(None, "Ada", "string")


def test_mapping_fingerprint_is_the_names_and_types_in_any_order() -> None:
    a = AttributeMapping(optimove="FirstName", netmera="name", type="string")
    b = AttributeMapping(optimove="LTV", netmera="ltv", type="number")
    assert verify.mapping_fingerprint([a, b]) == verify.mapping_fingerprint([b, a])
    retyped = AttributeMapping(optimove="LTV", netmera="ltv", type="string")
    assert verify.mapping_fingerprint([a, b]) != verify.mapping_fingerprint([a, retyped])


def test_first_run_of_a_mapping_and_the_sample(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    first = runs.open_run(engine, "d", "r1", {}, DAY).sync_run_id
    assert verify.is_first_run(engine, first, "m1:x")
    runs.record_counts(engine, first, {"verify": {"mapping": "m1:x"}})
    runs.finish_run(engine, first, runs.SyncRunStatus.SUCCESS)
    second = runs.open_run(engine, "d", "r2", {}, DAY).sync_run_id
    assert not verify.is_first_run(engine, second, "m1:x")
    assert verify.is_first_run(engine, second, "m1:y")  # another mapping: its first run
    with engine.begin() as conn:  # a failed run of a mapping does not count
        conn.execute(sa.update(SyncRun).where(SyncRun.id == first).values(status="failed"))
    assert verify.is_first_run(engine, second, "m1:x")

    rows = [
        {
            "sync_run_id": second,
            "customer_id": f"C{i:03d}",
            "ext_id": f"C{i:03d}",
            "new_hash": "h",
            # "rare" is also a value of three earlier customers: not a key, they must not take the limit's places
            "set_attrs": {"name": "rare" if i in (1, 2, 3) else "x"} | ({"rare": 1} if i == 77 else {}),
            "status": ChangeStatus.DELIVERED.value,
        }
        for i in range(100)
    ]
    only_unset = {"customer_id": "C100", "ext_id": "C100", "set_attrs": {}, "unset_attrs": ["name"]}
    rows.append({**rows[0], **only_unset})  # a write that sets nothing is not a profile write to read back
    with engine.begin() as conn:
        conn.execute(sa.insert(SyncChange), rows)
    sample, written = verify.select_sample(engine, second, 10)
    assert written == 100 and len(sample) == 10 and len({w.customer_id for w in sample} - {"C100"}) == 10
    assert all(w.set_attrs == next(r["set_attrs"] for r in rows if r["customer_id"] == w.customer_id) for w in sample)
    writes = sorted(r["customer_id"] for r in rows if r["set_attrs"])  # customer order
    ranks = sorted(random.Random(second).sample(range(len(writes)), 10))  # seeded by the run: the same each time
    assert [w.customer_id for w in sample] == [writes[k] for k in ranks]
    everyone, _ = verify.select_sample(engine, second, 500)  # more asked than written: every write, once
    assert [w.customer_id for w in everyone] == writes
    assert [w.customer_id for w in verify.written_with(engine, second, "rare")] == ["C077"]  # read back too
    assert [w.customer_id for w in verify.written_with(engine, second, "name")] == ["C000", "C001", "C002"]
    assert verify.written_with(engine, second, "nobody") == [] and verify.written_with(engine, second, "nam") == []


def test_report_notices_name_the_count_and_the_next_step() -> None:
    assert runs.undelivered_notice({"changes": {"delivered": 3}}) is None
    assert runs.undelivered_notice({"changes": {"not_found": 4}}) == (
        "4 customers not delivered: unknown to Netmera, carried to the next run; they are sent once they register"
    )
    assert runs.dead_letter_notice({"dead_lettered": 0}) is None
    notice = runs.dead_letter_notice({"dead_lettered": 2})
    assert notice is not None and notice.startswith("2 customers dead-lettered") and "Replay" in notice


def test_the_report_line_states_the_undelivered_and_the_verify_outcome() -> None:
    report = {
        "sync_run_id": 3,
        "status": "success",
        "window": ["2026-11-29", "2026-11-30"],
        "mode": "incremental",
        "dry_run": False,
        "counts": {
            "changes": {"delivered": 5, "not_found": 2},
            "verify": {"profiles_read": 5, "first_run": False, "checked": {"name": 5}, "not_kept": {}},
        },
        "phase_seconds": {},
        "error": None,
    }
    text = runs.format_report(report)
    assert "2 customers not delivered: unknown to Netmera, carried to the next run" in text
    assert "verified: 5 profiles read back (sample)" in text
