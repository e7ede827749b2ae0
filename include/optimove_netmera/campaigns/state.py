"""Campaign state in the state database: record, cancel, check (no Airflow imports).

A (campaign, channel) row moves received -> staged -> waiting -> sending -> done; ``cancelled`` can
be entered from any non-terminal state (and is the initial state when the cancel event arrives before
the bulk event, so the cancel wins). Whole versus partial cancellation:

* :func:`mark_cancelled` (event 4, called by the endpoint) always cancels the *whole* campaign first:
  state ``cancelled``, ``cancel_scope='all'``, ``cancel_fetched_at`` NULL (not yet narrowed) and every
  pending recipient ``cancelled`` (reason :data:`CANCEL_REASON`). That is the safe reading until Optimove
  says otherwise, and it is what stops a running send before its next request.
* The first sender that sees the cancel narrows it (:func:`apply_cancel_list`) with
  ``customers/GetCanceledCampaignCustomers`` (available for two hours): when the list is non-empty and
  names fewer customers than the campaign's ledger could send to (rows not ``skipped``), the cancel is
  **partial**: the listed customers stay cancelled (and are remembered in ``cancelled_customers``), the
  others go back to pending and the send goes on. An empty list (an expired window, or a tenant that
  does not list), or one covering every sendable customer, means the whole campaign is cancelled. When
  the list cannot be fetched the cancel is treated as whole for now and narrowed again later.
* A cancel confirmed whole is final: if another cancel arrives later, the recipients of the first one
  are sealed (reason :data:`CANCEL_ALL_REASON`) so that the second one, even if partial, cannot restore them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.store import (
    Campaign,
    CampaignState,
    CancelledCustomer,
    CancelScope,
    Recipient,
    RecipientStatus,
    SendChunk,
    as_utc,
    connection,
    insert_if_absent,
    session_scope,
    transition,
    upsert,
)

__all__ = [
    "CANCEL_ALL_REASON",
    "CANCEL_REASON",
    "PARTIAL_CANCEL_REASON",
    "CancelStatus",
    "apply_cancel_list",
    "cancel_pending",
    "cancel_status",
    "lock_chunks",
    "mark_cancelled",
    "record_campaign",
    "record_campaigns",
    "set_state",
    "settled_chunk",
    "unclaimed",
]

log = logging.getLogger(__name__)

CANCEL_REASON = "campaign cancelled"
"""``reason`` of recipients cancelled by a whole-campaign cancel (restorable when it proves partial)."""
CANCEL_ALL_REASON = "campaign cancelled (whole campaign, confirmed)"
"""``reason`` once a cancel was confirmed to cover the whole campaign (never restored)."""
PARTIAL_CANCEL_REASON = "customer cancelled (GetCanceledCampaignCustomers)"
"""``reason`` of recipients cancelled individually by a partial cancel."""

_TERMINAL = (CampaignState.DONE.value, CampaignState.FAILED.value)


def settled_chunk(*statuses: str) -> Any:
    """Ledger rows whose chunk is in one of ``statuses`` (SQL, correlated to ``recipients``)."""
    k, r = SendChunk.__table__, Recipient.__table__
    mine = (k.c.campaign_id == r.c.campaign_id, k.c.channel_id == r.c.channel_id, k.c.chunk_no == r.c.chunk_no)
    return sa.exists().where(*mine, k.c.status.in_(statuses))


def unclaimed() -> Any:
    """Ledger rows whose chunk was never claimed (no chunk yet, or a pending one): the only rows a cancel or a
    restore may move. A row of a claimed chunk has the chunk's status (see
    :class:`~optimove_netmera.store.models.SendChunk`)."""
    k, r = SendChunk.__table__, Recipient.__table__
    mine = (k.c.campaign_id == r.c.campaign_id, k.c.channel_id == r.c.channel_id, k.c.chunk_no == r.c.chunk_no)
    return ~sa.exists().where(*mine, k.c.status != RecipientStatus.PENDING.value)


def lock_chunks(session: Any, campaign_ids: Iterable[int], channel_ids: Iterable[int]) -> None:
    """Before moving ledger rows by :func:`unclaimed`: share-lock the campaign's chunks (PostgreSQL), so a claim
    waits until this transaction ends and one committed before is seen by its next statement (SQLite has one
    writer at a time)."""
    k = SendChunk.__table__
    session.execute(
        sa.select(k.c.chunk_no)
        .where(k.c.campaign_id.in_(list(campaign_ids)), k.c.channel_id.in_(list(channel_ids)))
        .with_for_update(read=True)
    ).all()


def _configured_channels() -> list[int]:
    from optimove_netmera.settings import get_settings

    return list(get_settings().campaigns.channels)


def record_campaign(
    engine: Engine, campaign_id: int, channel_id: int, event_time: dt.datetime | None, dag_run_id: str | None
) -> None:
    """Create the (campaign, channel) row in state ``received`` unless it exists (then fill blanks only).

    An existing row keeps its state (a cancel that arrived first stays cancelled); a missing
    ``event_time`` or ``dag_run_id`` is filled in.
    """
    record_campaigns(engine, [(campaign_id, channel_id, event_time, dag_run_id)])


def record_campaigns(engine: Engine, campaigns: Iterable[tuple[int, int, dt.datetime | None, str | None]]) -> None:
    """:func:`record_campaign` for each ``(campaign_id, channel_id, event_time, dag_run_id)``, in one transaction."""
    table = Campaign.__table__
    with session_scope(engine) as session:
        for campaign_id, channel_id, event_time, dag_run_id in campaigns:
            inserted = insert_if_absent(
                session,
                Campaign,
                {
                    "campaign_id": int(campaign_id),
                    "channel_id": int(channel_id),
                    "state": CampaignState.RECEIVED.value,
                    "event_time": as_utc(event_time) if event_time is not None else None,
                    "dag_run_id": dag_run_id,
                },
            )
            if inserted:
                continue
            key = (table.c.campaign_id == int(campaign_id), table.c.channel_id == int(channel_id))
            if event_time is not None:
                session.execute(
                    sa.update(table).where(*key, table.c.event_time.is_(None)).values(event_time=as_utc(event_time))
                )
            if dag_run_id is not None:
                session.execute(
                    sa.update(table).where(*key, table.c.dag_run_id.is_(None)).values(dag_run_id=dag_run_id)
                )


def mark_cancelled(engine: Engine, campaign_id: int, channel_id: int | None, at: dt.datetime, source: str) -> int:
    """Cancel the campaign on ``channel_id`` (None: on every channel it has, or every configured one).

    Creates the campaigns row in state ``cancelled`` when the bulk event has not arrived yet, moves
    every pending recipient to ``cancelled`` and returns how many. A campaign already ``done`` or
    ``failed`` keeps its state (nothing is pending any more) but records the cancel time. Repeated
    cancels are harmless; each one re-arms the narrowing to a partial cancel.
    """
    at = as_utc(at)
    table = Campaign.__table__
    with session_scope(engine) as session:
        if channel_id is not None:
            channels = [int(channel_id)]
        else:
            channels = (
                list(
                    session.scalars(sa.select(table.c.channel_id).where(table.c.campaign_id == int(campaign_id))).all()
                )
                or _configured_channels()
            )
        # An earlier cancel that was confirmed whole keeps its recipients: seal them before this one
        # (which may prove partial) marks its own as restorable.
        confirmed = sa.select(table.c.channel_id).where(
            table.c.campaign_id == int(campaign_id),
            table.c.channel_id.in_(channels),
            table.c.state == CampaignState.CANCELLED.value,
            table.c.cancel_scope == CancelScope.ALL.value,
            table.c.cancel_fetched_at.is_not(None),
        )
        transition(
            session,
            Recipient,
            Recipient.__table__.c.channel_id.in_(confirmed),
            Recipient.__table__.c.reason == CANCEL_REASON,
            key={"campaign_id": int(campaign_id)},
            from_status=RecipientStatus.CANCELLED.value,
            to_status=RecipientStatus.CANCELLED.value,
            values={"reason": CANCEL_ALL_REASON},
        )
        upsert(
            session,
            Campaign,
            [
                {
                    "campaign_id": int(campaign_id),
                    "channel_id": ch,
                    "state": CampaignState.CANCELLED.value,
                    "cancelled_at": at,
                    "cancel_scope": CancelScope.ALL.value,
                    "cancel_fetched_at": None,
                }
                for ch in channels
            ],
            update_columns=["state", "cancelled_at", "cancel_scope", "cancel_fetched_at"],
            # not "NOT IN (...)": an expanding IN list cannot go into an executemany (one row per channel)
            where=sa.and_(*(table.c.state != state for state in _TERMINAL)),
        )
        session.execute(
            sa.update(table)
            .where(
                table.c.campaign_id == int(campaign_id),
                table.c.channel_id.in_(channels),
                table.c.state.in_(_TERMINAL),
            )
            .values(cancelled_at=at)
        )
        moved = 0
        lock_chunks(session, [int(campaign_id)], channels)
        for ch in channels:
            moved += transition(
                session,
                Recipient,
                unclaimed(),
                key={"campaign_id": int(campaign_id), "channel_id": ch},
                from_status=RecipientStatus.PENDING.value,
                to_status=RecipientStatus.CANCELLED.value,
                values={"reason": CANCEL_REASON},
            )
    log.info(
        "campaign %s cancelled on channel(s) %s (source %s): %d pending recipient(s) cancelled",
        campaign_id,
        channels,
        source,
        moved,
    )
    return moved


@dataclass(frozen=True)
class CancelStatus:
    """What the state database says about a (campaign, channel) right now."""

    exists: bool
    state: str | None
    cancelled: bool  # state is cancelled: send nothing (narrow first if needs_narrowing)
    needs_narrowing: bool  # cancelled, but GetCanceledCampaignCustomers has not been consulted since
    partial: bool  # an earlier cancel proved partial: only the listed customers were cancelled
    cancelled_at: dt.datetime | None


_CAMPAIGN = Campaign.__table__
# Built once (a send worker reads it twice a chunk), its key bound per call.
_CANCEL_STATUS = sa.select(
    _CAMPAIGN.c.state, _CAMPAIGN.c.cancel_scope, _CAMPAIGN.c.cancel_fetched_at, _CAMPAIGN.c.cancelled_at
).where(_CAMPAIGN.c.campaign_id == sa.bindparam("cid"), _CAMPAIGN.c.channel_id == sa.bindparam("ch"))


def cancel_status(bind: Engine | sa.Connection, campaign_id: int, channel_id: int) -> CancelStatus:
    """One indexed primary-key read: is this campaign cancelled, partially, or not at all? (``bind``: an engine, or
    a connection the caller holds; see :func:`~optimove_netmera.store.engine.connection`.)"""
    with connection(bind) as conn:
        row = conn.execute(_CANCEL_STATUS, {"cid": int(campaign_id), "ch": int(channel_id)}).first()
    if row is None:
        return CancelStatus(False, None, False, False, False, None)
    is_cancelled = row.state == CampaignState.CANCELLED.value
    return CancelStatus(
        exists=True,
        state=row.state,
        cancelled=is_cancelled,
        needs_narrowing=is_cancelled and row.cancel_fetched_at is None,
        partial=not is_cancelled and row.cancel_scope == CancelScope.PARTIAL.value,
        cancelled_at=row.cancelled_at,
    )


def cancel_pending(engine: Engine, campaign_id: int, channel_id: int, reason: str = CANCEL_REASON) -> int:
    """Move this campaign's pending recipients (of chunks not claimed) to ``cancelled``; return how many."""
    with session_scope(engine) as session:
        lock_chunks(session, [int(campaign_id)], [int(channel_id)])
        return transition(
            session,
            Recipient,
            unclaimed(),
            key={"campaign_id": int(campaign_id), "channel_id": int(channel_id)},
            from_status=RecipientStatus.PENDING.value,
            to_status=RecipientStatus.CANCELLED.value,
            values={"reason": reason},
        )


def apply_cancel_list(
    engine: Engine, campaign_id: int, channel_id: int, customer_ids: Iterable[str], *, fetched_at: dt.datetime
) -> str:
    """Narrow a stored cancel with Optimove's cancelled-customer list; return ``"all"`` or ``"partial"``.

    Partial when the list is non-empty and names fewer of the customers this campaign's ledger could send
    to (rows not ``skipped``) than there are; call it only once the ledger is staged. Then
    the campaign leaves ``cancelled`` (back to ``sending``, or ``staged`` if nothing was sent yet), the
    recipients the whole-campaign cancel had cancelled go back to ``pending`` and then the listed
    customers' pending rows become ``cancelled``. Otherwise the cancel stays whole. Nothing changes if
    a newer cancel arrived meanwhile (``cancelled_at`` moved) or another worker narrowed it first.
    """
    listed = sorted({str(c) for c in customer_ids})
    fetched_at = as_utc(fetched_at)
    table = Campaign.__table__
    rtable = Recipient.__table__
    cid, ch = int(campaign_id), int(channel_id)
    mine = (rtable.c.campaign_id == cid, rtable.c.channel_id == ch)
    with session_scope(engine) as session:
        row = session.execute(
            sa.select(table.c.state, table.c.cancelled_at, table.c.cancel_scope, table.c.cancel_fetched_at)
            .where(table.c.campaign_id == cid, table.c.channel_id == ch)
            .with_for_update()
        ).first()
        if row is None:
            return CancelScope.ALL.value
        if row.state != CampaignState.CANCELLED.value or row.cancel_fetched_at is not None:
            return row.cancel_scope or CancelScope.ALL.value
        # Optimove lists the cancelled *recipients*: compare with the customers we could send to (not skipped).
        skipped = RecipientStatus.SKIPPED.value
        skipped_with_chunk = sa.and_(rtable.c.status == RecipientStatus.PENDING.value, settled_chunk(skipped))
        sendable = (*mine, rtable.c.status != skipped, ~skipped_with_chunk)
        total = session.scalar(sa.select(sa.func.count(sa.distinct(rtable.c.customer_id))).where(*sendable)) or 0
        in_ledger = 0
        for start in range(0, len(listed), 500):
            part = listed[start : start + 500]
            in_ledger += (
                session.scalar(
                    sa.select(sa.func.count(sa.distinct(rtable.c.customer_id))).where(
                        *sendable, rtable.c.customer_id.in_(part)
                    )
                )
                or 0
            )
        partial = bool(listed) and total > 0 and in_ledger < total
        scope = CancelScope.PARTIAL.value if partial else CancelScope.ALL.value
        values: dict[str, object] = {"cancel_scope": scope, "cancel_fetched_at": fetched_at}
        if partial:
            began = (RecipientStatus.SENT.value, RecipientStatus.IN_FLIGHT.value, RecipientStatus.FAILED.value)
            pending = rtable.c.status == RecipientStatus.PENDING.value
            started = session.scalar(
                sa.select(sa.func.count())
                .select_from(rtable)
                .where(*mine, sa.or_(rtable.c.status.in_(began), sa.and_(pending, settled_chunk(*began))))
            )
            values["state"] = CampaignState.SENDING.value if started else CampaignState.STAGED.value
        guarded = session.execute(
            sa.update(table)
            .where(
                table.c.campaign_id == cid,
                table.c.channel_id == ch,
                table.c.state == CampaignState.CANCELLED.value,
                table.c.cancelled_at == row.cancelled_at,
                table.c.cancel_fetched_at.is_(None),
            )
            .values(**values)
        )
        if (guarded.rowcount or 0) == 0:  # type: ignore[attr-defined]
            return CancelScope.ALL.value
        if partial:
            upsert(
                session,
                CancelledCustomer,
                [{"campaign_id": cid, "customer_id": c, "fetched_at": fetched_at} for c in listed],
                update_columns=["fetched_at"],
            )
            lock_chunks(session, [cid], [ch])
            # back to pending; a row whose chunk was claimed meanwhile (sent without it) gets a chunk of its own
            # at the next planning: the claimed chunk's outcome is not its own
            transition(
                session,
                Recipient,
                rtable.c.reason == CANCEL_REASON,
                key={"campaign_id": cid, "channel_id": ch},
                from_status=RecipientStatus.CANCELLED.value,
                to_status=RecipientStatus.PENDING.value,
                values={"reason": None, "chunk_no": sa.case((unclaimed(), rtable.c.chunk_no), else_=sa.null())},
            )
            for start in range(0, len(listed), 500):
                transition(
                    session,
                    Recipient,
                    unclaimed(),
                    rtable.c.customer_id.in_(listed[start : start + 500]),
                    key={"campaign_id": cid, "channel_id": ch},
                    from_status=RecipientStatus.PENDING.value,
                    to_status=RecipientStatus.CANCELLED.value,
                    values={"reason": PARTIAL_CANCEL_REASON},
                )
    log.info("campaign %s channel %s: cancel narrowed to %s (%d customer(s) listed)", cid, ch, scope, len(listed))
    return scope


def set_state(
    engine: Engine,
    campaign_id: int,
    channel_id: int,
    state: str,
    *,
    from_states: Iterable[str] | None = None,
    values: dict[str, object] | None = None,
) -> bool:
    """Move the campaign to ``state`` (only from ``from_states`` if given, never out of ``cancelled``)."""
    table = Campaign.__table__
    conditions = [table.c.campaign_id == int(campaign_id), table.c.channel_id == int(channel_id)]
    if from_states is not None:
        conditions.append(table.c.state.in_(list(from_states)))
    elif state != CampaignState.CANCELLED.value:
        conditions.append(table.c.state != CampaignState.CANCELLED.value)
    with session_scope(engine) as session:
        result = session.execute(sa.update(table).where(*conditions).values(state=state, **(values or {})))
        return (result.rowcount or 0) > 0  # type: ignore[attr-defined]


def store_counts(engine: Engine, campaign_id: int, channel_id: int, key: str, value: Any) -> None:
    """Merge ``{key: value}`` into the campaign's ``counts`` (counts and ids only, never customer data)."""
    table = Campaign.__table__
    with session_scope(engine) as session:
        current = session.scalar(
            table.select()
            .with_only_columns(table.c.counts)
            .where(table.c.campaign_id == campaign_id, table.c.channel_id == channel_id)
        )
        merged = {**(current or {}), key: value}
        session.execute(
            table.update()
            .where(table.c.campaign_id == campaign_id, table.c.channel_id == channel_id)
            .values(counts=merged)
        )
