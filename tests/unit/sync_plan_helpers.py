"""Helpers shared by the plan's unit tests."""

from __future__ import annotations

import sqlalchemy as sa
from optimove_netmera.store.models import SyncBatch, SyncRun
from optimove_netmera.sync import load
from sqlalchemy.engine import Engine


class _Accepting:
    """A Netmera client that takes every profile write."""

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        return count


def deliver(engine: Engine, run_id: int) -> None:
    """What a successful load does (:func:`~optimove_netmera.sync.load.load_batches`: every batch delivered, the
    snapshot advanced) and the report: the run closed as success."""
    with engine.connect() as conn:
        ids = conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id)).scalars().all()
    load.load_batches(engine, run_id, ids, _Accepting())  # type: ignore[arg-type]
    load.settle(engine, run_id)
    with engine.begin() as conn:
        conn.execute(sa.update(SyncRun).where(SyncRun.id == run_id).values(status="success"))
