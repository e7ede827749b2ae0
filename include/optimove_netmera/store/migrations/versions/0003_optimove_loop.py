"""The metrics ledger (``campaign_metrics``) and the templates added to Optimove (``channel_templates``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def _now() -> sa.TextClause:
    """Server-side 'now' in UTC, in the text format SQLAlchemy uses for SQLite DATETIME."""
    if op.get_context().dialect.name == "sqlite":
        return sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))")
    return sa.text("now()")


def upgrade() -> None:
    now = _now()
    op.create_table(
        "campaign_metrics",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("template_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("metric_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("reported", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("sending", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint(
            "campaign_id", "channel_id", "template_id", "metric_id", name=op.f("pk_campaign_metrics")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id", "channel_id"],
            ["campaigns.campaign_id", "campaigns.channel_id"],
            name=op.f("fk_campaign_metrics_campaign_id_channel_id_campaigns"),
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "channel_templates",
        sa.Column("channel_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("template_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "template_id", name=op.f("pk_channel_templates")),
    )


def downgrade() -> None:
    op.drop_table("channel_templates")
    op.drop_table("campaign_metrics")
