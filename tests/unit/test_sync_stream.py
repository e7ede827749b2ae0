"""The plan holds a chunk of customers at a time, never the tenant, and still plans exactly (SQLite and PostgreSQL).

The customer count is ~20 chunks. The chunk source (the export reader, the staging reader) is wrapped so every frame
it hands out is tracked while alive, and ``transform`` records the largest frame it coerced: materialising the
customers anywhere (reading the whole export, concatenating chunks, diffing all at once) breaks the bound. The
expected plan is computed here from the generated data, not by the code under test.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from optimove_netmera.settings import Settings, load_settings
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import CustomerSnapshot, SyncBatch, SyncChange, SyncRun, SyncStaging
from optimove_netmera.sync import extract, plan
from sqlalchemy.engine import Engine
from sync_plan_helpers import customers, deliver, values

BATCH = 100
CHUNKS = 20


def settings() -> Settings:
    return load_settings(overlay={"sync": {"memory_budget_mb": 8, "batch_size": BATCH}})


class Tracker:
    """Rows alive among the frames a chunk source handed out, and the most ever alive at once."""

    def __init__(self) -> None:
        self.alive = self.peak = self.frames = 0

    def track(self, frame: pd.DataFrame) -> None:
        self.frames += 1
        self.alive += len(frame)
        self.peak = max(self.peak, self.alive)
        weakref.finalize(frame, self.release, len(frame))

    def release(self, n: int) -> None:
        self.alive -= n


@pytest.fixture
def instrumented(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {"tracker": Tracker(), "transformed": 0, "coerced": []}
    real_export, real_staged, real_transform = plan.iter_export, plan._staged_chunks, plan.transform

    def export(*args: Any, **kwargs: Any) -> Iterator[pd.DataFrame]:
        for frame in real_export(*args, **kwargs):
            seen["tracker"].track(frame)
            yield frame

    def staged(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for frame, names in real_staged(*args, **kwargs):
            seen["tracker"].track(frame)
            yield frame, names

    def transform(raw: pd.DataFrame, mapping: Any) -> Any:
        seen["transformed"] = max(seen["transformed"], len(raw))
        seen["coerced"].append(len(raw))
        return real_transform(raw, mapping)

    monkeypatch.setattr(plan, "iter_export", export)
    monkeypatch.setattr(plan, "_staged_chunks", staged)
    monkeypatch.setattr(plan, "transform", transform)
    return seen


def new_run(engine: Engine, n: int) -> int:
    with engine.begin() as conn:
        return conn.execute(
            sa.insert(SyncRun).values(dag_id="d", dag_run_id=f"r{n}", status="running").returning(SyncRun.id)
        ).scalar_one()


def test_first_sync_of_many_chunks_holds_one_chunk_and_plans_exactly(
    db_url: str, tmp_path: Path, instrumented: dict[str, Any]
) -> None:
    s = settings()
    chunk = extract.export_chunk_rows(s)
    n = CHUNKS * chunk
    frame = customers(s, n)
    dup = frame.iloc[[5]].copy()  # C0000005 again at the very end (another chunk), with a later first name
    dup["FirstName"] = "Later"
    dup["CustomerID"] = " C0000005\t"  # the same customer: ids are stripped
    path = tmp_path / "customers.parquet"
    pd.concat([frame, dup], ignore_index=True).to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    run_id = new_run(engine, 1)
    assert extract.extract_export(engine, run_id, path, s) == {"rows_read": n + 1, "fetched": n}
    probed: list[list[str]] = []
    unknown = {f"C{i:07d}" for i in range(0, n, 7)}

    def probe(ext_ids: list[str]) -> set[str]:
        probed.append(ext_ids)
        return unknown & set(ext_ids)

    p = plan.build_plan(engine, run_id, s, 1.0, False, probe, str(path))

    tracker = instrumented["tracker"]
    assert tracker.frames >= CHUNKS
    assert instrumented["transformed"] <= chunk
    assert tracker.peak <= 2 * chunk, f"{tracker.peak} customer rows alive at once; a chunk is {chunk}"
    sendable = n - len(unknown)
    assert (p.fetched, p.new, p.changed, p.unchanged, p.not_found) == (n, n, n, 0, len(unknown))
    assert (p.set_entries, p.set_batches, p.unset_entries) == (sendable, math.ceil(sendable / BATCH), 0)
    assert [len(c) for c in probed] == [1000] * (n // 1000) + ([n % 1000] if n % 1000 else [])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncChange.ext_id, SyncChange.set_batch_no, SyncChange.status, SyncChange.set_attrs).where(
                SyncChange.sync_run_id == run_id
            )
        ).all()
        sizes = dict(conn.execute(sa.select(SyncBatch.batch_no, SyncBatch.size)).all())
    assert len(rows) == n
    by_id = {r.ext_id: r for r in rows}
    assert by_id["C0000005"].set_attrs["name"] == "Later"  # the export's last row of a customer wins
    assert {r.ext_id for r in rows if r.status == "not_found" and r.set_batch_no is None} == unknown
    numbers = sorted(r.set_batch_no for r in rows if r.status == "pending")
    assert numbers == [i // BATCH for i in range(sendable)]  # every batch full but the last
    assert sizes == {no: min(BATCH, sendable - no * BATCH) for no in range(p.set_batches)}


def test_a_changed_share_is_diffed_per_chunk_and_a_tripped_guard_is_recorded(
    db_url: str, tmp_path: Path, instrumented: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings()
    chunk = extract.export_chunk_rows(s)
    n = CHUNKS * chunk
    path = tmp_path / "customers.parquet"
    customers(s, n).to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    first = new_run(engine, 1)
    plan.build_plan(engine, first, s, 1.0, False, None, str(path))
    deliver(engine, first)

    changed = set(range(3, n, 20))  # 5%, spread over every chunk
    extra = 50  # and a few new customers, whom the probe must check
    second = customers(s, n + extra, version=1, changed=changed)
    blanked = {f"C{i:07d}" for i in sorted(changed)[:7]}  # a first name emptied: unset, still a change of it
    second.loc[second["CustomerID"].isin(blanked), "FirstName"] = ""
    second.to_parquet(path)
    new_ids = [f"C{i:07d}" for i in range(n, n + extra)]
    probed: list[list[str]] = []

    def probe(ext_ids: list[str]) -> set[str]:
        probed.append(ext_ids)
        return set()

    tripped = new_run(engine, 2)
    held = plan.build_plan(engine, tripped, s, 0.04, False, probe, str(path))
    # A tripped guard is recorded and the plan completed (the load waits for a person's decision, sync.guard).
    assert held.guard == {
        "changed": len(changed) + extra,
        "known": n,
        "ratio": round((len(changed) + extra) / n, 6),
        "max_change_ratio": 0.04,
        "tripped": True,
    }
    assert probed == [new_ids] and held.changed == len(changed) + extra
    probed.clear()

    run_id = new_run(engine, 3)
    instrumented["tracker"].__init__()
    instrumented["coerced"].clear()
    monkeypatch.setattr(plan, "PROBE_CHUNK", 20)  # calls of 20 extIds: the 50 new ones take 3
    p = plan.build_plan(engine, run_id, s, 0.06, False, probe, str(path))
    assert (p.known, p.changed, p.new, p.unchanged) == (n, len(changed) + extra, extra, n - len(changed))
    # Only the changed and new customers are coerced, each once, gathered across chunks into sets of about half a
    # chunk: a set a chunk would cost ~21 coercions of ~40 customers, each nearly the price of a full chunk.
    coerced = instrumented["coerced"]
    assert sum(coerced) == len(changed) + extra
    assert len(coerced) <= math.ceil((len(changed) + extra) / (chunk // 2)) + 1, coerced
    # every changed or new customer changes every attribute (set, or for the blanked first names unset)
    assert p.attributes_changed == {a.netmera: len(changed) + extra for a in s.attributes}
    assert p.unset_entries == len(blanked)
    # only the new customers, in full calls: a call per 20 changes would ask about changed known customers' slots
    assert probed == [new_ids[:20], new_ids[20:40], new_ids[40:]]
    assert instrumented["tracker"].peak <= 2 * chunk
    with engine.connect() as conn:
        query = sa.select(SyncChange.customer_id, SyncChange.new_customer).where(SyncChange.sync_run_id == run_id)
        planned = dict(conn.execute(query).all())
    assert set(planned) == {f"C{i:07d}" for i in changed} | set(new_ids)
    # only the customers the snapshot lacks are flagged new: the load inserts their rows and upserts the others'
    assert {c for c, new in planned.items() if new} == set(new_ids)
    deliver(engine, run_id)
    with engine.connect() as conn:
        query = sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.sync_run_id)
        advanced = dict(conn.execute(query).all())
    assert len(advanced) == n + extra
    assert {c for c, run in advanced.items() if run == run_id} == set(planned)


def test_staged_customers_are_read_a_chunk_at_a_time(db_url: str, instrumented: dict[str, Any]) -> None:
    s = settings()
    chunk = extract.export_chunk_rows(s)
    n = CHUNKS * chunk
    migrate(db_url)
    engine = get_engine(db_url)
    run_id = new_run(engine, 1)
    frame = customers(s, n).set_index("CustomerID")
    names = list(frame.columns)
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            part = frame.iloc[start : start + 5000]
            conn.execute(
                sa.insert(SyncStaging),
                [
                    {
                        "sync_run_id": run_id,
                        "customer_id": cid,
                        # every third customer carries the attribute names Optimove reported changed
                        "attributes": {"v": dict(zip(names, row, strict=True))}
                        | ({"c": [names[0]]} if int(cid[1:]) % 3 == 0 else {}),
                    }
                    for cid, row in zip(part.index, part.itertuples(index=False), strict=True)
                ],
            )
    del frame
    p = plan.build_plan(engine, run_id, s, 1.0, False, None, None)
    assert instrumented["tracker"].frames >= CHUNKS
    assert instrumented["tracker"].peak <= 2 * chunk
    assert instrumented["transformed"] <= chunk
    assert (p.fetched, p.changed, p.set_entries) == (n, n, n)
    reported = len(range(0, n, 3))  # those count the reported name only; the others every attribute they set
    first = s.attributes[0]
    assert first.optimove == names[0]
    assert p.attributes_changed == {a.netmera: n if a is first else n - reported for a in s.attributes}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CustomerSnapshot)).scalar_one() == 0


def exported_run(db_url: str, tmp_path: Path, s: Settings, chunks: int) -> tuple[Engine, int, Path]:
    path = tmp_path / "customers.parquet"
    customers(s, chunks * extract.export_chunk_rows(s)).to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    run_id = new_run(engine, 1)
    extract.extract_export(engine, run_id, path, s)
    return engine, run_id, path


def change_rows(engine: Engine, run_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(SyncChange).where(SyncChange.sync_run_id == run_id)
        ).scalar_one()


def test_a_plan_failing_while_a_chunk_is_written_leaves_nothing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diff fails while the writer thread still writes the chunk before: the plan waits for that write before it
    deletes what it wrote, so no row lands after the delete."""
    s = settings()
    engine, run_id, path = exported_run(db_url, tmp_path, s, chunks=3)
    writing, deleted = threading.Event(), threading.Event()
    failed: list[bool] = []
    real_insert, real_delete, real_diff = plan._insert_changes, plan._delete_changes, plan._diff_chunk

    def insert(conn: Any, rows: list[Any]) -> None:
        writing.set()
        deleted.wait(3)  # held until the plan's delete, or 3 s: a delete that does not wait for it comes first
        real_insert(conn, rows)

    def diff(*args: Any, **kwargs: Any) -> Any:
        if writing.is_set():  # the second chunk: the first one's write is in progress
            failed.append(True)
            raise RuntimeError("diff failed")
        return real_diff(*args, **kwargs)

    def delete(engine_: Engine, run_id_: int) -> None:
        real_delete(engine_, run_id_)
        if failed:
            deleted.set()

    monkeypatch.setattr(plan, "_insert_changes", insert)
    monkeypatch.setattr(plan, "_diff_chunk", diff)
    monkeypatch.setattr(plan, "_delete_changes", delete)
    with pytest.raises(RuntimeError, match="diff failed"):
        plan.build_plan(engine, run_id, s, 1.0, False, None, str(path))
    assert failed and deleted.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("plan-writer")]
    assert change_rows(engine, run_id) == 0


def test_a_failed_write_fails_the_plan_and_leaves_nothing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings()
    engine, run_id, path = exported_run(db_url, tmp_path, s, chunks=3)
    writes: list[int] = []
    real_insert = plan._insert_changes

    def insert(conn: Any, rows: list[Any]) -> None:
        writes.append(len(rows))
        if len(writes) == 2:
            raise RuntimeError("database went away")
        real_insert(conn, rows)

    monkeypatch.setattr(plan, "_insert_changes", insert)
    with pytest.raises(RuntimeError, match="database went away"):
        plan.build_plan(engine, run_id, s, 1.0, False, None, str(path))
    assert change_rows(engine, run_id) == 0
    with engine.connect() as conn:  # and no batches: the plan was not stored
        assert conn.execute(sa.select(sa.func.count()).select_from(SyncBatch)).scalar_one() == 0


def test_an_unknown_customer_whose_data_did_not_change_keeps_its_carried_change(
    db_url: str, tmp_path: Path, instrumented: dict[str, Any]
) -> None:
    """A full refresh reads every customer, also the ones Netmera did not know last run: those whose raw values and
    extId are the ones their carried change was planned from keep that change (carried over, checked again, not
    coerced, not counted as changed); a changed or resynced one is diffed again, and so is everyone once the extId
    transform changes."""
    s = settings()
    n = 3 * extract.export_chunk_rows(s)
    ids = [f"C{i:07d}" for i in range(n)]
    unknown = set(ids[::10])
    path = tmp_path / "customers.parquet"
    customers(s, n).to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    asked: list[str] = []
    registered: set[str] = set()

    def probe(ext_ids: list[str]) -> set[str]:
        asked.extend(ext_ids)
        return {e for e in ext_ids if e.removeprefix("x-") in unknown - registered}

    first = new_run(engine, 1)
    plan.build_plan(engine, first, s, 1.0, False, probe, str(path))
    deliver(engine, first)

    known_changed = {i for i in range(1, n, 40) if ids[i] not in unknown}
    unknown_changed = {i for i in range(0, n, 30) if ids[i] in unknown}
    resynced, now_known = ids[20], ids[50]  # both unknown last run, their data unchanged
    customers(s, n, version=1, changed=known_changed | unknown_changed).to_parquet(path)
    registered.add(now_known)
    asked.clear()
    instrumented["coerced"].clear()
    second = new_run(engine, 2)
    p = plan.build_plan(engine, second, s, 1.0, False, probe, str(path), resync=[resynced])

    diffed = len(known_changed) + len(unknown_changed) + 1  # the resynced one is diffed again
    assert sum(instrumented["coerced"]) == diffed  # the unchanged unknown ones are not coerced again
    assert (p.changed, p.new, p.resynced) == (diffed, len(unknown_changed) + 1, 1)
    assert p.carried_over == len(unknown) - len(unknown_changed) - 1
    assert p.guard["changed"] == diffed  # a carried change is no change in the data
    # every unknown extId is asked about: the carried ones by their check, the diffed ones in the stream (the check
    # runs beside the diff, so it may have asked about one the diff then replaced)
    assert set(asked) == unknown
    assert {e for e, k in Counter(asked).items() if k > 1} <= {ids[i] for i in unknown_changed} | {resynced}
    assert p.not_found == len(unknown) - 1  # the one who registered is sent
    with engine.connect() as conn:
        rows = {(r.sync_run_id, r.customer_id): r for r in conn.execute(sa.select(SyncChange))}
    stood = unknown - {ids[i] for i in unknown_changed} - {resynced}
    for cid in stood:
        before, now = rows[(first, cid)], rows[(second, cid)]
        assert (now.ext_id, now.new_hash, now.set_attrs) == (before.ext_id, before.new_hash, before.set_attrs)
    assert rows[(second, now_known)].status == "pending" and rows[(second, now_known)].set_batch_no is not None
    assert {cid for (run, cid), r in rows.items() if run == second and r.status == "not_found"} == unknown - {now_known}
    for i in unknown_changed:
        assert rows[(second, ids[i])].set_attrs["name"] == values(i, "string", 1)

    deliver(engine, second)
    moved = load_settings(overlay={"sync": {"memory_budget_mb": 8, "batch_size": BATCH}, "ext_id": {"prefix": "x-"}})
    asked.clear()
    instrumented["coerced"].clear()
    third = new_run(engine, 3)
    p = plan.build_plan(engine, third, moved, 1.0, False, probe, str(path))
    assert p.carried_over == 0 and sum(instrumented["coerced"]) == len(unknown) - 1  # every unknown one, again
    assert Counter(a for a in asked if a.startswith("x-")) == Counter(f"x-{c}" for c in unknown - {now_known})
    with engine.connect() as conn:
        ext_ids = conn.execute(sa.select(SyncChange.ext_id).where(SyncChange.sync_run_id == third)).scalars().all()
    assert sorted(ext_ids) == sorted(f"x-{c}" for c in unknown - {now_known})


def test_a_carried_change_whose_check_is_not_answered_stays_unknown_and_is_counted(db_url: str, tmp_path: Path) -> None:
    """The carried changes are checked in a thread of their own: an answer without the unknown list (the probe
    returns None) leaves them not found, with the reason, and the plan counts them as existence unknown."""
    s = settings()
    n = 50
    path = tmp_path / "customers.parquet"
    customers(s, n).to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    first = new_run(engine, 1)
    plan.build_plan(engine, first, s, 1.0, False, set, str(path))  # everyone unknown
    deliver(engine, first)
    second = new_run(engine, 2)
    p = plan.build_plan(engine, second, s, 1.0, False, lambda ext_ids: None, str(path))
    assert (p.carried_over, p.changed, p.not_found, p.existence_unknown, p.set_entries) == (n, 0, n, n, 0)
    with engine.connect() as conn:
        reasons = conn.execute(sa.select(SyncChange.reason).where(SyncChange.sync_run_id == second)).scalars().all()
    assert reasons == [plan.EXISTENCE_UNKNOWN] * n
