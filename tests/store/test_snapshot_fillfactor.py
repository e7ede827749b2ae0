"""PostgreSQL: a later sync's snapshot updates stay on their page (revision 0007's fillfactor), so they add no
index entry and the table does not grow by a row version a customer."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import SyncBatch, SyncChange, SyncRun
from optimove_netmera.sync.load import _complete

pytestmark = pytest.mark.postgres

CUSTOMERS = 3000


def _plan(conn: sa.Connection, run: str) -> tuple[int, list[object]]:
    """A run whose change rows set every customer, 1000 a batch (20 attributes delivered: ``fffff``); its id and
    batches."""
    run_id = conn.execute(sa.insert(SyncRun).values(dag_id="d", dag_run_id=run).returning(SyncRun.id)).scalar_one()
    conn.execute(
        sa.insert(SyncChange),
        [
            {"sync_run_id": run_id, "customer_id": f"C{i:07d}", "ext_id": f"E{i:07d}", "new_hash": f"{run}:{i}",
             "set_attrs": {"a": i}, "unset_attrs": [], "present_bits": "fffff", "set_batch_no": i // 1000}
            for i in range(CUSTOMERS)
        ],
    )  # fmt: skip
    conn.execute(
        sa.insert(SyncBatch),
        [{"sync_run_id": run_id, "kind": "set", "batch_no": b, "size": 1000} for b in range(CUSTOMERS // 1000)],
    )
    batches = conn.execute(
        sa.select(SyncBatch.id, SyncBatch.kind, SyncBatch.batch_no).where(SyncBatch.sync_run_id == run_id)
    ).all()
    return run_id, list(batches)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_later_syncs_snapshot_updates_stay_on_their_page(db_url: str) -> None:
    url = db_url  # an empty database: the session's is shared by every test that asks for it
    migrate(url)
    engine = get_engine(url)
    with engine.begin() as conn:
        first, batches = _plan(conn, "first")
        assert _complete(conn, first, batches) == CUSTOMERS  # the first sync inserts every snapshot row
        second, batches = _plan(conn, "second")
    with engine.begin() as conn:  # the next sync's load advances the same customers: every row is updated
        assert _complete(conn, second, batches) == CUSTOMERS
        updated, on_page = conn.execute(
            sa.text(
                "SELECT pg_stat_get_xact_tuples_updated(c.oid), pg_stat_get_xact_tuples_hot_updated(c.oid)"
                " FROM pg_class c WHERE c.relname = 'customer_snapshot'"
            )
        ).one()
        hashes = set(conn.execute(sa.text("SELECT DISTINCT split_part(attr_hash, ':', 1) FROM customer_snapshot")))
    assert updated == CUSTOMERS and hashes == {("second",)}
    # Full pages (fillfactor 100) leave room for none of the new versions (a few on the last page); 60% leaves room
    # beside each page's rows for about two thirds of them while the old versions are still there (one transaction).
    assert on_page >= CUSTOMERS // 2, f"{on_page} of {updated} updates stayed on their page"
