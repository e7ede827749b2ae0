"""The send ledger's chunks (``send_chunks``): a request's claim and outcome, once per chunk.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
Every chunk number the ledger holds gets a ``pending`` row, so the rows written before keep their own status and
the pending ones are claimed per chunk from now on. Downgrading first writes each chunk's outcome back to its
pending recipients (what 0004's send ledger kept per recipient), then drops the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
STATUSES = ("pending", "in_flight", "sent", "failed", "cancelled", "skipped", "unknown")


def _now() -> sa.TextClause:
    """Server-side 'now' in UTC, in the text format SQLAlchemy uses for SQLite DATETIME."""
    if op.get_context().dialect.name == "sqlite":
        return sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))")
    return sa.text("now()")


def upgrade() -> None:
    now = _now()
    allowed = ", ".join(f"'{s}'" for s in STATUSES)
    op.create_table(
        "send_chunks",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chunk_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "channel_id", "chunk_no", name=op.f("pk_send_chunks")),
        sa.ForeignKeyConstraint(
            ["campaign_id", "channel_id"],
            ["campaigns.campaign_id", "campaigns.channel_id"],
            name=op.f("fk_send_chunks_campaign_id_channel_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(f"status IN ({allowed})", name=op.f("ck_send_chunks_status")),
    )
    op.execute(
        "INSERT INTO send_chunks (campaign_id, channel_id, chunk_no) SELECT DISTINCT campaign_id, channel_id, "
        "chunk_no FROM recipients WHERE chunk_no IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE recipients SET status = (SELECT c.status FROM send_chunks c WHERE c.campaign_id = "
        "recipients.campaign_id AND c.channel_id = recipients.channel_id AND c.chunk_no = recipients.chunk_no), "
        "reason = (SELECT c.reason FROM send_chunks c WHERE c.campaign_id = recipients.campaign_id AND "
        "c.channel_id = recipients.channel_id AND c.chunk_no = recipients.chunk_no), "
        "request_id = (SELECT c.request_id FROM send_chunks c WHERE c.campaign_id = recipients.campaign_id AND "
        "c.channel_id = recipients.channel_id AND c.chunk_no = recipients.chunk_no), "
        "sent_at = (SELECT c.sent_at FROM send_chunks c WHERE c.campaign_id = recipients.campaign_id AND "
        "c.channel_id = recipients.channel_id AND c.chunk_no = recipients.chunk_no) "
        "WHERE status = 'pending' AND EXISTS (SELECT 1 FROM send_chunks c WHERE c.campaign_id = "
        "recipients.campaign_id AND c.channel_id = recipients.channel_id AND c.chunk_no = recipients.chunk_no "
        "AND c.status <> 'pending')"
    )
    op.drop_table("send_chunks")
