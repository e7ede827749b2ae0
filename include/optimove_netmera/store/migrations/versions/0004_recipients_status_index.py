"""Drop the send ledger's ``(campaign_id, channel_id, status)`` index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
Every send request moves its recipients' ``status`` twice (the claim, then the outcome), and each move rewrote an
entry of this index per recipient: about a third of a claim's and an outcome's cost on SQLite, and on PostgreSQL it
kept the updates from being heap-only. The queries that filter on ``status`` are all scoped to one campaign and
channel, which the ``(campaign_id, channel_id, chunk_no)`` index serves. Downgrading creates the index again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_recipients_campaign_id_channel_id_status"


def upgrade() -> None:
    op.drop_index(op.f(INDEX), table_name="recipients")


def downgrade() -> None:
    op.create_index(op.f(INDEX), "recipients", ["campaign_id", "channel_id", "status"])
