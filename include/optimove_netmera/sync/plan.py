"""Diff the staged customers against the snapshot and plan the Netmera batches.

Only customers whose fingerprint differs from the snapshot's (or who are new) go on. For each, ``set_attrs`` are
the valid non-empty values and ``unset_attrs`` the attributes delivered before that are empty or invalid now: a value
that cannot be coerced is treated as empty on every path (incremental, full refresh, resync), so what Netmera holds
is a function of Optimove's current data, never of what was valid before. Set and unset
parts are batched separately (at most ``batch_size`` extIds a batch, in extId order).

Netmera silently drops writes for extIds it does not know, so customers new to the snapshot are first checked with
the ``probe`` (``untagUsers`` + ``checkExistence`` of a tag nobody carries: no side effect, the answer lists the
unknown extIds; 1000 extIds a call). Unknown customers are not batched: they are counted as ``not_found`` and
carried over to the next run, which checks them again. A probe answer that does not say who is unknown (the probe
returns None: Netmera's answer carried no ``notExist`` list) is never read as "all known": that chunk's customers
are handled exactly like unknown ones (not sent, counted as ``existence_unknown``, carried over, checked again).
Every batch therefore holds only sendable users, and the profile write calls are exactly ceil(sendable / batch_size).

A ``resync`` (``"all"`` or CustomerIDs) forgets the snapshot for those customers: each is planned as changed
whatever its fingerprint, checked with the probe like a new customer, and sent its full row (every current value
set, every mapped attribute that is empty now unset). Resynced customers do not count towards the guard.

Planning is idempotent: a re-run of the plan task for a run that already has batches returns the stored plan,
so a cleared plan task can never re-plan (and re-send) batches that were delivered.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.settings import Settings
from optimove_netmera.store.models import (
    BatchKind,
    BatchStatus,
    ChangeStatus,
    CustomerSnapshot,
    SyncBatch,
    SyncChange,
    SyncRun,
    SyncRunStatus,
    SyncStaging,
)
from optimove_netmera.sync.extract import read_export
from optimove_netmera.sync.transform import fingerprint_values, format_fingerprint, parse_fingerprints, transform

MAX_MAPPED_TASKS = 512
PROBE_CHUNK = 1000
Probe = Callable[[list[str]], set[str] | None]  # the unknown extIds; None: the answer did not say
EXISTENCE_UNKNOWN = "existence unknown: Netmera's checkExistence answer carried no notExist list"


class _Clock:
    """Adds the seconds since the last lap to ``into[name]``."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.into[name] = round(self.into.get(name, 0.0) + now - self.last, 3)
        self.last = now


@dataclass
class Plan:
    """Counts of the plan, plus the batch-id groups the load tasks map over (all small, XCom-safe)."""

    sync_run_id: int
    fetched: int = 0
    known: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    carried_over: int = 0
    resynced: int = 0
    not_found: int = 0
    existence_unknown: int = 0
    set_entries: int = 0
    unset_entries: int = 0
    set_batches: int = 0
    unset_batches: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    attributes_changed: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # read, diff, probe (Netmera round trips), store
    guard: dict[str, Any] = field(default_factory=dict)  # see :func:`guard_check`
    groups: list[list[int]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """Everything but the groups."""
        out = asdict(self)
        out.pop("groups")
        return out


def _staged_frame(engine: Engine, run_id: int) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Staged customers (index: customer id; one string column per Optimove attribute) and their changed names."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncStaging.customer_id, SyncStaging.attributes).where(SyncStaging.sync_run_id == run_id)
        ).all()
    ids = [r[0] for r in rows]
    frame = pd.DataFrame.from_records([r[1]["v"] for r in rows], index=pd.Index(ids, name="customer_id"))
    return frame, {r[0]: r[1].get("c", []) for r in rows}


def _snapshot_hashes(engine: Engine, run_id: int, whole: bool) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Snapshot fingerprints as (customer ids, uint64 values, valid mask), read in partitions to bound memory.

    ``whole``: the entire snapshot (a full refresh diffs against it); otherwise only the staged customers'.
    """
    q = sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash)
    if not whole:
        q = q.join(SyncStaging, SyncStaging.customer_id == CustomerSnapshot.customer_id).where(
            SyncStaging.sync_run_id == run_id
        )
    ids: list[pd.Index] = []
    values: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    with engine.connect() as conn:
        for part in conn.execution_options(yield_per=100_000).execute(q).partitions():
            ids.append(pd.Index([r[0] for r in part], dtype="str"))
            v, ok = parse_fingerprints([r[1] for r in part])
            values.append(v)
            valid.append(ok)
    if not ids:
        return pd.Index([], dtype="str"), np.array([], dtype=np.uint64), np.array([], dtype=bool)
    return ids[0].append(ids[1:]), np.concatenate(values), np.concatenate(valid)


def _present_of(engine: Engine, customer_ids: list[str]) -> dict[str, list[str]]:
    """The snapshot's present attributes of ``customer_ids`` (those that have a snapshot)."""
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for start in range(0, len(customer_ids), 10_000):
            part = customer_ids[start : start + 10_000]
            q = sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.present_attrs).where(
                CustomerSnapshot.customer_id.in_(part)
            )
            out.update({r[0]: r[1] for r in conn.execute(q)})
    return out


def _native_columns(values: pd.DataFrame) -> list[list[Any]]:
    """Each coerced column as a list of JSON-ready Python values (None for empty), built column-wise."""
    cols = []
    for name in values.columns:
        col = values[name]
        if pd.api.types.is_float_dtype(col.dtype):
            arr = col.to_numpy(dtype="float64")
            out = arr.astype(object)
            whole = np.isfinite(arr) & (np.mod(arr, 1) == 0)
            out[whole] = arr[whole].astype("int64").astype(object)
            out[np.isnan(arr)] = None
            cols.append(out.tolist())
        else:
            cols.append(col.astype(object).where(col.notna(), None).tolist())
    return cols


def _known_customers(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(CustomerSnapshot)).scalar_one()


def _carry_over(engine: Engine, run_id: int, staged: pd.Index) -> list[dict[str, Any]]:
    """Not-found changes of the latest successful run, for customers not in ``staged`` (unique ids).

    Only the ids are read first: a full refresh stages nearly everyone, so the rows themselves are rarely needed.
    """
    with engine.connect() as conn:
        prev = conn.execute(
            sa.select(SyncRun.id)
            .where(SyncRun.status == SyncRunStatus.SUCCESS.value, SyncRun.dry_run.is_(False), SyncRun.id < run_id)
            .order_by(SyncRun.id.desc())
            .limit(1)
        ).scalar()
        if prev is None:
            return []
        not_found = (SyncChange.sync_run_id == prev, SyncChange.status == ChangeStatus.NOT_FOUND.value)
        ids = pd.Index(conn.execute(sa.select(SyncChange.customer_id).where(*not_found)).scalars().all(), dtype="str")
        keep = ids[staged.get_indexer(ids) < 0].tolist()  # a hash lookup; Index.isin on strings is 20x slower
        out: list[dict[str, Any]] = []
        for start in range(0, len(keep), 10_000):
            part = keep[start : start + 10_000]
            rows = conn.execute(sa.select(SyncChange).where(*not_found, SyncChange.customer_id.in_(part)))
            out.extend(dict(r._mapping) for r in rows)
    return out


def existing_plan(engine: Engine, run_id: int, settings: Settings) -> Plan | None:
    """The stored plan of a run that was planned already (None when it was not)."""
    with engine.connect() as conn:
        batches = conn.execute(
            sa.select(SyncBatch.id, SyncBatch.kind).where(SyncBatch.sync_run_id == run_id).order_by(SyncBatch.id)
        ).all()
        counts = conn.execute(sa.select(SyncRun.counts).where(SyncRun.id == run_id)).scalar_one()
    if not batches and not counts.get("planned"):
        return None
    plan = Plan(sync_run_id=run_id, **{k: v for k, v in counts.get("plan", {}).items() if k != "sync_run_id"})
    plan.groups = group_batches([b.id for b in batches], settings.sync.batches_per_task)
    return plan


def group_batches(batch_ids: list[int], per_task: int) -> list[list[int]]:
    """Split batch ids into groups for mapped load tasks, never more than MAX_MAPPED_TASKS groups."""
    if not batch_ids:
        return []
    per_task = max(per_task, math.ceil(len(batch_ids) / MAX_MAPPED_TASKS))
    return [batch_ids[i : i + per_task] for i in range(0, len(batch_ids), per_task)]


@contextmanager
def _fewer_gc_passes(threshold: int = 50_000) -> Iterator[None]:
    """Collect garbage less often while millions of short-lived objects are made (restored afterwards).

    ``gc.freeze`` keeps the objects alive now (Airflow, imports) out of every full pass. On 1M customers this
    takes the diff from 10.4 s to 8.7 s at the same peak memory.
    """
    old, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(threshold, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        if not frozen_before:  # leave a caller's own freeze (Airflow freezes before forking) in place
            gc.unfreeze()


@_fewer_gc_passes()
def build_plan(
    engine: Engine,
    run_id: int,
    settings: Settings,
    max_change_ratio: float,
    dry_run: bool,
    probe: Probe | None = None,
    export_path: str | None = None,
    resync: str | list[str] | None = None,
) -> Plan:
    """Diff, guard, set aside extIds Netmera does not know (``probe``) and (unless ``dry_run``) store the plan.

    The customers are the run's staging rows, or for a full refresh the export file itself (read columnar:
    staging a million rows only to read them back would double the work), diffed against the whole snapshot.
    """
    if not dry_run:
        stored = existing_plan(engine, run_id, settings)
        if stored is not None:
            return stored
    clock = _Clock(plan_seconds := {})
    if export_path is not None:
        raw, changed_names = read_export(export_path, settings.optimove_attributes), {}
    else:
        raw, changed_names = _staged_frame(engine, run_id)
    plan = Plan(sync_run_id=run_id, fetched=len(raw), seconds=plan_seconds)
    clock.lap("read")
    mapping = settings.attributes
    t = transform(raw, mapping)
    customer_index = raw.index
    del raw  # the coerced copy is all that is needed from here
    plan.dropped = t.dropped
    hashes = fingerprint_values(t)
    plan.known = _known_customers(engine)
    snap_ids, snap_values, snap_valid = _snapshot_hashes(engine, run_id, whole=export_path is not None)
    pos = snap_ids.get_indexer(customer_index.astype("str"))
    is_new = pos < 0
    same = np.zeros(len(hashes), dtype=bool)
    seen = ~is_new
    same[seen] = snap_valid[pos[seen]] & (snap_values[pos[seen]] == hashes[seen])
    changed_mask = ~same
    del snap_ids, snap_values, snap_valid, pos
    data_changed = int(changed_mask.sum())  # the guard counts changes in the data, never an operator's resync
    if resync == "all":
        forced = np.ones(len(hashes), dtype=bool)
    elif resync:
        forced = customer_index.astype("str").isin(resync)
    else:
        forced = np.zeros(len(hashes), dtype=bool)
    changed_mask |= forced
    plan.resynced = int(forced.sum())
    plan.new = int(is_new.sum())
    plan.changed = int(changed_mask.sum())
    plan.unchanged = len(hashes) - plan.changed
    plan.guard = guard_check(data_changed, plan.known, max_change_ratio)

    idx = np.flatnonzero(changed_mask)
    names = list(t.values.columns)
    customer_ids = customer_index[idx].astype(str).tolist()
    ext_ids = [settings.ext_id.apply(c) for c in customer_ids]
    new_flags = is_new[idx].tolist()
    forced_flags = forced[idx].tolist()
    all_names = [a.netmera for a in mapping]
    present_before = _present_of(engine, [c for c, new in zip(customer_ids, new_flags, strict=True) if not new])
    cols = _native_columns(t.values.iloc[idx])
    by_optimove = {a.netmera: a.optimove for a in mapping}
    changed_hashes = [format_fingerprint(h) for h in hashes[idx].tolist()]
    changes: list[dict[str, Any]] = []
    attr_counts: dict[str, int] = {}
    width = range(len(names))
    for i, cid in enumerate(customer_ids):
        set_attrs = {names[j]: cols[j][i] for j in width if cols[j][i] is not None}
        before = all_names if forced_flags[i] else present_before.get(cid)  # a resync may unset any attribute
        present = set_attrs.keys()  # an invalid value counts as empty: never sent, unset if delivered before
        unset = sorted(set(before) - present) if before else []
        reported = changed_names.get(cid) or [by_optimove[n] for n in (*set_attrs, *unset)]
        for optimove_name in reported:
            attr_counts[optimove_name] = attr_counts.get(optimove_name, 0) + 1
        changes.append(
            {
                "sync_run_id": run_id,
                "customer_id": cid,
                "ext_id": ext_ids[i],
                "new_hash": changed_hashes[i],
                "set_attrs": set_attrs,
                "unset_attrs": unset,
                "present_attrs": sorted(present),
                "status": ChangeStatus.PENDING.value,
                "reason": None,
            }
        )
    fresh = [e for e, new, f in zip(ext_ids, new_flags, forced_flags, strict=True) if new or f]
    staged = pd.Index(customer_ids, dtype="str") if export_path is None else customer_index
    for old in _carry_over(engine, run_id, staged):
        plan.carried_over += 1
        changes.append({**old, "sync_run_id": run_id, "status": ChangeStatus.PENDING.value, "reason": None})
        fresh.append(old["ext_id"])
    clock.lap("diff")
    if probe is not None and fresh:
        unknown: set[str] = set()
        unanswered: set[str] = set()
        for start in range(0, len(fresh), PROBE_CHUNK):
            chunk = fresh[start : start + PROBE_CHUNK]
            answer = probe(chunk)
            if answer is None:
                unanswered.update(chunk)
            else:
                unknown |= answer
        for c in changes:
            if c["ext_id"] in unanswered:
                c["status"], c["reason"] = ChangeStatus.NOT_FOUND.value, EXISTENCE_UNKNOWN
                plan.existence_unknown += 1
            elif c["ext_id"] in unknown:
                c["status"], c["reason"] = ChangeStatus.NOT_FOUND.value, "extId unknown to Netmera"
        plan.not_found = sum(c["status"] == ChangeStatus.NOT_FOUND.value for c in changes)
    netmera_of = {a.optimove: a.netmera for a in mapping}
    plan.attributes_changed = {netmera_of[k]: v for k, v in sorted(attr_counts.items()) if k in netmera_of}
    clock.lap("probe")
    _assign_batches(changes, settings.sync.batch_size, plan)
    if dry_run:
        return plan
    clock.lap("diff")
    _store(engine, run_id, changes, plan, settings, clock)
    return plan


def guard_check(changed: int, known: int, max_change_ratio: float) -> dict[str, Any]:
    """The change guard: ``tripped`` when more than ``max_change_ratio`` of the known customers would change.

    A tripped guard does not stop the plan: the load waits for a person's decision (``sync.guard``).
    """
    ratio = changed / known if known else 0.0
    return {
        "changed": changed,
        "known": known,
        "ratio": round(ratio, 6),
        "max_change_ratio": max_change_ratio,
        "tripped": bool(known) and ratio > max_change_ratio,
    }


def _assign_batches(changes: list[dict[str, Any]], size: int, plan: Plan) -> None:
    ordered = sorted(range(len(changes)), key=lambda i: changes[i]["ext_id"])
    n_set = n_unset = 0
    for i in ordered:
        c = changes[i]
        if c["status"] == ChangeStatus.NOT_FOUND.value:
            c["set_batch_no"] = c["unset_batch_no"] = None
            continue
        c["set_batch_no"] = (n_set // size) if c["set_attrs"] else None
        c["unset_batch_no"] = (n_unset // size) if c["unset_attrs"] else None
        n_set += bool(c["set_attrs"])
        n_unset += bool(c["unset_attrs"])
    plan.set_entries, plan.unset_entries = n_set, n_unset
    plan.set_batches, plan.unset_batches = math.ceil(n_set / size), math.ceil(n_unset / size)


def _store(
    engine: Engine, run_id: int, changes: list[dict[str, Any]], plan: Plan, settings: Settings, clock: _Clock
) -> None:
    sizes: dict[tuple[str, int], int] = {}
    for c in changes:
        if c["set_batch_no"] is not None:
            key = (BatchKind.SET.value, c["set_batch_no"])
            sizes[key] = sizes.get(key, 0) + 1
        if c["unset_batch_no"] is not None:
            key = (BatchKind.UNSET.value, c["unset_batch_no"])
            sizes[key] = sizes.get(key, 0) + 1
    columns = [col.name for col in SyncChange.__table__.columns]
    with engine.begin() as conn:
        conn.execute(sa.delete(SyncChange).where(SyncChange.sync_run_id == run_id))
        for start in range(0, len(changes), 20_000):
            part = [{k: c.get(k) for k in columns} for c in changes[start : start + 20_000]]
            conn.execute(sa.insert(SyncChange), part)
        if sizes:
            conn.execute(
                sa.insert(SyncBatch),
                [
                    {
                        "sync_run_id": run_id,
                        "kind": kind,
                        "batch_no": no,
                        "size": n,
                        "status": BatchStatus.PENDING.value,
                    }
                    for (kind, no), n in sorted(sizes.items())
                ],
            )
        counts = conn.execute(sa.select(SyncRun.counts).where(SyncRun.id == run_id)).scalar_one()
        clock.lap("store")
        conn.execute(
            sa.update(SyncRun)
            .where(SyncRun.id == run_id)
            .values(counts={**counts, "planned": True, "plan": plan.counts()})
        )
        ids = conn.execute(
            sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id).order_by(SyncBatch.id)
        ).scalars()
        plan.groups = group_batches(list(ids), settings.sync.batches_per_task)
