"""Load planned batches into Netmera, resumably.

Each batch (at most 1000 extIds) is one ``setProfileAttributes`` or ``unsetProfileAttributes`` request. Its row in
``sync_batches`` goes pending -> in_flight -> delivered (or failed / dead), so a retried or cleared load task
skips what was delivered and re-sends only what was not. Both calls are idempotent (the same values again), so
re-sending a batch whose outcome was lost with its worker is safe.

Customers Netmera does not know were set aside by the plan (see :mod:`optimove_netmera.sync.plan`), so every
batch holds only users Netmera knows. A customer's snapshot advances only when every part of its change (set and
unset) was delivered.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from optimove_netmera.http import ApiError, is_payload_rejection
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.store.models import (
    BatchKind,
    BatchStatus,
    ChangeStatus,
    CustomerSnapshot,
    DeadLetter,
    DeadLetterKind,
    SyncBatch,
    SyncChange,
)
from optimove_netmera.store.queries import claim, upsert

log = logging.getLogger(__name__)


def _changes_of(conn: Connection, batch: Any) -> list[Any]:
    column = SyncChange.set_batch_no if batch.kind == BatchKind.SET.value else SyncChange.unset_batch_no
    return conn.execute(
        sa.select(SyncChange)
        .where(SyncChange.sync_run_id == batch.sync_run_id, column == batch.batch_no)
        .order_by(SyncChange.ext_id)
    ).all()


def _claim(conn: Connection, batch_id: int) -> bool:
    """pending/failed -> in_flight; also in_flight (its worker died: the write is idempotent, so re-send it)."""
    return claim(
        conn,
        SyncBatch.__table__,
        {"id": batch_id},
        from_status=[BatchStatus.PENDING.value, BatchStatus.FAILED.value, BatchStatus.IN_FLIGHT.value],
        to_status=BatchStatus.IN_FLIGHT.value,
    )


def _complete(conn: Connection, run_id: int, batch: Any, changes: Sequence[Any]) -> int:
    """Mark a delivered batch and advance the snapshot of customers whose every part is now delivered."""
    conn.execute(
        sa.update(SyncBatch).where(SyncBatch.id == batch.id).values(status=BatchStatus.DELIVERED.value, error=None)
    )
    other_kind = BatchKind.UNSET.value if batch.kind == BatchKind.SET.value else BatchKind.SET.value
    delivered_other = set(
        conn.execute(
            sa.select(SyncBatch.batch_no).where(
                SyncBatch.sync_run_id == run_id,
                SyncBatch.kind == other_kind,
                SyncBatch.status == BatchStatus.DELIVERED.value,
            )
        ).scalars()
    )
    done = []
    for c in changes:
        other = c.unset_batch_no if batch.kind == BatchKind.SET.value else c.set_batch_no
        if other is None or other in delivered_other:
            done.append(c)
    _advance_snapshot(conn, run_id, done)
    return len(done)


def _advance_snapshot(conn: Connection, run_id: int, done: Sequence[Any]) -> None:
    """Record ``done`` changes as what Netmera now holds, and mark them delivered."""
    if not done:
        return
    now = dt.datetime.now(dt.UTC)
    upsert(
        conn,
        CustomerSnapshot.__table__,
        [
            {
                "customer_id": c.customer_id,
                "ext_id": c.ext_id,
                "attr_hash": c.new_hash,
                "present_attrs": c.present_attrs,
                "delivered_at": now,
                "sync_run_id": run_id,
            }
            for c in done
        ],
        conflict_columns=["customer_id"],
        update_columns=["ext_id", "attr_hash", "present_attrs", "delivered_at", "sync_run_id"],
    )
    ids = [c.customer_id for c in done]
    for start in range(0, len(ids), 10_000):
        conn.execute(
            sa.update(SyncChange)
            .where(SyncChange.sync_run_id == run_id, SyncChange.customer_id.in_(ids[start : start + 10_000]))
            .values(status=ChangeStatus.DELIVERED.value)
        )


def settle(engine: Engine, run_id: int) -> int:
    """Advance the snapshot for pending changes whose every batch is delivered; returns how many.

    Two load tasks finishing the set and the unset part of one customer at the same moment can each miss the
    other's commit; this final pass (run by the report) catches those customers.
    """
    with engine.begin() as conn:
        delivered = {
            (r.kind, r.batch_no)
            for r in conn.execute(
                sa.select(SyncBatch.kind, SyncBatch.batch_no).where(
                    SyncBatch.sync_run_id == run_id, SyncBatch.status == BatchStatus.DELIVERED.value
                )
            )
        }
        pending = conn.execute(
            sa.select(SyncChange).where(
                SyncChange.sync_run_id == run_id, SyncChange.status == ChangeStatus.PENDING.value
            )
        ).all()
        done = [
            c
            for c in pending
            if (c.set_batch_no is None or (BatchKind.SET.value, c.set_batch_no) in delivered)
            and (c.unset_batch_no is None or (BatchKind.UNSET.value, c.unset_batch_no) in delivered)
        ]
        _advance_snapshot(conn, run_id, done)
    return len(done)


def _dead_letter(conn: Connection, run_id: int, batch: Any, changes: Sequence[Any], reason: str) -> None:
    kind = DeadLetterKind.PROFILE_SET if batch.kind == BatchKind.SET.value else DeadLetterKind.PROFILE_UNSET
    upsert(
        conn,
        DeadLetter.__table__,
        [
            {
                "kind": kind.value,
                "ref": f"sync_run:{run_id}",
                "customer_id": c.customer_id,
                "ext_id": c.ext_id,
                "payload": {"profile": c.set_attrs if batch.kind == BatchKind.SET.value else c.unset_attrs},
                "reason": reason,
                "attempts": batch.attempts + 1,
            }
            for c in changes
        ],
        conflict_columns=["kind", "ref", "customer_id"],
        update_columns=["payload", "reason", "attempts"],
    )
    conn.execute(
        sa.update(SyncChange)
        .where(SyncChange.sync_run_id == run_id, SyncChange.customer_id.in_([c.customer_id for c in changes]))
        .values(status=ChangeStatus.DEAD.value, reason=reason)
    )
    conn.execute(
        sa.update(SyncBatch).where(SyncBatch.id == batch.id).values(status=BatchStatus.DEAD.value, error=reason)
    )


def _mark_failed(engine: Engine, batch_id: int, exc: ApiError) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(SyncBatch).where(SyncBatch.id == batch_id).values(status=BatchStatus.FAILED.value, error=str(exc))
        )


def load_batches(engine: Engine, run_id: int, batch_ids: Sequence[int], client: NetmeraClient) -> dict[str, int]:
    """Deliver the given batches of a run.

    A batch Netmera rejects as invalid (400/413/422) is dead-lettered with the reason; any other failure (after the
    client's retries, or a 401/403/404 that no retry fixes) marks the batch failed and raises, so the task fails
    and its retry (or a clear) resumes from there.
    """
    counts = {"batches_sent": 0, "batches_skipped": 0, "batches_dead": 0, "delivered": 0}
    for batch_id in batch_ids:
        with engine.begin() as conn:
            batch = conn.execute(sa.select(SyncBatch).where(SyncBatch.id == batch_id)).one()
            if batch.status in (BatchStatus.DELIVERED.value, BatchStatus.DEAD.value) or not _claim(conn, batch_id):
                counts["batches_skipped"] += 1
                continue
            changes = _changes_of(conn, batch)
        try:
            if batch.kind == BatchKind.SET.value:
                client.set_profile_attributes([{"extId": c.ext_id, "profile": c.set_attrs} for c in changes])
            else:
                client.unset_profile_attributes([{"extId": c.ext_id, "profile": c.unset_attrs} for c in changes])
        except ApiError as exc:
            if not is_payload_rejection(exc):  # transient, or configuration (401/403/404): fail, never discard
                _mark_failed(engine, batch_id, exc)
                raise
            reason = str(exc)
            log.error("batch %s/%s rejected permanently, dead-lettered: %s", batch.kind, batch.batch_no, reason)
            with engine.begin() as conn:
                _dead_letter(conn, run_id, batch, changes, reason)
            counts["batches_dead"] += 1
            continue
        with engine.begin() as conn:
            counts["delivered"] += _complete(conn, run_id, batch, changes)
        counts["batches_sent"] += 1
    return counts


def load_summary(engine: Engine, run_id: int) -> dict[str, Any]:
    """Counts of the run's batches and changes by status (what the report shows)."""
    with engine.connect() as conn:
        batches = dict(
            conn.execute(
                sa.select(SyncBatch.status, sa.func.count())
                .where(SyncBatch.sync_run_id == run_id)
                .group_by(SyncBatch.status)
            ).all()
        )
        changes = dict(
            conn.execute(
                sa.select(SyncChange.status, sa.func.count())
                .where(SyncChange.sync_run_id == run_id)
                .group_by(SyncChange.status)
            ).all()
        )
        dead = conn.execute(
            sa.select(sa.func.count()).select_from(DeadLetter).where(DeadLetter.ref == f"sync_run:{run_id}")
        ).scalar_one()
    return {"batches": batches, "changes": changes, "dead_lettered": dead}
