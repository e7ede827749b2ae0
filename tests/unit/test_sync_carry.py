"""The plan carries the last successful run's not-found changes over, each part to send as it was (SQLite and
PostgreSQL). The expected rows are written out here by hand."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import SyncChange, SyncRun
from optimove_netmera.sync import plan
from sqlalchemy.engine import Engine


def test_not_found_changes_are_carried_with_the_parts_they_had_to_send(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        ids = [
            conn.execute(
                sa.insert(SyncRun).values(dag_id="d", dag_run_id=name, status=status).returning(SyncRun.id)
            ).scalar_one()
            for name, status in (("older", "success"), ("last", "success"), ("failed", "failed"), ("this", "running"))
        ]
        older, last, failed, this = ids

        def change(run: int, cid: str, set_attrs: Any, unset: Any, status: str = "not_found") -> dict[str, Any]:
            return {
                "sync_run_id": run,
                "customer_id": cid,
                "ext_id": f"x{cid}",
                "new_hash": f"h-{cid}",
                "set_attrs": set_attrs,
                "unset_attrs": unset,
                "present_bits": format(3 * len(set_attrs), "x"),  # a set of its own a row
                "status": status,
                "reason": "extId unknown to Netmera",
                "new_customer": cid == "set-only",  # the plan found no snapshot row for it
            }

        conn.execute(
            sa.insert(SyncChange),
            [
                change(last, "set-only", {"name": "Ann", "age": 3}, []),
                change(last, "unset-only", {}, ["age"]),
                change(last, "both", {"name": "Bo"}, ["city"]),
                change(last, "delivered", {"name": "Cy"}, [], status="delivered"),
                change(older, "older", {"name": "Di"}, []),  # an older run's: not the latest successful one
                change(failed, "failed", {"name": "Ed"}, []),  # a later run, but it failed
            ],
        )
    with engine.begin() as conn:
        assert plan._previous_run(conn, this) == last
        carried = [row for page in plan._carried_pages(conn, last) for row in page]
        assert sorted(carried) == [(c, f"x{c}", f"h-{c}") for c in ("both", "set-only", "unset-only")]
        assert plan._carry_over(conn, this, last) == 3
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SyncChange).where(SyncChange.sync_run_id == this)).all()
    columns = ("ext_id", "new_hash", "set_attrs", "unset_attrs", "present_bits", "set_batch_no", "unset_batch_no")
    columns += ("new_customer",)
    got = {r.customer_id: (*(getattr(r, c) for c in columns), r.status, r.reason) for r in rows}
    pending, n = ("pending", plan.CARRIED), plan.UNNUMBERED
    assert got == {
        "set-only": (
            "xset-only",
            "h-set-only",
            {"name": "Ann", "age": 3},
            [],
            "6",
            n,
            None,
            True,
            *pending,
        ),
        "unset-only": ("xunset-only", "h-unset-only", {}, ["age"], "0", None, n, False, *pending),
        "both": ("xboth", "h-both", {"name": "Bo"}, ["city"], "3", n, n, False, *pending),
    }


def test_a_write_deletes_only_its_customers_rows_of_this_run(db_url: str) -> None:
    """The ids go to the database as one value; on SQLite an id with a NUL (which ``json_each`` would cut short, to
    customer "C") takes the keyed path. A carried copy is deleted whether or not its check set it not found yet; rows
    of other runs and other customers' rows stay."""
    migrate(db_url)
    engine = get_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        this, other = (
            conn.execute(
                sa.insert(SyncRun).values(dag_id="d", dag_run_id=name, status="running").returning(SyncRun.id)
            ).scalar_one()
            for name in ("this", "other")
        )
        rows = [
            (this, "A", plan.CARRIED),
            (this, "B", plan.EXT_ID_UNKNOWN),  # checked already
            (this, "C", plan.CARRIED),
            (other, "A", plan.CARRIED),
        ]
        if sqlite:  # PostgreSQL's text refuses a NUL
            rows.append((this, "C\x00X", plan.CARRIED))
        conn.execute(
            sa.insert(SyncChange),
            [
                {"sync_run_id": run, "customer_id": cid, "ext_id": cid, "new_hash": "h", "set_attrs": {}, "reason": why}
                for run, cid, why in rows
            ],
        )
    listed = ["A", "B", "Z", *(["C\x00X"] if sqlite else [])]
    with engine.begin() as conn:
        assert plan._delete_replaced(conn, this, listed) == 2 + sqlite
        assert plan._delete_replaced(conn, this, []) == 0
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(SyncChange.sync_run_id, SyncChange.customer_id)).all())
    assert left == {(this, "C"), (other, "A")}


def test_the_customers_the_diff_replaced_are_not_carried(db_url: str) -> None:
    """The writer copies the last run's not-found changes first; a write that replaces some deletes their copies in
    the transaction that inserts their new rows (a new row for "A" would collide with its copy). On SQLite an id
    with a NUL is deleted by its own keyed query. Ids that were not carried change nothing."""
    migrate(db_url)
    engine = get_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    nul = ["C\x00X"] if sqlite else []  # PostgreSQL's text refuses a NUL
    with engine.begin() as conn:
        last, this = (
            conn.execute(
                sa.insert(SyncRun).values(dag_id="d", dag_run_id=name, status=status).returning(SyncRun.id)
            ).scalar_one()
            for name, status in (("last", "success"), ("this", "running"))
        )
        conn.execute(
            sa.insert(SyncChange),
            [
                {"sync_run_id": last, "customer_id": cid, "ext_id": cid, "new_hash": "h", "set_attrs": {"a": 1}}
                | {"status": "not_found"}
                for cid in ["A", "B", "C", *nul]
            ],
        )
    new_a = [this, "A", "A", "h2", '{"a":2}', "[]", '["a"]', plan.UNNUMBERED, None, "pending", None, False]
    writer = plan._ChangeWriter(engine, this)
    try:
        writer.carry_over(None)
        writer.write([new_a], ["A", "Z", *nul])
        assert writer.carry_rest() == 2
    finally:
        writer.close()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncChange.customer_id, SyncChange.set_attrs, SyncChange.reason).where(
                SyncChange.sync_run_id == this
            )
        ).all()
    assert sorted(rows) == [("A", {"a": 2}, None), ("B", {"a": 1}, plan.CARRIED), ("C", {"a": 1}, plan.CARRIED)]


def run_with_copies(db_url: str, ids: list[str]) -> tuple[Engine, int]:
    """A fresh state DB and a running run that holds a carried copy (pending, a set part to number) of each of
    ``ids``."""
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        this = conn.execute(
            sa.insert(SyncRun).values(dag_id="d", dag_run_id="this", status="running").returning(SyncRun.id)
        ).scalar_one()
        conn.execute(
            sa.insert(SyncChange),
            [
                {"sync_run_id": this, "customer_id": cid, "ext_id": cid, "new_hash": "h", "set_attrs": {"a": 1}}
                | {"set_batch_no": plan.UNNUMBERED, "reason": plan.CARRIED}
                for cid in ids
            ],
        )
    return engine, this


def test_the_check_never_sets_a_row_the_diff_wrote_meanwhile(db_url: str) -> None:
    """The carried changes' check runs beside the diff: the diff may replace a copy the check has read and is asking
    about. Its answer then sets nothing; the diff's row stands (here the diff's own probe found the user)."""
    engine, this = run_with_copies(db_url, ["A", "B"])
    new_a = [this, "A", "A", "h2", '{"a":2}', "[]", '["a"]', 0, None, "pending", None, False]

    def probe(ext_ids: list[str]) -> set[str]:
        with engine.begin() as conn:  # the diff replaces A while the check waits for this answer
            plan._delete_replaced(conn, this, ["A"])
            plan._insert_changes(conn, [new_a])
        return {"A", "B"}

    counts = plan.Plan(sync_run_id=this)
    with ThreadPoolExecutor(1) as pool:
        plan._probe_carried(engine, this, probe, counts, pool, 1, threading.Event(), engine.begin)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncChange.customer_id, SyncChange.status, SyncChange.set_batch_no, SyncChange.reason)
        ).all()
    assert sorted(rows) == [("A", "pending", 0, None), ("B", "not_found", None, plan.EXT_ID_UNKNOWN)]


def test_the_check_writes_only_between_the_writers_transactions(db_url: str) -> None:
    """The check and the writer both touch carried copies: their transactions go one at a time (concurrent ones
    could lock rows in opposite orders, a deadlock on PostgreSQL). The check's answer waits for the write."""
    engine, this = run_with_copies(db_url, ["A"])

    def status() -> str:
        with engine.connect() as conn:
            return conn.execute(sa.select(SyncChange.status)).scalar_one()

    writer = plan._ChangeWriter(engine, this)
    checked = threading.Event()

    def check() -> None:
        with ThreadPoolExecutor(1) as pool:
            plan._probe_carried(
                engine, this, set, plan.Plan(sync_run_id=this), pool, 1, threading.Event(), writer.transaction
            )
        checked.set()

    try:
        with writer.transaction():  # a write in progress
            thread = threading.Thread(target=check)
            thread.start()
            assert not checked.wait(1) and status() == "pending"
        assert checked.wait(60)
        thread.join()
        assert status() == "not_found"
    finally:
        writer.close()
