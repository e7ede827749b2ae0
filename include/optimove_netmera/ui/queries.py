"""Read-only queries behind the plugin page: sync runs, campaigns, events and dead letters (JSON-ready dicts).

Every count is computed from the state database's rows when asked (``sync_changes``, ``recipients``, ``events``,
``dead_letters``), so a running sync or send shows its live numbers; only the extract and plan figures a run
recorded in ``sync_runs.counts`` / ``phase_seconds`` are read from there. No Airflow imports.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.events import ACTED_ON_EVENT_TYPES
from optimove_netmera.campaigns.recipients import ledger
from optimove_netmera.store.models import (
    Campaign,
    ChangeStatus,
    DeadLetter,
    DeadLetterKind,
    Event,
    EventStatus,
    RecipientStatus,
    SyncChange,
    SyncRun,
)
from optimove_netmera.sync.load import change_counts

__all__ = [
    "SYNC_REF_PREFIX",
    "campaigns_overview",
    "dead_letters",
    "events_overview",
    "redispatchable",
    "sends_over_time",
    "sync_overview",
]

SYNC_REF_PREFIX = "sync_run:"
DISPATCHED_TYPES = frozenset(ACTED_ON_EVENT_TYPES - {11})  # 13, 4, 3: acted on by dispatch_event
NO_REASON = "(no reason recorded)"


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


# --------------------------------------------------------------------------------------------------
# User sync
# --------------------------------------------------------------------------------------------------


def sync_overview(engine: Engine, limit: int = 14) -> dict[str, Any]:
    """The latest ``limit`` sync runs, newest first, with their counts per outcome and seconds per phase.

    Per run: ``fetched`` (customers staged), ``changed`` and ``unset`` (customers with attributes to write / to
    remove, from the plan), ``sent`` (changes delivered), ``skipped`` by reason, ``not_found`` (extIds Netmera does
    not know), ``failed``, ``pending``, ``dead_lettered`` (dead letters of the run), ``dropped`` values by reason
    and ``phase_seconds``.
    """
    with engine.connect() as conn:
        runs = conn.execute(sa.select(SyncRun).order_by(SyncRun.id.desc()).limit(limit)).all()
        ids = [r.id for r in runs]
        changes: dict[int, dict[str, int]] = defaultdict(dict)
        skipped: dict[int, dict[str, int]] = defaultdict(dict)
        dead: dict[int, int] = {}
        if ids:
            for run_id in ids:  # a pending change whose batches were all delivered counts as delivered
                changes[run_id] = change_counts(conn, run_id)
            rows = conn.execute(
                sa.select(SyncChange.sync_run_id, SyncChange.reason, sa.func.count())
                .where(SyncChange.sync_run_id.in_(ids), SyncChange.status == ChangeStatus.SKIPPED.value)
                .group_by(SyncChange.sync_run_id, SyncChange.reason)
            ).all()
            for run_id, reason, n in rows:
                key = reason or NO_REASON
                skipped[run_id][key] = skipped[run_id].get(key, 0) + int(n)
            refs = {f"{SYNC_REF_PREFIX}{i}": i for i in ids}
            stmt = sa.select(DeadLetter.ref, sa.func.count()).where(DeadLetter.ref.in_(list(refs)))
            for ref, n in conn.execute(stmt.group_by(DeadLetter.ref)).all():
                dead[refs[ref]] = int(n)
    out = []
    for r in runs:
        counts = r.counts or {}
        plan = counts.get("plan") or {}
        by_status = changes.get(r.id, {})
        out.append(
            {
                "id": r.id,
                "dag_id": r.dag_id,
                "dag_run_id": r.dag_run_id,
                "status": r.status,
                "dry_run": bool(r.dry_run),
                "mode": (r.params or {}).get("mode"),
                "window_start": _iso(r.window_start),
                "window_end": _iso(r.window_end),
                "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at),
                "fetched": _int(counts.get("fetched")),
                "changed": _int(plan.get("changed")),
                "unset": _int(plan.get("unset_entries")),
                "sent": by_status.get(ChangeStatus.DELIVERED.value, 0),
                "skipped": dict(sorted(skipped.get(r.id, {}).items())),
                "not_found": by_status.get(ChangeStatus.NOT_FOUND.value, 0),
                "failed": by_status.get(ChangeStatus.FAILED.value, 0),
                "pending": by_status.get(ChangeStatus.PENDING.value, 0),
                "dead_lettered": dead.get(r.id, 0),
                "dropped": {str(k): _int(v) for k, v in sorted((plan.get("dropped") or {}).items())},
                "phase_seconds": {str(k): float(v) for k, v in (r.phase_seconds or {}).items()},
                "error": r.error,
            }
        )
    return {"runs": out}


# --------------------------------------------------------------------------------------------------
# Campaigns
# --------------------------------------------------------------------------------------------------


def campaigns_overview(engine: Engine, limit: int = 50) -> dict[str, Any]:
    """The latest ``limit`` (campaign, channel) pairs, newest first, with their recipients per outcome."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Campaign).order_by(Campaign.created_at.desc(), Campaign.campaign_id.desc()).limit(limit)
        ).all()
        keys = [(r.campaign_id, r.channel_id) for r in rows]
        statuses: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        skipped: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        if keys:
            view = ledger()
            stmt = (
                sa.select(view.c.campaign_id, view.c.channel_id, view.c.status, view.c.reason, sa.func.count())
                .where(sa.tuple_(view.c.campaign_id, view.c.channel_id).in_(keys))
                .group_by(view.c.campaign_id, view.c.channel_id, view.c.status, view.c.reason)
            )
            for cid, ch, status, reason, n in conn.execute(stmt).all():
                key = (cid, ch)
                statuses[key][status] = statuses[key].get(status, 0) + int(n)
                if status == RecipientStatus.SKIPPED.value:
                    skipped[key][reason or NO_REASON] = skipped[key].get(reason or NO_REASON, 0) + int(n)
    out = []
    for r in rows:
        key = (r.campaign_id, r.channel_id)
        by_status = statuses.get(key, {})
        out.append(
            {
                "campaign_id": r.campaign_id,
                "channel_id": r.channel_id,
                "state": r.state,
                "event_time": _iso(r.event_time),
                "created_at": _iso(r.created_at),
                "dag_run_id": r.dag_run_id,
                "cancel_scope": r.cancel_scope,
                "error": r.error,
                "recipients": sum(by_status.values()),
                "sent": by_status.get(RecipientStatus.SENT.value, 0),
                "skipped": dict(sorted(skipped.get(key, {}).items())),
                "cancelled": by_status.get(RecipientStatus.CANCELLED.value, 0),
                "failed": by_status.get(RecipientStatus.FAILED.value, 0),
                "unknown": by_status.get(RecipientStatus.UNKNOWN.value, 0),
                "pending": by_status.get(RecipientStatus.PENDING.value, 0)
                + by_status.get(RecipientStatus.IN_FLIGHT.value, 0),
            }
        )
    return {"campaigns": out}


def _hour_bucket(engine: Engine, sent_at: Any) -> sa.ColumnElement[str]:
    if engine.dialect.name == "postgresql":
        return sa.func.to_char(
            sa.func.date_trunc("hour", sa.func.timezone("UTC", sent_at)), 'YYYY-MM-DD"T"HH24:00:00"Z"'
        )
    return sa.func.strftime("%Y-%m-%dT%H:00:00Z", sent_at)


def sends_over_time(engine: Engine, days: int = 7, now: dt.datetime | None = None) -> dict[str, Any]:
    """Recipients sent per UTC hour and (campaign, channel) over the last ``days`` days, oldest hour first."""
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    view = ledger()
    bucket = _hour_bucket(engine, view.c.sent_at).label("hour")
    stmt = (
        sa.select(bucket, view.c.campaign_id, view.c.channel_id, sa.func.count())
        .where(view.c.status == RecipientStatus.SENT.value, view.c.sent_at >= since)
        .group_by(bucket, view.c.campaign_id, view.c.channel_id)
        .order_by(bucket, view.c.campaign_id, view.c.channel_id)
    )
    with engine.connect() as conn:
        points = [
            {"hour": str(h), "campaign_id": int(c), "channel_id": int(ch), "sent": int(n)}
            for h, c, ch, n in conn.execute(stmt).all()
        ]
    return {"bucket": "hour", "days": days, "points": points}


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


def redispatchable(event_type_id: int, status: str) -> bool:
    """Whether the page offers re-dispatch: a 13, 4 or 3 still ``received`` (its dispatch failed or is pending),
    or ``ignored`` (e.g. for a channel that was not configured then)."""
    if status == EventStatus.HELD.value:
        return True  # 13, 4, 3 are dispatched once released; an 11 is queued for the realtime drainer
    return event_type_id in DISPATCHED_TYPES and status in (EventStatus.RECEIVED.value, EventStatus.IGNORED.value)


def events_overview(engine: Engine, limit: int = 100) -> dict[str, Any]:
    """Events received by type and status, ignored and held ones by reason, the dispatch backlog, failures, recent
    events."""
    t = Event.__table__
    with engine.connect() as conn:
        by_type: dict[str, dict[str, int]] = defaultdict(dict)
        for type_id, status, n in conn.execute(
            sa.select(t.c.event_type_id, t.c.status, sa.func.count()).group_by(t.c.event_type_id, t.c.status)
        ).all():
            by_type[str(type_id)][status] = int(n)
        by_reason = {
            status: [
                {"reason": note or NO_REASON, "count": int(n)}
                for note, n in conn.execute(
                    sa.select(t.c.note, sa.func.count())
                    .where(t.c.status == status)
                    .group_by(t.c.note)
                    .order_by(sa.func.count().desc(), t.c.note)
                ).all()
            ]
            for status in (EventStatus.IGNORED.value, EventStatus.HELD.value)
        }
        ignored, held = by_reason[EventStatus.IGNORED.value], by_reason[EventStatus.HELD.value]
        columns = [
            t.c.id,
            t.c.event_type_id,
            t.c.campaign_id,
            t.c.channel_id,
            t.c.template_id,
            t.c.event_time,
            t.c.received_at,
            t.c.source,
            t.c.status,
            t.c.dag_run_id,
            t.c.note,
        ]
        recent = conn.execute(sa.select(*columns).order_by(t.c.id.desc()).limit(limit)).all()
    waiting = sum(
        per.get(EventStatus.RECEIVED.value, 0) for type_id, per in by_type.items() if int(type_id) in DISPATCHED_TYPES
    )
    return {
        "by_type": {k: dict(sorted(v.items())) for k, v in sorted(by_type.items(), key=lambda kv: int(kv[0]))},
        "received": {k: sum(v.values()) for k, v in sorted(by_type.items(), key=lambda kv: int(kv[0]))},
        "ignored": ignored,
        "held": held,
        "waiting_for_dispatch": waiting,
        "queued": sum(per.get(EventStatus.QUEUED.value, 0) for per in by_type.values()),
        "failed": sum(per.get(EventStatus.FAILED.value, 0) for per in by_type.values()),
        "recent": [
            {
                "id": r.id,
                "event_type_id": r.event_type_id,
                "campaign_id": r.campaign_id,
                "channel_id": r.channel_id,
                "template_id": r.template_id,
                "event_time": _iso(r.event_time),
                "received_at": _iso(r.received_at),
                "source": r.source,
                "status": r.status,
                "dag_run_id": r.dag_run_id,
                "note": r.note,
                "redispatchable": redispatchable(r.event_type_id, r.status),
            }
            for r in recent
        ],
    }


# --------------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------------


def dead_letters(engine: Engine, limit: int = 200, include_replayed: bool = False) -> dict[str, Any]:
    """Dead letters (newest first; replayed ones only with ``include_replayed``) and counts per kind."""
    with engine.connect() as conn:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"open": 0, "replayed": 0})
        for kind, replayed, n in conn.execute(
            sa.select(DeadLetter.kind, DeadLetter.replayed_at.is_not(None), sa.func.count()).group_by(
                DeadLetter.kind, DeadLetter.replayed_at.is_not(None)
            )
        ).all():
            counts[kind]["replayed" if replayed else "open"] += int(n)
        stmt = sa.select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        if not include_replayed:
            stmt = stmt.where(DeadLetter.replayed_at.is_(None))
        rows = conn.execute(stmt).all()
    return {
        "counts": {k: counts[k] for k in sorted(counts)},
        "letters": [
            {
                "id": r.id,
                "kind": r.kind,
                "ref": r.ref,
                "customer_id": r.customer_id,
                "ext_id": r.ext_id,
                "reason": r.reason,
                "attempts": r.attempts,
                "created_at": _iso(r.created_at),
                "replayed_at": _iso(r.replayed_at),
                "replayable": r.kind in (DeadLetterKind.PROFILE_SET.value, DeadLetterKind.PROFILE_UNSET.value)
                and r.replayed_at is None,
            }
            for r in rows
        ],
    }
