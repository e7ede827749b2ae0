"""The send ledger (``recipients``): staging from Optimove, chunk planning, claims and transitions.

One row per (campaign, channel, customer, template), and one row per chunk (``send_chunks``: at most one
request's recipients). Lifecycle of a recipient::

    pending --claim--> in_flight --> sent | failed | skipped (Netmera 5016: no target known)
       |                   |            \\-> pending   (request certainly not processed: retried later)
       |                   \\-> unknown   (the request's outcome is unknown: worker died, 5xx, timeout)
       \\-> cancelled | skipped (control group, no template mapping, missing required param)
    unknown --(resend_unknown)--> pending

The claim and the outcome are written once per chunk, not once per recipient: a recipient whose own row is
``pending`` has its chunk's status once the chunk left ``pending`` (:func:`ledger` reads the statuses so); a row
with a status of its own (``cancelled``, ``skipped`` at staging) keeps it. Cancels and restores move only the rows
of chunks never claimed (:func:`~optimove_netmera.campaigns.state.unclaimed`).

Staging is idempotent (``INSERT ... ON CONFLICT DO NOTHING`` on the ledger key), so a retried or cleared
stage task never resets a row that was already sent. Chunk numbers are assigned once per row, under a lock
on the campaign row, so every run of the same campaign sees the same chunks. A chunk is claimed with one
conditional ``UPDATE send_chunks ... WHERE status='pending' AND <campaign not cancelled>`` that marks it with the
claim's request id: two workers can never both get a chunk, and a cancel committed before the claim leaves nothing
to claim. The request body is then built by the database from the chunk's rows still pending on their own
(:class:`Claim`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.state import (
    CANCEL_ALL_REASON,
    CANCEL_REASON,
    PARTIAL_CANCEL_REASON,
    cancel_status,
    lock_chunks,
    unclaimed,
)
from optimove_netmera.gc_passes import fewer_gc_passes
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.read_ahead import read_ahead
from optimove_netmera.settings import Settings
from optimove_netmera.store import (
    Campaign,
    CampaignState,
    CancelledCustomer,
    DeadLetter,
    DeadLetterKind,
    Recipient,
    RecipientStatus,
    SendChunk,
    UTCDateTime,
    connection,
    one_row_bytes,
    refresh_statistics,
    session_scope,
    sqlite_values_insert,
    transition,
    transition_statement,
    upsert,
)
from optimove_netmera.store.engine import JSON_OPTIONS

__all__ = [
    "ORPHAN_REASON",
    "Batch",
    "Claim",
    "claim_chunk",
    "dead_letter",
    "finish_request",
    "ledger",
    "mark_orphans_unknown",
    "plan_chunks",
    "reapply_cancel",
    "reason_counts",
    "release_unknown",
    "request_count",
    "stage_recipients",
    "status_counts",
    "template_counts",
]

log = logging.getLogger(__name__)

ORPHAN_REASON = "request in flight when its worker died: outcome unknown"
LEDGER_KEY = ("campaign_id", "channel_id", "customer_id", "template_id")
_R = Recipient.__table__
_C = Campaign.__table__
_K = SendChunk.__table__


def ledger() -> sa.Subquery:
    """The send ledger as its readers see it: ``recipients``' columns, with ``status``, ``reason``, ``request_id``
    and ``sent_at`` those of the recipient's chunk where its own row is ``pending`` and the chunk left ``pending``
    (the chunk was claimed, or settled, for every recipient still pending in it)."""
    by_chunk = sa.and_(
        _R.c.status == RecipientStatus.PENDING.value,
        _K.c.status.is_not(None),
        _K.c.status != RecipientStatus.PENDING.value,
    )

    def pick(own: Any, chunk: Any, name: str) -> Any:
        return sa.case((by_chunk, chunk), else_=own).label(name)

    joined = _R.outerjoin(
        _K,
        sa.and_(
            _K.c.campaign_id == _R.c.campaign_id, _K.c.channel_id == _R.c.channel_id, _K.c.chunk_no == _R.c.chunk_no
        ),
    )
    own = [c for c in _R.c if c.name not in ("status", "reason", "request_id", "sent_at")]
    return (
        sa.select(
            *own,
            pick(_R.c.status, _K.c.status, "status"),
            pick(_R.c.reason, _K.c.reason, "reason"),
            pick(_R.c.request_id, _K.c.request_id, "request_id"),
            pick(_R.c.sent_at, _K.c.sent_at, "sent_at"),
        )
        .select_from(joined)
        .subquery("ledger")
    )


def _mine(campaign_id: int, channel_id: int, rows: Any = _R) -> tuple[Any, Any]:
    """SQL: the rows of ``rows`` (``recipients``, or the :func:`ledger` view) of one campaign and channel."""
    return (rows.c.campaign_id == int(campaign_id), rows.c.channel_id == int(channel_id))


# --------------------------------------------------------------------------------------------------
# Staging
# --------------------------------------------------------------------------------------------------


def stage_recipients(
    engine: Engine,
    client: OptimoveClient,
    campaign_id: int,
    channel_id: int,
    settings: Settings,
    *,
    page_size: int | None = None,
    template_names: dict[int, str] | None = None,
) -> dict[str, int]:
    """Page ``GetCustomerExecutionDetailsByCampaign`` into the ledger; return counts (no customer data).

    ``template_names`` (if given) collects the TemplateName Optimove gives each TemplateID.

    ``CustomerAttributes`` are the Optimove side of ``campaigns.params``. A row repeating a (customer, template)
    of the same page is dropped here; one repeating an earlier page's is dropped by the ledger's key (``ON
    CONFLICT DO NOTHING``: the first one stays), and existing ledger rows are left as they are (a re-stage after a
    partial send changes nothing that was sent). So memory does not grow with the campaign: across pages only a
    64-bit hash of each key (and its control flag) is kept, for the ``distinct`` / ``duplicates_dropped`` /
    ``control_group`` counts. The next page is fetched (in a thread) while this one is written; pages are paced
    by the client's rate limiter. The garbage collector leaves the process's other objects alone meanwhile
    (:func:`~optimove_netmera.gc_passes.fewer_gc_passes`): its full passes over them took a third of the time.
    """
    attributes = list(settings.campaigns.params)
    counts: Counter[str] = Counter()
    hashes: list[np.ndarray] = []
    controls: list[np.ndarray] = []
    cid, ch = int(campaign_id), int(channel_id)
    source = client.iter_campaign_recipients(cid, ch, attributes, page_size=page_size)
    with fewer_gc_passes(), closing(read_ahead(source, "stage-prefetch")) as pages:
        for page in pages:
            rows: list[dict[str, Any]] = []
            page_keys: set[tuple[str, int]] = set()
            page_hashes: list[int] = []
            page_controls: list[bool] = []
            for detail, row in zip(page, personalise.ledger_rows(page, settings), strict=True):
                if template_names is not None and detail.template_name and row["template_id"] not in template_names:
                    template_names[row["template_id"]] = personalise.without_nul(detail.template_name)
                key = (row["customer_id"], row["template_id"])
                if key in page_keys:
                    continue
                page_keys.add(key)
                page_hashes.append(hash(key))
                page_controls.append(detail.is_control)
                rows.append(row)
            counts["fetched"] += len(page)
            hashes.append(np.array(page_hashes, dtype=np.int64))
            controls.append(np.array(page_controls, dtype=bool))
            _insert_ledger_rows(engine, cid, ch, rows)
            counts["pages"] += 1
    # first occurrences (in fetch order: the rows the ledger kept) of the distinct keys
    distinct, first = np.unique(np.concatenate(hashes or [np.empty(0, np.int64)]), return_index=True)
    is_control = np.concatenate(controls or [np.empty(0, bool)])
    counts["distinct"] = int(distinct.size)
    counts["duplicates_dropped"] = counts["fetched"] - int(distinct.size)
    counts["control_group"] = int(is_control[first].sum())
    return {k: v for k, v in counts.items() if v or k in ("fetched", "pages", "distinct")}


_LEDGER_COLUMNS = (
    "campaign_id",
    "channel_id",
    "customer_id",
    "template_id",
    "ext_id",
    "scheduled_time",
    "notification_key",
    "params",
    "promo_code",
    "status",
    "reason",
    "attempts",
)
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's SQLite DateTime stores a value (UTC here)


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


_PENDING = RecipientStatus.PENDING.value


def _chunk_order(group: tuple[bool, dt.datetime | None, int]) -> tuple[bool, bool, dt.datetime, int]:
    """Rows as their chunks will take them: the pending ones by scheduled time and template."""
    not_pending, when, template_id = group
    return not_pending, when is not None, when or _NO_TIME, template_id


def _in_chunk_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` sorted by :func:`_chunk_order`, stable: grouped first (a page holds a few groups), then the groups
    sorted (a sort of 10,000 rows by a key function cost more than the rest of their ledger insert's Python)."""
    groups: dict[tuple[bool, dt.datetime | None, int], list[dict[str, Any]]] = {}
    for row in rows:
        group = (row["status"] != _PENDING, row["scheduled_time"], row["template_id"])
        members = groups.get(group)
        if members is None:
            groups[group] = members = []
        members.append(row)
    return [row for group in sorted(groups, key=_chunk_order) for row in groups[group]]


def _insert_ledger_rows(engine: Engine, campaign_id: int, channel_id: int, rows: list[dict[str, Any]]) -> None:
    """Insert a page's ledger rows of one campaign and channel, in one transaction; a row whose key exists is left
    as it is (``ON CONFLICT DO NOTHING``).

    The rows go in in the order the chunks take them (:func:`_chunk_order`; a page holds each key once, so the
    order decides nothing else): a chunk's rows then lie together in the table, and its claim and outcome rewrite
    a few pages instead of every page of the page's rows (with two templates interleaved, half as many).

    On SQLite the values are converted here exactly as the column types would convert them (``UTCDateTime``, the
    JSON columns' encoder), and go in with :func:`~optimove_netmera.store.queries.sqlite_values_insert`: its
    statements run without the interpreter lock, so the page is written while the next one is parsed (with the
    driver's executemany each row waited for the lock behind the parsing thread). PostgreSQL takes the generic
    upsert (batched by psycopg's executemany).
    """
    if not rows:
        return
    rows = _in_chunk_order(rows)
    if engine.dialect.name != "sqlite":
        keyed = [{"campaign_id": campaign_id, "channel_id": channel_id, **r} for r in rows]
        with session_scope(engine) as session:
            upsert(session, Recipient, keyed, conflict_columns=LEDGER_KEY, update_columns=[])
        return
    time_type, dialect = UTCDateTime(), engine.dialect
    encode = JSON_OPTIONS["json_serializer"]

    times: dict[dt.datetime | None, str | None] = {}  # a campaign's rows share a few scheduled times

    def when(value: dt.datetime | None) -> str | None:
        if value not in times:
            stored = time_type.process_bind_param(value, dialect)
            times[value] = None if stored is None else stored.strftime(_TIME_FORMAT)
        return times[value]

    values = [
        (
            campaign_id,
            channel_id,
            r["customer_id"],
            r["template_id"],
            r["ext_id"],
            when(r["scheduled_time"]),
            r["notification_key"],
            None if r["params"] is None else encode(r["params"]),
            r["promo_code"],
            r["status"],
            r["reason"],
            0,
        )
        for r in rows
    ]
    conflict = f"ON CONFLICT ({', '.join(LEDGER_KEY)}) DO NOTHING"
    with engine.begin() as conn:
        sqlite_values_insert(conn, Recipient.__tablename__, _LEDGER_COLUMNS, values, conflict)


def reapply_cancel(engine: Engine, campaign_id: int, channel_id: int) -> int:
    """After staging: cancel what a stored cancel covers (whole campaign, or the listed customers)."""
    status = cancel_status(engine, campaign_id, channel_id)
    with session_scope(engine) as session:
        lock_chunks(session, [int(campaign_id)], [int(channel_id)])
        if status.cancelled:
            return transition(
                session,
                Recipient,
                unclaimed(),
                key={"campaign_id": int(campaign_id), "channel_id": int(channel_id)},
                from_status=RecipientStatus.PENDING.value,
                to_status=RecipientStatus.CANCELLED.value,
                values={"reason": CANCEL_REASON if status.needs_narrowing else CANCEL_ALL_REASON},
            )
        if status.partial:
            listed = sa.select(CancelledCustomer.customer_id).where(CancelledCustomer.campaign_id == int(campaign_id))
            return transition(
                session,
                Recipient,
                unclaimed(),
                _R.c.customer_id.in_(listed),
                key={"campaign_id": int(campaign_id), "channel_id": int(channel_id)},
                from_status=RecipientStatus.PENDING.value,
                to_status=RecipientStatus.CANCELLED.value,
                values={"reason": PARTIAL_CANCEL_REASON},
            )
    return 0


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """The work of one mapped send task: chunks sharing a scheduled time."""

    campaign_id: int
    channel_id: int
    scheduled_time: str | None  # ISO 8601 UTC, None = send now
    chunks: list[int]
    recipients: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (what goes to XCom: ids and counts only)."""
        first, last = self.chunks[0], self.chunks[-1]
        return {
            "campaign_id": self.campaign_id,
            "channel_id": self.channel_id,
            "scheduled_time": self.scheduled_time,
            "chunks": list(self.chunks),
            "recipients": self.recipients,
            "label": f"chunks {first}..{last}" if first != last else f"chunk {first}",
        }


ASSIGN_BATCH = 10_000
"""Rows numbered per ``UPDATE`` executemany while chunks are assigned."""


def _assign_chunks(session: Any, campaign_id: int, channel_id: int, chunk_size: int) -> int:
    """Give every unchunked pending row a chunk number (per template and scheduled time); return rows assigned.

    Groups (scheduled time, template) in that order, rows by id within a group. A group's ids are read into an
    array first (8 bytes a row, no row objects), then numbered ``ASSIGN_BATCH`` rows per statement.
    """
    mine = _mine(campaign_id, channel_id)
    # Lock the campaign row first: concurrent planners of the same campaign queue here (PostgreSQL row lock,
    # SQLite write lock), so chunk numbers never collide.
    session.execute(
        sa.update(_C)
        .where(_C.c.campaign_id == int(campaign_id), _C.c.channel_id == int(channel_id))
        .values(updated_at=dt.datetime.now(dt.UTC))
    )
    unchunked = (*mine, _R.c.status == RecipientStatus.PENDING.value, _R.c.chunk_no.is_(None))
    groups = session.execute(
        sa.select(_R.c.scheduled_time, _R.c.template_id)
        .where(*unchunked)
        .group_by(_R.c.scheduled_time, _R.c.template_id)
        .order_by(_R.c.scheduled_time, _R.c.template_id)
    ).all()
    if not groups:
        return 0
    next_no = (session.scalar(sa.select(sa.func.max(_R.c.chunk_no)).where(*mine)) or 0) + 1
    first_no = next_no
    stmt = (
        sa.update(_R)
        .where(_R.c.id == sa.bindparam("rid"), _R.c.chunk_no.is_(None))
        .values(chunk_no=sa.bindparam("cno"))
    )
    assigned = 0
    for moment, template_id in groups:
        when = _R.c.scheduled_time.is_(None) if moment is None else _R.c.scheduled_time == moment
        in_group = sa.select(_R.c.id).where(*unchunked, _R.c.template_id == template_id, when).order_by(_R.c.id)
        ids = np.fromiter(session.connection().execute(in_group).scalars(), dtype=np.int64)  # streamed, not buffered
        if not ids.size:
            continue
        numbers = next_no + np.arange(ids.size, dtype=np.int64) // chunk_size
        for start in range(0, ids.size, ASSIGN_BATCH):
            part = slice(start, start + ASSIGN_BATCH)
            batch = zip(ids[part].tolist(), numbers[part].tolist(), strict=True)
            session.execute(stmt, [{"rid": rid, "cno": cno} for rid, cno in batch])
        assigned += int(ids.size)
        next_no = int(numbers[-1]) + 1
    if next_no > first_no:  # each new chunk starts pending (its claim and outcome are written on its row)
        key = {"campaign_id": int(campaign_id), "channel_id": int(channel_id)}
        session.execute(sa.insert(SendChunk), [{**key, "chunk_no": n} for n in range(first_no, next_no)])
    return assigned


def plan_chunks(
    engine: Engine,
    campaign_id: int,
    channel_id: int,
    chunk_size: int,
    *,
    include_unknown: bool,
    max_tasks_per_time: int = 8,
    min_chunks_per_task: int = 10,
) -> tuple[list[Batch], dict[str, Any]]:
    """Chunk the pending rows, then group the chunks with work left into send batches.

    A chunk holds at most ``chunk_size`` recipients of one template and one scheduled time (one Netmera
    request). Chunks with pending rows (and, for recovery, in-flight rows; unknown rows when
    ``include_unknown``) are split per scheduled time into at most ``max_tasks_per_time`` contiguous
    batches of at least ``min_chunks_per_task`` chunks, so a 100,000-recipient campaign is 100 chunks
    in 8 mapped tasks, not 100 task instances.
    """
    if not 1 <= chunk_size <= 1000:
        raise ValueError("chunk_size must be between 1 and 1000")
    cid, ch = int(campaign_id), int(channel_id)
    with session_scope(engine) as session:
        assigned = _assign_chunks(session, cid, ch, chunk_size)
    if assigned:  # the ledger was just staged and chunked: plan the reads below, and the send's, for its size
        refresh_statistics(engine, _R, _K)
    statuses = [RecipientStatus.PENDING.value, RecipientStatus.IN_FLIGHT.value]
    if include_unknown:
        statuses.append(RecipientStatus.UNKNOWN.value)
    view = ledger()
    with engine.connect() as conn:
        work = conn.execute(
            sa.select(
                view.c.chunk_no,
                sa.func.min(view.c.scheduled_time).label("scheduled_time"),
                sa.func.count().label("n"),
            )
            .where(*_mine(cid, ch, view), view.c.status.in_(statuses), view.c.chunk_no.is_not(None))
            .group_by(view.c.chunk_no)
            .order_by(view.c.chunk_no)
        ).all()
        groups = conn.execute(
            sa.select(_R.c.template_id, sa.func.count(sa.distinct(_R.c.chunk_no)))
            .where(*_mine(cid, ch), _R.c.chunk_no.is_not(None))
            .group_by(_R.c.template_id)
        ).all()
    scheduled_type = _R.c.scheduled_time.type
    by_time: dict[str | None, list[tuple[int, int]]] = {}
    for row in work:
        moment = scheduled_type.process_result_value(row.scheduled_time, engine.dialect)
        key = moment.isoformat() if isinstance(moment, dt.datetime) else None
        by_time.setdefault(key, []).append((int(row.chunk_no), int(row.n)))
    batches: list[Batch] = []
    for moment_iso, chunks in sorted(by_time.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        tasks = max(1, min(max_tasks_per_time, math.ceil(len(chunks) / max(1, min_chunks_per_task))))
        per_task = math.ceil(len(chunks) / tasks)
        for start in range(0, len(chunks), per_task):
            part = chunks[start : start + per_task]
            batches.append(Batch(cid, ch, moment_iso, [c for c, _ in part], sum(n for _, n in part)))
    info = {
        "assigned": assigned,
        "chunks_with_work": len(work),
        "send_tasks": len(batches),
        "chunks_per_template": {str(t): int(n) for t, n in groups},
    }
    return batches, info


# --------------------------------------------------------------------------------------------------
# Around each request
# --------------------------------------------------------------------------------------------------


def _pending_in(chunks: Any) -> Any:
    """SQL: the rows still pending on their own in the chunks ``chunks`` selects (``chunk_no`` values)."""
    return sa.and_(_R.c.status == RecipientStatus.PENDING.value, _R.c.chunk_no.in_(chunks))


def _count_pending(conn: Any, campaign_id: int, channel_id: int, chunks: Any) -> int:
    """How many rows of the chunks ``chunks`` selects are pending on their own (the chunks' recipients)."""
    where = (*_mine(campaign_id, channel_id), _pending_in(chunks))
    return int(conn.execute(sa.select(sa.func.count()).select_from(_R).where(*where)).scalar_one())


def _count_pending_in_chunks(session: Any, campaign_id: int, channel_id: int, *where: Any) -> int:
    """How many rows are pending on their own in the chunks that ``where`` (conditions on ``send_chunks``)
    selects. The chunk numbers are read first, by the primary key, and the rows are counted by number, none when
    no chunk matches (the usual case). As a subquery, PostgreSQL with no statistics yet on a freshly staged ledger
    looked ``send_chunks`` up once per ledger row: 1.3 s a call at 100k recipients, at every send task's start."""
    numbers = list(session.execute(sa.select(_K.c.chunk_no).where(*where)).scalars())
    return _count_pending(session, campaign_id, channel_id, numbers) if numbers else 0


def mark_orphans_unknown(engine: Engine, campaign_id: int, channel_id: int, chunks: Iterable[int] | None) -> int:
    """In-flight chunks (of ``chunks``, or all) whose worker died: ``unknown``, and so their recipients. Returns
    how many recipients (rows claimed one by one before migration 0005 included)."""
    cid, ch = int(campaign_id), int(channel_id)
    listed = None if chunks is None else list(chunks)
    row_criteria = [] if listed is None else [_R.c.chunk_no.in_(listed)]
    chunk_criteria = [] if listed is None else [_K.c.chunk_no.in_(listed)]
    in_flight = (_K.c.campaign_id == cid, _K.c.channel_id == ch, _K.c.status == RecipientStatus.IN_FLIGHT.value)
    orphaned: dict[str, Any] = {
        "key": {"campaign_id": cid, "channel_id": ch},
        "from_status": RecipientStatus.IN_FLIGHT.value,
        "to_status": RecipientStatus.UNKNOWN.value,
        "values": {"reason": ORPHAN_REASON},
    }
    with session_scope(engine) as session:
        legacy = transition(session, Recipient, *row_criteria, **orphaned)
        recipients = _count_pending_in_chunks(session, cid, ch, *in_flight, *chunk_criteria)
        transition(session, _K, *chunk_criteria, **orphaned)
    return legacy + recipients


def release_unknown(engine: Engine, campaign_id: int, channel_id: int, chunks: Iterable[int]) -> int:
    """``resend_unknown``: the unknown chunks of ``chunks`` (and rows) back to pending (they will be sent again).
    Returns how many recipients."""
    cid, ch = int(campaign_id), int(channel_id)
    listed = list(chunks)
    unknown = (
        _K.c.campaign_id == cid,
        _K.c.channel_id == ch,
        _K.c.status == RecipientStatus.UNKNOWN.value,
        _K.c.chunk_no.in_(listed),
    )
    released: dict[str, Any] = {
        "key": {"campaign_id": cid, "channel_id": ch},
        "from_status": RecipientStatus.UNKNOWN.value,
        "to_status": RecipientStatus.PENDING.value,
    }
    with session_scope(engine) as session:
        legacy = transition(session, Recipient, _R.c.chunk_no.in_(listed), **released, values={"reason": None})
        recipients = _count_pending_in_chunks(session, cid, ch, *unknown)
        transition(session, _K, _K.c.chunk_no.in_(listed), **released, values={"reason": None, "request_id": None})
    return legacy + recipients


@dataclass(frozen=True)
class Claim:
    """What one claim won: ``count`` recipients and their ``sendNotification`` body, a JSON array already encoded
    (one object per recipient, its own params), built by the state database from the claimed rows."""

    count: int
    body: bytes

    def __len__(self) -> int:
        return self.count


# One request object per row of the chunk still pending on its own (not cancelled, not skipped at staging), in id
# order, as :func:`~optimove_netmera.campaigns.personalise.request_object` builds it ("message" only when the
# params are not empty). The database quotes or embeds the stored texts; none becomes a Python object. SQLite:
# the subquery's ORDER BY holds for the aggregate (a subquery with ORDER BY is never flattened into an aggregate).
_SQLITE_BODY = sa.text(
    "SELECT count(*), CAST('[' || coalesce(group_concat(obj, ','), '') || ']' AS BLOB) FROM ("
    """SELECT '{"notificationKey":' || json_quote(notification_key) || ',"target":{"extId":' || json_quote(ext_id)"""
    """ || '}' || CASE WHEN p = '{}' THEN '' ELSE ',"message":{"params":' || p || '}' END || '}' AS obj"""
    " FROM (SELECT id, notification_key, ext_id, json(params) AS p FROM recipients"
    " WHERE campaign_id = :cid AND channel_id = :ch AND chunk_no = :chunk AND status = 'pending' ORDER BY id))"
)
# PostgreSQL: concatenated like SQLite's (``json_build_object`` took 1.6 times as long on the server, ~2.1 against
# ~1.35 ms a 1000-row chunk); ``to_json`` quotes a text as JSON and gives NULL for NULL, written out as ``null``.
_POSTGRES_BODY = sa.text(
    "SELECT count(*), '[' || coalesce(string_agg("
    """'{"notificationKey":' || coalesce(to_json(notification_key)::text, 'null') || ',"target":{"extId":'"""
    """ || coalesce(to_json(ext_id)::text, 'null') || '}' || CASE WHEN params = '{}'::jsonb THEN ''"""
    """ ELSE ',"message":{"params":' || params::text || '}' END || '}', ',' ORDER BY id), '') || ']'"""
    " FROM recipients WHERE campaign_id = :cid AND channel_id = :ch AND chunk_no = :chunk AND status = 'pending'"
)


# The hot path's statements, built once with their values bound per call: building them (the conditions, the
# values, the exists) took a send worker more of the interpreter than running them, and the workers share it.
_CHUNK = {"campaign_id": sa.bindparam("cid"), "channel_id": sa.bindparam("ch"), "chunk_no": sa.bindparam("chunk")}


def _claim_statement() -> sa.Update:
    """pending -> in_flight for the chunk ``_CHUNK`` binds, unless the campaign is cancelled (``request_id`` and
    ``sent_at`` bound too)."""
    not_cancelled = ~sa.exists().where(
        _C.c.campaign_id == sa.bindparam("cid"),
        _C.c.channel_id == sa.bindparam("ch"),
        _C.c.state == CampaignState.CANCELLED.value,
    )
    return transition_statement(
        _K,
        not_cancelled,
        key=_CHUNK,
        from_status=RecipientStatus.PENDING.value,  # two workers never claim one chunk
        to_status=RecipientStatus.IN_FLIGHT.value,
        values={"request_id": sa.bindparam("request_id"), "sent_at": sa.bindparam("sent_at"), "reason": None},
        increment_attempts=True,
    )


_CLAIM = _claim_statement()


@functools.cache
def _finish_statement(to_status: str, names: tuple[str, ...]) -> sa.Update:
    """The chunk held by the request ``holder`` binds (in_flight, or unknown) -> ``to_status``, with the columns
    ``names`` set to ``set_<name>``."""
    holder = _K.c.request_id == sa.bindparam("holder")
    return transition_statement(
        _K,
        holder,
        key=_CHUNK,
        from_status=[RecipientStatus.IN_FLIGHT.value, RecipientStatus.UNKNOWN.value],
        to_status=to_status,
        values={name: sa.bindparam(f"set_{name}") for name in names},
    )


def claim_chunk(
    bind: Engine | sa.Connection,
    campaign_id: int,
    channel_id: int,
    chunk_no: int,
    request_id: str,
    started_at: dt.datetime,
) -> Claim:
    """pending -> in_flight for one chunk, unless the campaign is cancelled; what this caller won (its count and
    request body: see :class:`Claim`).

    One row changes: the chunk's, marked with ``request_id`` so only this caller settles it (``sent_at`` is the
    claim time here and the request's start once it is sent). The body is read after the claim commits (a read does
    not hold the SQLite write lock the other workers' claims wait for): once the chunk is claimed no cancel or
    restore moves its rows (:func:`~optimove_netmera.campaigns.state.unclaimed`). A chunk with no row pending any
    more (cancelled meanwhile) goes back to pending and nothing is won. ``bind``: an engine, or an idle connection
    the caller holds (:func:`~optimove_netmera.store.engine.connection`).
    """
    cid, ch, chunk = int(campaign_id), int(channel_id), int(chunk_no)
    chunk_key = {"campaign_id": cid, "channel_id": ch, "chunk_no": chunk}
    params = {"cid": cid, "ch": ch, "chunk": chunk}
    with connection(bind) as conn:
        with conn.begin():
            won = conn.execute(_CLAIM, {**params, "request_id": request_id, "sent_at": started_at}).rowcount
        if won < 1:
            return Claim(0, b"[]")
        query = _SQLITE_BODY if conn.dialect.name == "sqlite" else _POSTGRES_BODY
        with conn.begin():
            count, body = one_row_bytes(conn, query, params)
        if not count:
            with conn.begin():
                transition(
                    conn,
                    _K,
                    _K.c.request_id == request_id,
                    key=chunk_key,
                    from_status=RecipientStatus.IN_FLIGHT.value,
                    to_status=RecipientStatus.PENDING.value,
                    values={"request_id": None},
                )
            return Claim(0, b"[]")
    return Claim(int(count), body)


def finish_request(
    engine: Engine,
    campaign_id: int,
    channel_id: int,
    chunk_no: int,
    request_id: str,
    to_status: str,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
    count: int | None = None,
) -> int:
    """Settle the chunk of one request (in_flight, or unknown if a retry already gave up on it) as ``to_status``
    (``pending``: give it back, it was certainly not processed); returns how many recipients it holds (``count``,
    the claim's, when given: once claimed, no cancel or restore moves a chunk's rows), 0 when this request does not
    hold the chunk."""
    cid, ch, chunk = int(campaign_id), int(channel_id), int(chunk_no)
    settled = {"reason": reason, **(values or {})}
    if to_status == RecipientStatus.PENDING.value:
        settled["request_id"] = None
    statement = _finish_statement(to_status, tuple(sorted(settled)))
    params = {"cid": cid, "ch": ch, "chunk": chunk, "holder": request_id, **{f"set_{k}": v for k, v in settled.items()}}
    with engine.begin() as conn:
        moved = max(conn.execute(statement, params).rowcount or 0, 0)
        if not moved:
            return 0
        return count if count is not None else _count_pending(conn, cid, ch, [chunk])


def dead_letter(engine: Engine, campaign_id: int, channel_id: int, request_id: str, reason: str) -> int:
    """Keep what Netmera refused (a 4xx other than 5016) as replayable dead letters: each recipient of the request
    ``request_id`` with the request object it was sent. Returns how many."""
    ref = f"{int(campaign_id)}:{int(channel_id)}"
    view = ledger()
    columns = (view.c.customer_id, view.c.ext_id, view.c.notification_key, view.c.params)
    with session_scope(engine) as session:
        rows = session.execute(
            sa.select(*columns)
            .where(*_mine(campaign_id, channel_id, view), view.c.request_id == request_id)
            .order_by(view.c.id)
        ).all()
        upsert(
            session,
            DeadLetter,
            [
                {
                    "kind": DeadLetterKind.SEND.value,
                    "ref": ref,
                    "customer_id": row.customer_id,
                    "ext_id": row.ext_id,
                    "payload": personalise.request_object(row.notification_key, row.ext_id, row.params),
                    "reason": reason,
                    "attempts": 1,
                }
                for row in rows
            ],
            conflict_columns=["kind", "ref", "customer_id"],
            update_columns=["payload", "reason", "attempts"],
        )
    return len(rows)


# --------------------------------------------------------------------------------------------------
# Counts (of the ledger as :func:`ledger` reads it)
# --------------------------------------------------------------------------------------------------


def status_counts(engine: Engine, campaign_id: int, channel_id: int) -> dict[str, int]:
    """Ledger rows per status."""
    view = ledger()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(view.c.status, sa.func.count())
            .where(*_mine(campaign_id, channel_id, view))
            .group_by(view.c.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def template_counts(engine: Engine, campaign_id: int, channel_id: int) -> dict[str, dict[str, int]]:
    """Ledger rows per template and status (``{"101": {"sent": 480, "skipped": 20}}``)."""
    view = ledger()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(view.c.template_id, view.c.status, sa.func.count())
            .where(*_mine(campaign_id, channel_id, view))
            .group_by(view.c.template_id, view.c.status)
        ).all()
    out: dict[str, dict[str, int]] = {}
    for template_id, status, n in rows:
        out.setdefault(str(template_id), {})[str(status)] = int(n)
    return out


def request_count(engine: Engine, campaign_id: int, channel_id: int) -> int:
    """Netmera requests that carried this campaign's recipients (the last request of each row)."""
    view = ledger()
    with engine.connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count(sa.distinct(view.c.request_id))).where(
                    *_mine(campaign_id, channel_id, view), view.c.request_id.is_not(None)
                )
            )
            or 0
        )


def reason_counts(engine: Engine, campaign_id: int, channel_id: int) -> dict[str, int]:
    """Skipped/failed/unknown/cancelled rows per reason (reasons never contain customer data)."""
    view = ledger()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(view.c.status, view.c.reason, sa.func.count())
            .where(*_mine(campaign_id, channel_id, view), view.c.reason.is_not(None))
            .group_by(view.c.status, view.c.reason)
        ).all()
    return {f"{status}: {reason}": int(n) for status, reason, n in rows}
