"""Drop the foreign key from ``customer_snapshot.sync_run_id`` to ``sync_runs``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
A load advances one snapshot row per delivered customer, each stamped with the run's id, and PostgreSQL checked
the key for every row (a lookup that locks the run's row ``FOR KEY SHARE``): about 37% of the snapshot upsert on
its own, and with the load's other statements beside it the upsert took twice as long (``tests/perf/bench_load.py``
on PostgreSQL). The id records which run delivered the row; the project writes only the id of the run doing the
load and never deletes a run. Downgrading clears the ids of runs that are gone (what ``ON DELETE SET NULL`` did),
then adds the key again. SQLite: by alembic's batch mode, which copies the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import conv

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)
KEY = "fk_customer_snapshot_sync_run_id_sync_runs"


def _snapshot_table(with_key: bool) -> sa.Table:
    """``customer_snapshot`` as 0001 created it (with or without the key), for SQLite's table copy: passing it spares
    alembic a reflection, so the migration also prints as SQL (``upgrade --sql``)."""
    metadata = sa.MetaData()
    sa.Table("sync_runs", metadata, sa.Column("id", sa.BigInteger(), primary_key=True))
    key = [sa.ForeignKeyConstraint(["sync_run_id"], ["sync_runs.id"], name=conv(KEY), ondelete="SET NULL")]
    return sa.Table(
        "customer_snapshot",
        metadata,
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=False),
        sa.Column("attr_hash", sa.String(64), nullable=False),
        sa.Column("present_attrs", JSON, server_default=sa.text("'[]'"), nullable=False),
        sa.Column(
            "delivered_at", TS, server_default=sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"), nullable=False
        ),
        sa.Column("sync_run_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name=conv("pk_customer_snapshot")),
        *(key if with_key else []),
    )


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f(KEY), "customer_snapshot", type_="foreignkey")
        return
    with op.batch_alter_table("customer_snapshot", copy_from=_snapshot_table(True), recreate="always") as batch:
        batch.drop_constraint(op.f(KEY), type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "UPDATE customer_snapshot SET sync_run_id = NULL"
        " WHERE sync_run_id IS NOT NULL AND sync_run_id NOT IN (SELECT id FROM sync_runs)"
    )
    if op.get_context().dialect.name != "sqlite":
        op.create_foreign_key(op.f(KEY), "customer_snapshot", "sync_runs", ["sync_run_id"], ["id"], ondelete="SET NULL")
        return
    with op.batch_alter_table("customer_snapshot", copy_from=_snapshot_table(False), recreate="always") as batch:
        batch.create_foreign_key(op.f(KEY), "sync_runs", ["sync_run_id"], ["id"], ondelete="SET NULL")
