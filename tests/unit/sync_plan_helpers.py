"""Helpers shared by the plan's unit tests."""

from __future__ import annotations

import sqlalchemy as sa
from optimove_netmera.store.models import SyncBatch, SyncRun
from optimove_netmera.sync import load
from sqlalchemy.engine import Engine


def deliver(engine: Engine, run_id: int) -> None:
    """What a successful load does: every batch delivered, the snapshot advanced, the run closed as success."""
    with engine.begin() as conn:
        conn.execute(sa.update(SyncBatch).where(SyncBatch.sync_run_id == run_id).values(status="delivered"))
        conn.execute(sa.update(SyncRun).where(SyncRun.id == run_id).values(status="success"))
    load.settle(engine, run_id)
