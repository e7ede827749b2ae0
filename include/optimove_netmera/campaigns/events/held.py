"""Held events: stored, answered, but not acted on until the configuration covers their channel or template.

An event for a channel not in ``campaigns.channels`` (or an event 11 whose template has no ``notificationKey``) is
stored as ``held`` with the reason, logged at error level, answered ``{"status": "held"}`` and shown on the plugin
page. Once the settings cover it, :func:`release_held` moves it to the status it would have had (``received`` or
``queued``) and :func:`redispatch_held` dispatches it: from ``python -m optimove_netmera.campaigns redispatch``, the
reconcile DAG's ``redispatch_held`` param, the plugin page, or Optimove's own retry of the same event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.events.store import initial_status
from optimove_netmera.campaigns.events.triggers import DagTrigger
from optimove_netmera.settings import Settings
from optimove_netmera.store import Event, EventStatus, session_scope, transition

__all__ = ["HeldReport", "held_event_ids", "redispatch_held", "release_held"]

log = logging.getLogger(__name__)


def held_event_ids(engine: Engine, event_ids: Iterable[int] | None = None) -> list[int]:
    """Ids of held events (all, or those of ``event_ids`` that are held), oldest first."""
    table = Event.__table__
    stmt = sa.select(table.c.id).where(table.c.status == EventStatus.HELD.value).order_by(table.c.id)
    if event_ids is not None:
        stmt = stmt.where(table.c.id.in_([int(i) for i in event_ids]))
    with engine.connect() as connection:
        return [int(i) for i in connection.scalars(stmt)]


def release_held(engine: Engine, event_id: int, settings: Settings, *, by: str) -> str | None:
    """Move a held event to the status the settings now give it; return that status, or None if still held."""
    table = Event.__table__
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(table.c.event_type_id, table.c.channel_id, table.c.template_id, table.c.status).where(
                table.c.id == int(event_id)
            )
        ).one_or_none()
    if row is None or row.status != EventStatus.HELD.value:
        return None
    status, note = initial_status(row.event_type_id, row.channel_id, row.template_id, settings)
    if status == EventStatus.HELD.value:
        return None
    with session_scope(engine) as session:
        moved = transition(
            session,
            Event,
            key={"id": int(event_id)},
            from_status=EventStatus.HELD.value,
            to_status=status,
            values={"note": note or f"released from held by {by}: the settings now cover it"},
        )
    if not moved:  # someone else released it first
        return None
    log.warning("Optimove event %s released from held by %s: now %s", event_id, by, status)
    return status


@dataclass
class HeldReport:
    """What :func:`redispatch_held` did (counts and ids; no customer data)."""

    checked: int = 0
    released: list[int] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    still_held: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "checked": self.checked,
            "released": len(self.released),
            "dispatched": self.dispatched,
            "queued": self.queued,
            "still_held": self.still_held,
            "errors": {str(k): v for k, v in self.errors.items()},
        }


def redispatch_held(
    engine: Engine,
    settings: Settings,
    *,
    event_ids: Iterable[int] | None = None,
    trigger: DagTrigger | None = None,
    by: str = "an operator",
) -> HeldReport:
    """Release every held event (or those of ``event_ids``) the settings now cover, and dispatch it.

    Events 13, 4 and 3 are dispatched here; a released event 11 is ``queued`` for the realtime drainer. Events the
    settings still do not cover stay held and are listed. Safe to repeat (dispatching is idempotent).
    """
    from optimove_netmera.campaigns.events.dispatch import dispatch_event

    report = HeldReport()
    for event_id in held_event_ids(engine, event_ids):
        report.checked += 1
        status = release_held(engine, event_id, settings, by=by)
        if status is None:
            report.still_held.append(event_id)
            continue
        report.released.append(event_id)
        if status == EventStatus.QUEUED.value:
            report.queued.append(event_id)
            continue
        result = dispatch_event(engine, event_id, trigger=trigger, settings=settings)
        if result.error:
            report.errors[event_id] = result.error
        elif result.status == EventStatus.DISPATCHED.value:
            report.dispatched.append(event_id)
    if report.checked:
        log.info("re-dispatch of held Optimove events: %s", report.as_dict())
    return report
