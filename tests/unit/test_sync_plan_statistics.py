"""PostgreSQL: a plan leaves its tables analysed, so the load reads each batch by its number even when the
statistics the server had predate the run (autovacuum analyses a table a minute or more after a bulk write, or
not at all when a day's changes are a small part of it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from optimove_netmera.settings import Settings, load_settings
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import SyncRun
from optimove_netmera.sync import extract, plan
from optimove_netmera.sync.load import _body_sql
from sqlalchemy.engine import Engine
from sync_plan_helpers import customers, deliver

pytestmark = pytest.mark.postgres

BATCH = 100
CUSTOMERS = 3000
BY_NUMBER = "ix_sync_changes_sync_run_id_set_batch_no"


def _plan(engine: Engine, s: Settings, tmp_path: Path, version: int) -> int:
    """A run planned from an export of every customer, each with the values of ``version``; its id."""
    frame = customers(s, CUSTOMERS, version, changed=set(range(CUSTOMERS)))
    path = tmp_path / f"customers-{version}.parquet"
    frame.to_parquet(path)
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(SyncRun).values(dag_id="d", dag_run_id=f"r{version}", status="running").returning(SyncRun.id)
        ).scalar_one()
    extract.extract_export(engine, run_id, path, s)
    planned = plan.build_plan(engine, run_id, s, 1.0, False, None, str(path))
    assert planned.set_batches == CUSTOMERS // BATCH
    return run_id


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_load_reads_a_batch_by_its_number_after_a_plan_on_older_statistics(db_url: str, tmp_path: Path) -> None:
    s = load_settings(overlay={"sync": {"batch_size": BATCH}})
    migrate(db_url)  # an empty database: the session's is shared by every test that asks for it
    engine = get_engine(db_url)
    yesterday = _plan(engine, s, tmp_path, 0)
    deliver(engine, yesterday)
    with engine.begin() as conn:  # autovacuum analysed yesterday's rows since
        conn.exec_driver_sql("ANALYZE sync_changes, sync_batches")
    today = _plan(engine, s, tmp_path, 1)  # every customer changed

    with engine.connect() as conn:
        explained = "\n".join(
            row[0]
            for row in conn.execute(
                sa.text("EXPLAIN " + _body_sql("postgresql", "set_attrs", "set_batch_no")), {"run": today, "no": 7}
            )
        )
    # on yesterday's statistics the server took today's run for a row, and read the body through the run's status
    # index, filtering every change of the run for each batch
    assert BY_NUMBER in explained, explained
