"""SQLAlchemy 2 models of the optimove-netmera state database.

Conventions (kept identical in the hand-written migrations under ``migrations/versions``):

* Every timestamp is a :class:`UTCDateTime`: timezone-aware UTC on the way in and out, on SQLite and
  PostgreSQL alike. Naive datetimes are rejected. Server-side defaults come from :class:`utcnow`.
* Status-like columns are plain strings guarded by a ``CHECK (col IN (...))`` constraint generated from
  the ``StrEnum`` next to the model, so the database itself refuses an unknown status. Adding a status
  therefore needs a migration (batch mode on SQLite).
* JSON columns are :data:`JSONType`: ``JSON`` everywhere, ``JSONB`` on PostgreSQL; Python ``None`` is
  stored as SQL ``NULL`` (never the JSON literal ``null``).
* Surrogate ids are ``BIGINT`` autoincrement (``BIGSERIAL`` on PostgreSQL); on SQLite they are
  ``INTEGER PRIMARY KEY AUTOINCREMENT`` because only that form auto-increments there.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import expression
from sqlalchemy.types import TypeDecorator

__all__ = [
    "NAMING_CONVENTION",
    "NO_ATTRIBUTES",
    "AttributeName",
    "Base",
    "BatchKind",
    "BatchStatus",
    "BigIntPK",
    "Campaign",
    "CampaignMetricReport",
    "CampaignState",
    "CancelScope",
    "CancelledCustomer",
    "ChangeStatus",
    "ChannelTemplate",
    "CustomerSnapshot",
    "DeadLetter",
    "DeadLetterKind",
    "Event",
    "EventSource",
    "EventStatus",
    "JSONTextType",
    "JSONType",
    "Recipient",
    "RecipientStatus",
    "SendChunk",
    "SyncBatch",
    "SyncChange",
    "SyncRun",
    "SyncRunStatus",
    "SyncStaging",
    "UTCDateTime",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# --------------------------------------------------------------------------------------------------
# Portable column types
# --------------------------------------------------------------------------------------------------


def as_utc(moment: dt.datetime) -> dt.datetime:
    """``moment`` as an aware datetime: a naive one is UTC (SQLite hands back naive UTC from a raw query)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    Binding a naive datetime raises ``ValueError`` (an ambiguous wall-clock time must be converted by
    the caller, e.g. with the tenant's timezone). Values come back as aware ``datetime`` in UTC. On
    SQLite the value is stored as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, so string order is time order.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"UTCDateTime needs a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} is not allowed in the state database; "
                "attach a timezone (e.g. datetime.now(UTC) or .replace(tzinfo=...))"
            )
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class utcnow(expression.FunctionElement[dt.datetime]):
    """The current time in UTC, evaluated by the database (server-side defaults and ``onupdate``)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "utcnow"


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: Any, **kw: Any) -> str:
    # Same text format SQLAlchemy uses for SQLite DATETIME (microseconds, UTC), so that server- and
    # client-written values compare correctly as strings.
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


JSONType = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
"""Portable JSON column type (JSONB on PostgreSQL)."""

JSONTextType = sa.JSON(none_as_null=True).with_variant(postgresql.JSON(none_as_null=True), "postgresql")
"""JSON kept as the text written (``json`` on PostgreSQL; SQLite keeps every JSON as text): for JSON that is sent on
as it is, which ``jsonb`` would print again from its binary form each time it is read as text."""

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""BIGINT surrogate key that also auto-increments on SQLite."""


def _check_in(column: str, values: type[StrEnum]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{member.value}'" for member in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=column)


def _of_campaign() -> sa.ForeignKeyConstraint:
    """A (campaign_id, channel_id) row of ``campaigns``: deleted with it."""
    return sa.ForeignKeyConstraint(
        ["campaign_id", "channel_id"], ["campaigns.campaign_id", "campaigns.channel_id"], ondelete="CASCADE"
    )


def _created_at() -> Mapped[dt.datetime]:
    return mapped_column(UTCDateTime(), nullable=False, server_default=utcnow())


def _updated_at() -> Mapped[dt.datetime]:
    return mapped_column(UTCDateTime(), nullable=False, server_default=utcnow(), onupdate=utcnow())


# --------------------------------------------------------------------------------------------------
# Status vocabularies
# --------------------------------------------------------------------------------------------------


class SyncRunStatus(StrEnum):
    """Lifecycle of one user-sync run."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    ABORTED = "aborted"


class ChangeStatus(StrEnum):
    """Per-customer outcome of a planned change.

    A delivered change keeps ``pending``: its batches' status records the delivery, and a pending change whose every
    part's batch is delivered counts as delivered (``sync.load.change_counts``); the row is not rewritten.
    """

    PENDING = "pending"  # planned; delivered once every batch holding its parts is
    DELIVERED = "delivered"  # stored by versions that rewrote each delivered row; still counted as delivered
    NOT_FOUND = "not_found"  # extId unknown to Netmera: counted, retried by a later run
    FAILED = "failed"
    DEAD = "dead"  # written to dead_letters
    SKIPPED = "skipped"


class BatchKind(StrEnum):
    """Which Netmera call a batch goes to."""

    SET = "set"  # setProfileAttributes
    UNSET = "unset"  # unsetProfileAttributes


class BatchStatus(StrEnum):
    """Lifecycle of one profile batch."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"


class EventSource(StrEnum):
    """Where an event row came from."""

    WEBHOOK = "webhook"
    RECONCILE = "reconcile"
    MANUAL = "manual"


class EventStatus(StrEnum):
    """Processing state of an inbound event."""

    RECEIVED = "received"  # stored, not acted on yet
    QUEUED = "queued"  # waiting in the single-target queue (event 11)
    PROCESSING = "processing"  # claimed by a drainer
    DISPATCHED = "dispatched"  # handed on (a DAG run triggered, a cancel applied)
    SENT = "sent"  # single-target push requested
    IGNORED = "ignored"  # an event type not acted on (1, 2, 5, 14)
    HELD = "held"  # not acted on until its channel (or, for 11, its template) is configured; then re-dispatched
    CANCELLED = "cancelled"  # single-target event whose campaign was cancelled
    FAILED = "failed"


class CampaignState(StrEnum):
    """State of one (campaign, channel)."""

    RECEIVED = "received"
    STAGED = "staged"
    WAITING = "waiting"
    SENDING = "sending"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class CancelScope(StrEnum):
    """Whether Optimove cancelled the whole campaign or only some customers."""

    ALL = "all"
    PARTIAL = "partial"


class RecipientStatus(StrEnum):
    """Send-ledger state of one recipient."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # control group, missing data, unknown extId: see reason
    UNKNOWN = "unknown"  # was in flight when its worker died; re-sent only on explicit request


class DeadLetterKind(StrEnum):
    """What could not be delivered."""

    PROFILE_SET = "profile_set"
    PROFILE_UNSET = "profile_unset"
    SEND = "send"


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    """Declarative base of the state database (its own MetaData, with a naming convention)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class SyncRun(Base):
    """One run of the user sync: its window, outcome, counts and timings."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        _check_in("status", SyncRunStatus),
        sa.UniqueConstraint("dag_id", "dag_run_id"),
        # "last successful sync": WHERE status='success' AND dry_run=false ORDER BY window_end DESC LIMIT 1
        sa.Index(None, "status", "dry_run", "window_end"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    dag_id: Mapped[str | None] = mapped_column(sa.String(250))
    dag_run_id: Mapped[str | None] = mapped_column(sa.String(250))
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=SyncRunStatus.RUNNING.value, server_default="running"
    )
    full_refresh: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, default=False, server_default=sa.false())
    dry_run: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, default=False, server_default=sa.false())
    window_start: Mapped[dt.date | None] = mapped_column(sa.Date())  # inclusive; NULL = from the beginning
    window_end: Mapped[dt.date | None] = mapped_column(sa.Date())  # inclusive; Optimove data date covered
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )
    counts: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )
    phase_seconds: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )
    error: Mapped[str | None] = mapped_column(sa.Text())
    started_at: Mapped[dt.datetime] = _created_at()
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = _updated_at()


NO_ATTRIBUTES = "0"
"""``present_bits`` of the empty set of attributes (the columns' default)."""


class AttributeName(Base):
    """A Netmera attribute name and its bit in the attribute sets the snapshot and the plan store (``present_bits``).

    Append-only: a name keeps its bit for good (``id - 1``), so a set stored years ago still reads back. A set of
    20 names is 5 hex digits instead of ~300 bytes of JSON in each of a million snapshot and change rows.
    """

    __tablename__ = "attribute_names"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)


class CustomerSnapshot(Base):
    """What Netmera holds for a customer, as last delivered by a sync."""

    __tablename__ = "customer_snapshot"
    # PostgreSQL: 40% of each page left free, so a later sync's update of a row stays on its page (no new index
    # entry, no bloat); revision 0007.
    __table_args__ = ({"postgresql_with": {"fillfactor": 60}},)

    customer_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    ext_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    attr_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # hex digest of mapped attributes
    # The Netmera attribute names delivered non-empty, as a set of AttributeName bits (hex; revision 0009): an
    # attribute in here that is now empty must be unset.
    present_bits: Mapped[str] = mapped_column(sa.Text(), nullable=False, server_default=NO_ATTRIBUTES)
    delivered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, server_default=utcnow())
    # The run that delivered the row: no foreign key (revision 0006), PostgreSQL checked it for every row a load
    # advances, which doubled the snapshot upsert; only the loading run's id is written and no run is deleted.
    sync_run_id: Mapped[int | None] = mapped_column(sa.BigInteger())


class SyncStaging(Base):
    """Extracted customers of one sync run (large data lives here, never in XCom)."""

    __tablename__ = "sync_staging"

    sync_run_id: Mapped[int] = mapped_column(
        sa.BigInteger(), sa.ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    ext_id: Mapped[str | None] = mapped_column(sa.String(255))
    attributes: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )


class SyncChange(Base):
    """The plan: one row per changed customer of a sync run, with its set and unset batch."""

    __tablename__ = "sync_changes"
    __table_args__ = (
        _check_in("status", ChangeStatus),
        sa.Index(None, "sync_run_id", "set_batch_no"),
        sa.Index(None, "sync_run_id", "unset_batch_no"),
        sa.Index(None, "sync_run_id", "status"),
    )

    sync_run_id: Mapped[int] = mapped_column(
        sa.BigInteger(), sa.ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    ext_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    new_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    set_attrs: Mapped[dict[str, Any]] = mapped_column(
        JSONTextType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )  # Netmera attribute name -> value to write, the text a profile request's body is built from
    unset_attrs: Mapped[list[str]] = mapped_column(
        JSONType, nullable=False, default=list, server_default=sa.text("'[]'")
    )  # Netmera attribute names to remove
    present_bits: Mapped[str] = mapped_column(
        sa.Text(), nullable=False, server_default=NO_ATTRIBUTES
    )  # the snapshot's present_bits once this change is delivered
    set_batch_no: Mapped[int | None] = mapped_column(sa.Integer())  # NULL: nothing to set
    unset_batch_no: Mapped[int | None] = mapped_column(sa.Integer())  # NULL: nothing to unset
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=ChangeStatus.PENDING.value, server_default="pending"
    )
    reason: Mapped[str | None] = mapped_column(sa.Text())
    # The customer had no snapshot row when the plan compared it: its delivery inserts the row rather than upserting
    # it (PostgreSQL, optimove_netmera.sync.load._advance_snapshot; a row found there after all is upserted). False
    # says nothing (rows written before revision 0008 are upserted, as every row was).
    new_customer: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, default=False, server_default=sa.false())


class SyncBatch(Base):
    """One Netmera profile request (<= 1000 extIds) of a sync run; the unit of resumption."""

    __tablename__ = "sync_batches"
    __table_args__ = (
        _check_in("kind", BatchKind),
        _check_in("status", BatchStatus),
        sa.UniqueConstraint("sync_run_id", "kind", "batch_no"),
        sa.Index(None, "sync_run_id", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    sync_run_id: Mapped[int] = mapped_column(
        sa.BigInteger(), sa.ForeignKey("sync_runs.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    batch_no: Mapped[int] = mapped_column(sa.Integer(), nullable=False)
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=BatchStatus.PENDING.value, server_default="pending"
    )
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0, server_default=sa.text("0"))
    size: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0, server_default=sa.text("0"))
    error: Mapped[str | None] = mapped_column(sa.Text())
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class Event(Base):
    """Every inbound Optimove event, kept with its raw payload under a unique dedup key."""

    __tablename__ = "events"
    __table_args__ = (
        _check_in("source", EventSource),
        _check_in("status", EventStatus),
        sa.UniqueConstraint("dedup_key"),
        # the single-target queue: WHERE status='queued' AND event_type_id=11 ORDER BY id
        sa.Index(None, "status", "event_type_id", "id"),
        sa.Index(None, "campaign_id", "channel_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    event_type_id: Mapped[int] = mapped_column(sa.Integer(), nullable=False)
    campaign_id: Mapped[int | None] = mapped_column(sa.BigInteger())
    channel_id: Mapped[int | None] = mapped_column(sa.Integer())
    customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    template_id: Mapped[int | None] = mapped_column(sa.BigInteger())
    promo_code: Mapped[str | None] = mapped_column(sa.Text())
    event_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # the payload's TimeStamp, in UTC
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, server_default=utcnow())
    source: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=EventSource.WEBHOOK.value, server_default="webhook"
    )
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=EventStatus.RECEIVED.value, server_default="received"
    )
    dag_run_id: Mapped[str | None] = mapped_column(sa.String(250))
    raw_payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    note: Mapped[str | None] = mapped_column(sa.Text())
    updated_at: Mapped[dt.datetime] = _updated_at()


class Campaign(Base):
    """State of one (campaign, channel): received -> staged -> waiting -> sending -> done | cancelled."""

    __tablename__ = "campaigns"
    __table_args__ = (
        _check_in("state", CampaignState),
        _check_in("cancel_scope", CancelScope),
    )

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=CampaignState.RECEIVED.value, server_default="received"
    )
    event_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # actions/GetCampaignDetails
    counts: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancel_scope: Mapped[str | None] = mapped_column(sa.String(8))
    cancel_fetched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # GetCanceledCampaignCustomers
    dag_run_id: Mapped[str | None] = mapped_column(sa.String(250))
    error: Mapped[str | None] = mapped_column(sa.Text())
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class Recipient(Base):
    """The send ledger: one row per (campaign, channel, customer, template)."""

    __tablename__ = "recipients"
    __table_args__ = (
        _check_in("status", RecipientStatus),
        _of_campaign(),
        sa.UniqueConstraint("campaign_id", "channel_id", "customer_id", "template_id"),
        # no index on status: a send moves every recipient's status twice (migration 0004 says why)
        sa.Index(None, "campaign_id", "channel_id", "chunk_no"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False)
    channel_id: Mapped[int] = mapped_column(sa.Integer(), nullable=False)
    customer_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    template_id: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False)
    ext_id: Mapped[str | None] = mapped_column(sa.String(255))
    scheduled_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    notification_key: Mapped[str | None] = mapped_column(sa.String(64))  # always a string for Netmera
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=sa.text("'{}'")
    )
    promo_code: Mapped[str | None] = mapped_column(sa.Text())
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=RecipientStatus.PENDING.value, server_default="pending"
    )
    reason: Mapped[str | None] = mapped_column(sa.Text())
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0, server_default=sa.text("0"))
    chunk_no: Mapped[int | None] = mapped_column(sa.Integer())
    request_id: Mapped[str | None] = mapped_column(sa.String(64))  # the request it was (last) sent in
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class SendChunk(Base):
    """One chunk of the send ledger: at most one ``sendNotification`` request's recipients, claimed and settled as one.

    The claim (pending -> in_flight, with the request id) and the outcome (sent, failed, skipped or unknown) are
    written here once per request, not once per recipient. A recipient whose own row is ``pending`` has its chunk's
    status (and reason, request id, sent time) once the chunk left ``pending``; a row with a status of its own
    (``cancelled``, ``skipped`` at staging) keeps it. Cancels and restores only move the rows of chunks that are
    still pending.
    """

    __tablename__ = "send_chunks"
    __table_args__ = (
        _check_in("status", RecipientStatus),
        _of_campaign(),
    )

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    chunk_no: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=RecipientStatus.PENDING.value, server_default="pending"
    )
    reason: Mapped[str | None] = mapped_column(sa.Text())
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0, server_default=sa.text("0"))
    request_id: Mapped[str | None] = mapped_column(sa.String(64))  # the request it was (last) claimed for
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class CancelledCustomer(Base):
    """Customers of a partially cancelled campaign (customers/GetCanceledCampaignCustomers)."""

    __tablename__ = "cancelled_customers"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    customer_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    fetched_at: Mapped[dt.datetime] = _created_at()


class DeadLetter(Base):
    """What could not be delivered after retries; replayable."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        _check_in("kind", DeadLetterKind),
        # one letter per (kind, ref, customer): a retried task updates it instead of adding another
        sa.UniqueConstraint("kind", "ref", "customer_id"),
        sa.Index(None, "kind", "replayed_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    ref: Mapped[str] = mapped_column(sa.String(255), nullable=False)  # sync run id, or "campaign:channel"
    customer_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    ext_id: Mapped[str | None] = mapped_column(sa.String(255))
    payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    reason: Mapped[str | None] = mapped_column(sa.Text())
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0, server_default=sa.text("0"))
    created_at: Mapped[dt.datetime] = _created_at()
    replayed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class CampaignMetricReport(Base):
    """The metrics ledger: what Optimove accepted per (campaign, channel, template, MetricID).

    ``reported`` is the sum of the values Optimove accepted (it adds what it receives to its aggregate), so a
    report sends ``total - reported`` and only rows whose total moved. ``sending`` holds a value whose request
    has not been answered: set before the request, folded into ``reported`` once accepted, cleared when the
    request certainly was not processed, and left set (outcome unknown: never sent again on its own) after a
    5xx or timeout.
    """

    __tablename__ = "campaign_metrics"
    __table_args__ = (_of_campaign(),)

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    template_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    metric_id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    reported: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False, default=0, server_default=sa.text("0"))
    sending: Mapped[int | None] = mapped_column(sa.BigInteger())
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class ChannelTemplate(Base):
    """Templates this integration added to an Optimove channel (AddChannelTemplates): the only ones it deletes."""

    __tablename__ = "channel_templates"

    channel_id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    template_id: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()
