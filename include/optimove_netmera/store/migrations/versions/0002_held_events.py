"""Events may be ``held``: stored, not acted on until the configuration covers their channel or template.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Hand-written. Replaces the CHECK constraint on ``events.status`` (SQLite: by alembic's batch mode, which copies the
table). Downgrading turns held events into ``ignored`` ones first (what 0001 stored for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import conv

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("received", "queued", "processing", "dispatched", "sent", "ignored", "cancelled", "failed")
NEW_STATUSES = (*OLD_STATUSES, "held")


BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)
SOURCES = ("webhook", "reconcile", "manual")


def _allowed(statuses: Sequence[str]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def _events_table(statuses: Sequence[str]) -> sa.Table:
    """The ``events`` table as 0001 created it (with ``statuses`` allowed), for SQLite's table copy: passing it
    spares alembic a reflection, so the migration also prints as SQL (``upgrade --sql``)."""
    now = sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))")
    sources = ", ".join(f"'{s}'" for s in SOURCES)
    return sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("event_type_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.String(255), nullable=True),
        sa.Column("template_id", sa.BigInteger(), nullable=True),
        sa.Column("promo_code", sa.Text(), nullable=True),
        sa.Column("event_time", TS, nullable=True),
        sa.Column("received_at", TS, server_default=now, nullable=False),
        sa.Column("source", sa.String(16), server_default="webhook", nullable=False),
        sa.Column("status", sa.String(16), server_default="received", nullable=False),
        sa.Column("dag_run_id", sa.String(250), nullable=True),
        sa.Column("raw_payload", JSON, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=conv("pk_events")),
        sa.UniqueConstraint("dedup_key", name=conv("uq_events_dedup_key")),
        sa.CheckConstraint(f"source IN ({sources})", name=conv("ck_events_source")),
        sa.CheckConstraint(_allowed(statuses), name=conv("ck_events_status")),
        sa.Index(conv("ix_events_status_event_type_id_id"), "status", "event_type_id", "id"),
        sa.Index(conv("ix_events_campaign_id_channel_id"), "campaign_id", "channel_id"),
        sqlite_autoincrement=True,
    )


def _replace_check(old: Sequence[str], new: Sequence[str]) -> None:
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_events_status"), "events", type_="check")
        op.create_check_constraint(op.f("ck_events_status"), "events", sa.text(_allowed(new)))
        return
    with op.batch_alter_table("events", copy_from=_events_table(old), recreate="always") as batch:
        batch.drop_constraint(op.f("ck_events_status"), type_="check")
        batch.create_check_constraint(op.f("ck_events_status"), sa.text(_allowed(new)))


def upgrade() -> None:
    _replace_check(OLD_STATUSES, NEW_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE events SET status = 'ignored' WHERE status = 'held'")
    _replace_check(NEW_STATUSES, OLD_STATUSES)
