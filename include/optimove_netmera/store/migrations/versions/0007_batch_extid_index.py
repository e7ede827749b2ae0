"""A sync batch's change rows in extId order from their index: ``(sync_run_id, set_batch_no, ext_id)`` and the same
for ``unset_batch_no``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
Each profile request's body is built by the state database from its batch's change rows in extId order. Keyed by
``(run, batch number)`` alone, every body sorted its 1000 ~1 KB rows first: SQLite through a temporary B-tree, about
half of the body's query (4.5-5.3 against 2.5 ms a batch with the extId in the index), PostgreSQL inside the
aggregate. With the extId as the index's last column the rows come out of the index in order and nothing is sorted.
The indexes replace the two-column ones (whose queries the new ones serve as well). Downgrading restores those.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("set_batch_no", "unset_batch_no")


def upgrade() -> None:
    for column in COLUMNS:
        op.drop_index(op.f(f"ix_sync_changes_sync_run_id_{column}"), table_name="sync_changes")
        index = op.f(f"ix_sync_changes_sync_run_id_{column}_ext_id")
        op.create_index(index, "sync_changes", ["sync_run_id", column, "ext_id"])


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(op.f(f"ix_sync_changes_sync_run_id_{column}_ext_id"), table_name="sync_changes")
        op.create_index(op.f(f"ix_sync_changes_sync_run_id_{column}"), "sync_changes", ["sync_run_id", column])
