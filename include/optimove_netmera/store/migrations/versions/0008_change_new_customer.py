"""``sync_changes.new_customer``: whether the plan found no snapshot row for the customer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).

A load records each delivered customer in ``customer_snapshot``. It did so with an upsert (``INSERT ... ON CONFLICT
DO UPDATE``) for every customer, and a third of that upsert is the conflict check's speculative insertion: on
PostgreSQL a plain ``INSERT`` of the same 300k rows took 0.88-0.93 s against 1.35-1.43 s. A first sync's customers
are all new, and only the plan knows which ones are (it compared each with the snapshot), so it records that here
and the load inserts those rows, upserting the rest (:func:`optimove_netmera.sync.load._advance_snapshot`).

The column defaults to false, which only means "upsert": rows already planned load as before. Adding it rewrites
nothing (PostgreSQL 11+ stores a constant default in the catalogue; SQLite's ``ADD COLUMN`` does not copy the table).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_changes", sa.Column("new_customer", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table("sync_changes") as batch:
            batch.drop_column("new_customer")
        return
    op.drop_column("sync_changes", "new_customer")
