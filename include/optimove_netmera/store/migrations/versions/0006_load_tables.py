"""What a load writes and reads: no foreign key on ``customer_snapshot.sync_run_id``; ``set_attrs`` as text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).

* ``customer_snapshot.sync_run_id`` loses its foreign key to ``sync_runs``. A load advances one snapshot row per
  delivered customer, each stamped with the run's id, and PostgreSQL checked the key for every row (a lookup that
  locks the run's row ``FOR KEY SHARE``): 37% of the snapshot upsert on its own, and with the load's other
  statements beside it the upsert took twice as long (``tests/perf/bench_load.py`` on PostgreSQL). The id records
  which run delivered the row; the project writes only the id of the run doing the load and never deletes a run.
  Downgrading clears the ids of runs that are gone (what ``ON DELETE SET NULL`` did), then adds the key again.
  SQLite: by alembic's batch mode, which copies the table.
* PostgreSQL: ``sync_changes.set_attrs`` becomes ``json`` (was ``jsonb``): the text as the plan wrote it. Each
  profile request's body is concatenated from these texts, and ``jsonb`` printed every value again (5.0 against
  3.4 ms a 1000-profile batch on the server); storing it skips the parse too (4.3 against 7.2 µs a row). SQLite
  stores JSON as text already. Downgrading converts it back.
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


def _set_attrs_as(type_: str) -> None:
    """PostgreSQL: ``sync_changes.set_attrs`` as ``type_`` (``json`` or ``jsonb``), its default an empty object."""
    op.execute(f"ALTER TABLE sync_changes ALTER COLUMN set_attrs TYPE {type_} USING set_attrs::{type_}")
    op.execute("ALTER TABLE sync_changes ALTER COLUMN set_attrs SET DEFAULT '{}'")


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f(KEY), "customer_snapshot", type_="foreignkey")
        _set_attrs_as("json")
        return
    with op.batch_alter_table("customer_snapshot", copy_from=_snapshot_table(True), recreate="always") as batch:
        batch.drop_constraint(op.f(KEY), type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "UPDATE customer_snapshot SET sync_run_id = NULL"
        " WHERE sync_run_id IS NOT NULL AND sync_run_id NOT IN (SELECT id FROM sync_runs)"
    )
    if op.get_context().dialect.name != "sqlite":
        _set_attrs_as("jsonb")
        op.create_foreign_key(op.f(KEY), "customer_snapshot", "sync_runs", ["sync_run_id"], ["id"], ondelete="SET NULL")
        return
    with op.batch_alter_table("customer_snapshot", copy_from=_snapshot_table(False), recreate="always") as batch:
        batch.create_foreign_key(op.f(KEY), "sync_runs", ["sync_run_id"], ["id"], ondelete="SET NULL")
