"""Helpers shared by the plan's unit tests."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from optimove_netmera.settings import Settings
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import SyncBatch, SyncRun
from optimove_netmera.sync import load
from sqlalchemy.engine import Engine


class _Accepting:
    """A Netmera client that takes every profile write."""

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        return count


def open_run(db_url: str) -> tuple[Engine, int]:
    """A migrated state DB at ``db_url`` and a new sync run in it: its engine and the run's id."""
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        run_id = conn.execute(sa.insert(SyncRun).values(dag_id="d", dag_run_id="r").returning(SyncRun.id)).scalar_one()
    return engine, run_id


def deliver(engine: Engine, run_id: int) -> None:
    """What a successful load does (:func:`~optimove_netmera.sync.load.load_batches`: every batch delivered, the
    snapshot advanced) and the report: the run closed as success."""
    with engine.connect() as conn:
        ids = conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id)).scalars().all()
    load.load_batches(engine, run_id, ids, _Accepting())  # type: ignore[arg-type]
    load.settle(engine, run_id)
    with engine.begin() as conn:
        conn.execute(sa.update(SyncRun).where(SyncRun.id == run_id).values(status="success"))


def values(i: int, kind: str, version: int) -> str:
    """Customer ``i``'s Optimove value of an attribute of type ``kind``, as of ``version``."""
    return {
        "string": f"v{version}-{i}",
        "number": str(i + version),
        "boolean": "true" if (i + version) % 2 else "false",
        "date": f"20{10 + version:02d}-01-{1 + i % 28:02d}",
    }[kind]


def customers(s: Settings, n: int, version: int = 0, changed: set[int] = frozenset()) -> pd.DataFrame:  # type: ignore[assignment]
    """``n`` customers C0000000.. with every mapped attribute; those in ``changed`` get the values of ``version``."""
    rows = {"CustomerID": [f"C{i:07d}" for i in range(n)]}
    for a in s.attributes:
        rows[a.optimove] = [values(i, a.type, version if i in changed else 0) for i in range(n)]
    return pd.DataFrame(rows)
