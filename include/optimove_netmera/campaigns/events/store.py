"""Step 2, storage: the ``events`` row under the event's dedup key (``INSERT ... ON CONFLICT DO NOTHING``).

A repeat is reported as a duplicate and never acted on again (unless it was ``held`` and the configuration now
covers it: see :mod:`.held`). The initial status: ``ignored`` for the acknowledged types 1, 2, 5, 14; ``held`` for a
channel not in ``campaigns.channels`` or an event 11 whose template has no ``notificationKey`` (logged at error
level, re-dispatched once configured); ``queued`` for 11 (the realtime DAG drains those rows); ``received`` for 13,
4 and 3 (see :mod:`.dispatch`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.events.keys import dedup_key
from optimove_netmera.campaigns.events.parse import (
    ACKNOWLEDGED_EVENT_TYPES,
    ACTED_ON_EVENT_TYPES,
    OptimoveEvent,
    redact_payload,
)
from optimove_netmera.settings import Settings, get_settings
from optimove_netmera.store import Event, EventSource, EventStatus, dialect_insert, insert_if_absent, session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredEvent:
    """The ``events`` row an event landed in; ``created`` False means it was a duplicate."""

    event_id: int
    created: bool
    status: str
    dedup_key: str
    note: str | None = None
    dag_run_id: str | None = None


HELD_HINT = (
    "held until configured: add it to the settings, then re-dispatch (python -m optimove_netmera.campaigns "
    "redispatch, the reconcile DAG's redispatch_held param, or the plugin page)"
)


def initial_status(
    event_type_id: int, channel_id: int | None, template_id: int | None, settings: Settings
) -> tuple[str, str | None]:
    """The status (and note) an event gets under ``settings``: ignored, held, queued or received."""
    if event_type_id in ACKNOWLEDGED_EVENT_TYPES:
        return EventStatus.IGNORED.value, f"event type {event_type_id} is acknowledged, not acted on"
    if channel_id is not None and channel_id not in settings.campaigns.channels:
        return EventStatus.HELD.value, f"channel {channel_id} is not configured (campaigns.channels): {HELD_HINT}"
    if event_type_id == 11:
        if template_id is not None and template_id not in settings.campaigns.templates:
            reason = f"template {template_id} has no notificationKey (campaigns.templates)"
            return EventStatus.HELD.value, f"{reason}: {HELD_HINT}"
        return EventStatus.QUEUED.value, None
    return EventStatus.RECEIVED.value, None


def _initial_status(event: OptimoveEvent, settings: Settings) -> tuple[str, str | None]:
    return initial_status(event.event_type_id, event.channel_id, event.template_id, settings)


_SQLITE_WRITER = threading.Lock()


def _writer(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """SQLite: one writer at a time in this process (its busy-timeout backoff starves waiting writers)."""
    return _SQLITE_WRITER if engine.dialect.name == "sqlite" else contextlib.nullcontext()


def _values(event: OptimoveEvent, key: str, source: str, raw: Mapping[str, Any] | None, settings: Settings) -> dict:
    status, note = _initial_status(event, settings)
    return {
        "dedup_key": key,
        "event_type_id": event.event_type_id,
        "campaign_id": event.campaign_id,
        "channel_id": event.channel_id,
        "customer_id": event.customer_id,
        "template_id": event.template_id,
        "promo_code": event.promo_code,
        "event_time": event.event_time,
        "source": EventSource(source).value,
        "status": status,
        "raw_payload": redact_payload(raw) if raw is not None else None,
        "note": note,
    }


def store_event(
    engine: Engine,
    event: OptimoveEvent,
    *,
    source: str = EventSource.WEBHOOK.value,
    raw: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> StoredEvent:
    """Write the event under its dedup key in one transaction; return its row (new or the earlier one).

    Raises :class:`~optimove_netmera.store.StateDatabaseError` when the state database is unreachable
    or not migrated; nothing is written then.
    """
    s = settings or get_settings()
    key = dedup_key(event)
    values = _values(event, key, source, raw, s)
    table = Event.__table__
    with _writer(engine), session_scope(engine) as session:
        created = insert_if_absent(session, Event, values, conflict_columns=["dedup_key"])
        row = session.execute(
            sa.select(table.c.id, table.c.status, table.c.note, table.c.dag_run_id).where(table.c.dedup_key == key)
        ).one()
    stored = StoredEvent(int(row.id), created, str(row.status), key, row.note, row.dag_run_id)
    _log_stored(event, stored, source)
    return stored


def store_events(
    engine: Engine,
    items: Sequence[tuple[OptimoveEvent, Mapping[str, Any] | None]],
    *,
    source: str = EventSource.WEBHOOK.value,
    settings: Settings | None = None,
) -> list[StoredEvent]:
    """Write several events (``(event, raw)`` pairs) in **one** transaction: a group commit.

    What :func:`store_event` does for each, in one ``INSERT ... ON CONFLICT DO NOTHING`` (the rows in dedup-key
    order, so two writers lock in the same order) and one commit; returns their rows in ``items`` order. The
    same dedup key twice in ``items`` is created once, the later ones are its duplicates. All or nothing: on any
    error nothing of the batch is written and the error propagates (``StateDatabaseError`` as in
    :func:`store_event`).
    """
    s = settings or get_settings()
    keys = [dedup_key(event) for event, _ in items]
    first: dict[str, dict[str, Any]] = {}
    for key, (event, raw) in zip(keys, items, strict=True):
        if key not in first:
            first[key] = _values(event, key, source, raw, s)
    ordered = sorted(first)
    if not ordered:
        return []
    table = Event.__table__
    columns = (table.c.id, table.c.dedup_key, table.c.status, table.c.note, table.c.dag_run_id)
    with _writer(engine), session_scope(engine) as session:
        insert = dialect_insert(session, Event).on_conflict_do_nothing(index_elements=["dedup_key"])
        rows = {row.dedup_key: row for row in session.execute(insert.returning(*columns), [first[k] for k in ordered])}
        inserted = set(rows)
        earlier = [key for key in ordered if key not in inserted]  # duplicates: their rows were there before
        if earlier:
            rows.update(
                (row.dedup_key, row)
                for row in session.execute(sa.select(*columns).where(table.c.dedup_key.in_(earlier)))
            )
    results: list[StoredEvent] = []
    for key, (event, _) in zip(keys, items, strict=True):
        row = rows[key]
        created = key in inserted
        inserted.discard(key)  # a second occurrence in this batch is a duplicate of the first
        stored = StoredEvent(int(row.id), created, str(row.status), key, row.note, row.dag_run_id)
        _log_stored(event, stored, source)
        results.append(stored)
    return results


def _log_stored(event: OptimoveEvent, stored: StoredEvent, source: str) -> None:
    what = f"Optimove event {stored.event_id} (type {event.event_type_id}, campaign {event.campaign_id}, "
    what += f"channel {event.channel_id}, source {source})"
    if not stored.created:
        log.info("%s is a duplicate of a stored event: ignored", what)
    elif stored.status == EventStatus.HELD.value:
        log.error("%s stored but NOT acted on: %s", what, stored.note)
    elif stored.status == EventStatus.IGNORED.value:
        if event.event_type_id in ACTED_ON_EVENT_TYPES:
            log.warning("%s stored and ignored: %s", what, stored.note)
        else:
            log.info("%s stored and ignored: %s", what, stored.note)
    elif stored.status == EventStatus.QUEUED.value:
        log.debug("%s stored as queued", what)  # single-target events can be many: not logged one by one
    else:
        log.info("%s stored as %s", what, stored.status)


def count_by_status(engine: Engine, statuses: Iterable[str] | None = None) -> dict[str, int]:
    """Event counts per status (for the status page)."""
    table = Event.__table__
    stmt = sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
    if statuses is not None:
        stmt = stmt.where(table.c.status.in_(list(statuses)))
    with engine.connect() as connection:
        return {str(s): int(n) for s, n in connection.execute(stmt)}
