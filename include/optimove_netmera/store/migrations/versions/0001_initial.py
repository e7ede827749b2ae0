"""Initial state database: sync runs, snapshot, staging, plan, batches, events, campaigns, ledger.

Revision ID: 0001
Revises:
Create Date: 2026-09-07

Hand-written (checked against the models by tests/store/test_store.py::test_migrated_schema_matches_models).
Frozen: change the schema in a new revision, never here.

Portability notes
* Ids: BIGINT (BIGSERIAL on PostgreSQL); INTEGER PRIMARY KEY AUTOINCREMENT on SQLite, the only form
  that auto-increments there.
* Timestamps: TIMESTAMP WITH TIME ZONE, written as UTC; SQLite stores them as text
  ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), the server default produces the same format.
* JSON: JSONB on PostgreSQL, JSON (text) on SQLite.
* Statuses: VARCHAR with a CHECK constraint listing the allowed values.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)
EMPTY_OBJECT = sa.text("'{}'")
EMPTY_LIST = sa.text("'[]'")
ZERO = sa.text("0")


def _now() -> sa.TextClause:
    """Server-side 'now' in UTC, in the text format SQLAlchemy uses for SQLite DATETIME."""
    if op.get_context().dialect.name == "sqlite":
        return sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))")
    return sa.text("now()")


def _check_in(table: str, column: str, values: Sequence[str]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(f"ck_{table}_{column}"))


SYNC_RUN_STATUSES = ("running", "success", "failed", "dry_run", "aborted")
CHANGE_STATUSES = ("pending", "delivered", "not_found", "failed", "dead", "skipped")
BATCH_KINDS = ("set", "unset")
BATCH_STATUSES = ("pending", "in_flight", "delivered", "failed", "dead")
EVENT_SOURCES = ("webhook", "reconcile", "manual")
EVENT_STATUSES = (
    "received",
    "queued",
    "processing",
    "dispatched",
    "sent",
    "ignored",
    "cancelled",
    "failed",
)
CAMPAIGN_STATES = ("received", "staged", "waiting", "sending", "done", "cancelled", "failed")
CANCEL_SCOPES = ("all", "partial")
RECIPIENT_STATUSES = ("pending", "in_flight", "sent", "failed", "cancelled", "skipped", "unknown")
DEAD_LETTER_KINDS = ("profile_set", "profile_unset", "send")


def upgrade() -> None:
    now = _now()

    # ---- user sync ---------------------------------------------------------------------------
    op.create_table(
        "sync_runs",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("dag_run_id", sa.String(250), nullable=True),
        sa.Column("status", sa.String(16), server_default="running", nullable=False),
        sa.Column("full_refresh", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("window_start", sa.Date(), nullable=True),
        sa.Column("window_end", sa.Date(), nullable=True),
        sa.Column("params", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("counts", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("phase_seconds", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TS, server_default=now, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        sa.UniqueConstraint("dag_id", "dag_run_id", name=op.f("uq_sync_runs_dag_id_dag_run_id")),
        _check_in("sync_runs", "status", SYNC_RUN_STATUSES),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sync_runs_status_dry_run_window_end"), "sync_runs", ["status", "dry_run", "window_end"])

    op.create_table(
        "customer_snapshot",
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=False),
        sa.Column("attr_hash", sa.String(64), nullable=False),
        sa.Column("present_attrs", JSON, server_default=EMPTY_LIST, nullable=False),
        sa.Column("delivered_at", TS, server_default=now, nullable=False),
        sa.Column("sync_run_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_snapshot")),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_customer_snapshot_sync_run_id_sync_runs"),
            ondelete="SET NULL",
        ),
    )

    op.create_table(
        "sync_staging",
        sa.Column("sync_run_id", sa.BigInteger(), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=True),
        sa.Column("attributes", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.PrimaryKeyConstraint("sync_run_id", "customer_id", name=op.f("pk_sync_staging")),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_staging_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
    )

    op.create_table(
        "sync_changes",
        sa.Column("sync_run_id", sa.BigInteger(), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=False),
        sa.Column("new_hash", sa.String(64), nullable=False),
        sa.Column("set_attrs", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("unset_attrs", JSON, server_default=EMPTY_LIST, nullable=False),
        sa.Column("present_attrs", JSON, server_default=EMPTY_LIST, nullable=False),
        sa.Column("set_batch_no", sa.Integer(), nullable=True),
        sa.Column("unset_batch_no", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("sync_run_id", "customer_id", name=op.f("pk_sync_changes")),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_changes_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        _check_in("sync_changes", "status", CHANGE_STATUSES),
    )
    op.create_index(op.f("ix_sync_changes_sync_run_id_set_batch_no"), "sync_changes", ["sync_run_id", "set_batch_no"])
    op.create_index(
        op.f("ix_sync_changes_sync_run_id_unset_batch_no"), "sync_changes", ["sync_run_id", "unset_batch_no"]
    )
    op.create_index(op.f("ix_sync_changes_sync_run_id_status"), "sync_changes", ["sync_run_id", "status"])

    op.create_table(
        "sync_batches",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("sync_run_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("size", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_batches")),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_batches_sync_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("sync_run_id", "kind", "batch_no", name=op.f("uq_sync_batches_sync_run_id_kind_batch_no")),
        _check_in("sync_batches", "kind", BATCH_KINDS),
        _check_in("sync_batches", "status", BATCH_STATUSES),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sync_batches_sync_run_id_status"), "sync_batches", ["sync_run_id", "status"])

    # ---- campaign events ------------------------------------------------------------------------
    op.create_table(
        "events",
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_events_dedup_key")),
        _check_in("events", "source", EVENT_SOURCES),
        _check_in("events", "status", EVENT_STATUSES),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_events_status_event_type_id_id"), "events", ["status", "event_type_id", "id"])
    op.create_index(op.f("ix_events_campaign_id_channel_id"), "events", ["campaign_id", "channel_id"])

    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), server_default="received", nullable=False),
        sa.Column("event_time", TS, nullable=True),
        sa.Column("details", JSON, nullable=True),
        sa.Column("counts", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("cancelled_at", TS, nullable=True),
        sa.Column("cancel_scope", sa.String(8), nullable=True),
        sa.Column("cancel_fetched_at", TS, nullable=True),
        sa.Column("dag_run_id", sa.String(250), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "channel_id", name=op.f("pk_campaigns")),
        _check_in("campaigns", "state", CAMPAIGN_STATES),
        _check_in("campaigns", "cancel_scope", CANCEL_SCOPES),
    )

    op.create_table(
        "recipients",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("template_id", sa.BigInteger(), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=True),
        sa.Column("scheduled_time", TS, nullable=True),
        sa.Column("notification_key", sa.String(64), nullable=True),
        sa.Column("params", JSON, server_default=EMPTY_OBJECT, nullable=False),
        sa.Column("promo_code", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("chunk_no", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("updated_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipients")),
        sa.ForeignKeyConstraint(
            ["campaign_id", "channel_id"],
            ["campaigns.campaign_id", "campaigns.channel_id"],
            name=op.f("fk_recipients_campaign_id_channel_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "campaign_id",
            "channel_id",
            "customer_id",
            "template_id",
            name=op.f("uq_recipients_campaign_id_channel_id_customer_id_template_id"),
        ),
        _check_in("recipients", "status", RECIPIENT_STATUSES),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_recipients_campaign_id_channel_id_status"), "recipients", ["campaign_id", "channel_id", "status"]
    )
    op.create_index(
        op.f("ix_recipients_campaign_id_channel_id_chunk_no"),
        "recipients",
        ["campaign_id", "channel_id", "chunk_no"],
    )

    op.create_table(
        "cancelled_customers",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("fetched_at", TS, server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "customer_id", name=op.f("pk_cancelled_customers")),
    )

    # ---- dead letters ---------------------------------------------------------------------------
    op.create_table(
        "dead_letters",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("ext_id", sa.String(255), nullable=True),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("created_at", TS, server_default=now, nullable=False),
        sa.Column("replayed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("kind", "ref", "customer_id", name=op.f("uq_dead_letters_kind_ref_customer_id")),
        _check_in("dead_letters", "kind", DEAD_LETTER_KINDS),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_dead_letters_kind_replayed_at"), "dead_letters", ["kind", "replayed_at"])


def downgrade() -> None:
    # Children before parents; indexes go with their tables.
    for table in (
        "dead_letters",
        "cancelled_customers",
        "recipients",
        "campaigns",
        "events",
        "sync_batches",
        "sync_changes",
        "sync_staging",
        "customer_snapshot",
        "sync_runs",
    ):
        op.drop_table(table)
