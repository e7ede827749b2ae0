"""The page's two actions: re-dispatch a stored event, and replay sync dead letters. No Airflow imports here.

**Re-dispatch** hands an event 13, 4 or 3 to :func:`optimove_netmera.campaigns.events.dispatch_event` again: one
still ``received`` (its dispatch failed, e.g. the DAG was not deployed yet) as it is; one ``ignored`` because its
channel was not configured is first moved back to ``received`` when the channel is configured now.

**Replay** of a sync dead letter (``profile_set`` / ``profile_unset``, ref ``sync_run:<id>``) makes the next user
sync send that customer again, through the sync's own carry-over: the plan of every run re-checks and re-sends the
``not_found`` changes of the latest successful run. Replay copies the letter's change (its attributes to set and
unset) into that run, and into any newer run that is still going and already planned, as ``not_found`` with the
reason naming who asked; the letter gets ``replayed_at``. A letter whose customer a later run delivered, or
planned again, is marked replayed as *superseded* without copying anything: the newer outcome stands. Campaign
send letters (``send``) are not replayed here (re-sending a push is the campaign run's decision).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import events
from optimove_netmera.settings import Settings
from optimove_netmera.store.engine import session_scope
from optimove_netmera.store.models import (
    ChangeStatus,
    DeadLetter,
    DeadLetterKind,
    Event,
    EventStatus,
    SyncChange,
    SyncRun,
    SyncRunStatus,
)
from optimove_netmera.store.queries import transition
from optimove_netmera.ui.queries import SYNC_REF_PREFIX, redispatchable

__all__ = ["ActionRefused", "ReplayResult", "redispatch_dag_id", "redispatch_event", "replay_dead_letters"]

log = logging.getLogger(__name__)

MAX_REPLAY = 1000


class ActionRefused(ValueError):
    """The action does not apply to this row (the route answers 409 with the message)."""


def redispatch_dag_id(event_type_id: int) -> str:
    """The DAG a re-dispatch of this event type creates runs of (what the user must be allowed to trigger)."""
    return events.USER_SYNC_DAG_ID if event_type_id == 3 else events.CAMPAIGN_SEND_DAG_ID


def load_event(engine: Engine, event_id: int) -> Any:
    """The event's id, type, channel and status (None when there is no such event)."""
    t = Event.__table__
    with engine.connect() as conn:
        return conn.execute(
            sa.select(t.c.id, t.c.event_type_id, t.c.channel_id, t.c.status).where(t.c.id == int(event_id))
        ).one_or_none()


def _load_note(engine: Engine, event_id: int) -> str | None:
    t = Event.__table__
    with engine.connect() as conn:
        return conn.scalar(sa.select(t.c.note).where(t.c.id == int(event_id)))


def redispatch_event(
    engine: Engine, event_id: int, user: str, settings: Settings, trigger: events.DagTrigger | None = None
) -> dict[str, Any]:
    """Dispatch a ``received`` (or channel-``ignored``) event 13/4/3 again; returns the dispatch result.

    Raises ``LookupError`` (no such event) or :class:`ActionRefused` (wrong type or status, channel still not
    configured). A failed dispatch is no exception: the result carries ``error`` and the row stays ``received``.
    """
    row = load_event(engine, event_id)
    if row is None:
        raise LookupError(f"no event {event_id} in the state database")
    if not redispatchable(row.event_type_id, row.status):
        raise ActionRefused(
            f"event {row.id} (type {row.event_type_id}) is {row.status}: only events 13, 4 and 3 that are "
            "received (dispatch pending or failed) or ignored can be re-dispatched"
        )
    if row.status == EventStatus.HELD.value:
        log.warning("UI action by %s: re-dispatch of held Optimove event %s", user, row.id)
        report = events.redispatch_held(
            engine,
            settings,
            event_ids=[row.id],
            trigger=trigger or events.AirflowDagTrigger(triggering_user=user),
            by=f"{user} (plugin page)",
        )
        if report.still_held:
            raise ActionRefused(
                f"event {row.id} is still held: the settings do not cover it yet ({_load_note(engine, row.id)}); "
                "configure its channel or template, then re-dispatch"
            )
        after = load_event(engine, row.id)
        return {
            "event_id": row.id,
            "status": after.status if after else None,
            "error": report.errors.get(row.id),
            "requested_by": user,
        }
    if row.status == EventStatus.IGNORED.value:
        if row.channel_id is not None and row.channel_id not in settings.campaigns.channels:
            raise ActionRefused(
                f"event {row.id} is for channel {row.channel_id}, which is still not in campaigns.channels "
                f"({list(settings.campaigns.channels)}): configure it, then re-dispatch"
            )
        with session_scope(engine) as session:
            transition(
                session,
                Event,
                key={"id": row.id},
                from_status=EventStatus.IGNORED.value,
                to_status=EventStatus.RECEIVED.value,
                values={"note": f"re-dispatch requested by {user}"},
            )
    log.warning("UI action by %s: re-dispatch of Optimove event %s (type %s)", user, row.id, row.event_type_id)
    result = events.dispatch_event(
        engine, row.id, trigger=trigger or events.AirflowDagTrigger(triggering_user=user), settings=settings
    )
    log.warning("UI action by %s: event %s is now %s (%s)", user, row.id, result.status, result.error or result.note)
    return {**asdict(result), "requested_by": user}


@dataclass
class ReplayResult:
    """Letter ids by outcome: ``queued`` for the next sync, ``superseded`` by a later run, ``refused`` with why."""

    queued: list[int] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (refused keys as strings)."""
        return {
            "queued": self.queued,
            "superseded": self.superseded,
            "refused": {str(k): v for k, v in self.refused.items()},
        }


def _targets(conn: sa.Connection) -> list[int]:
    """Runs whose not_found changes the next plan may carry: the latest successful one, and newer planned ones."""
    latest = conn.execute(
        sa.select(SyncRun.id)
        .where(SyncRun.status == SyncRunStatus.SUCCESS.value, SyncRun.dry_run.is_(False))
        .order_by(SyncRun.id.desc())
        .limit(1)
    ).scalar()
    if latest is None:
        return []
    newer = conn.execute(
        sa.select(SyncRun.id, SyncRun.counts).where(
            SyncRun.id > latest, SyncRun.status == SyncRunStatus.RUNNING.value, SyncRun.dry_run.is_(False)
        )
    ).all()
    return [latest, *(r.id for r in newer if (r.counts or {}).get("planned"))]


def replay_dead_letters(
    engine: Engine, letter_ids: Sequence[int], user: str, now: dt.datetime | None = None
) -> ReplayResult:
    """Queue the customers of these sync dead letters for the next sync run (see the module docstring)."""
    ids = sorted({int(i) for i in letter_ids})
    if not ids:
        raise ActionRefused("no dead letters selected")
    if len(ids) > MAX_REPLAY:
        raise ActionRefused(f"at most {MAX_REPLAY} dead letters can be replayed at once; {len(ids)} were selected")
    moment = now or dt.datetime.now(dt.UTC)
    result = ReplayResult()
    with engine.begin() as conn:
        letters = {r.id: r for r in conn.execute(sa.select(DeadLetter).where(DeadLetter.id.in_(ids))).all()}
        targets = _targets(conn)
        for letter_id in ids:
            letter = letters.get(letter_id)
            if letter is None:
                result.refused[letter_id] = "no such dead letter"
                continue
            if letter.replayed_at is not None:
                result.refused[letter_id] = f"already replayed at {letter.replayed_at.isoformat()}"
                continue
            if letter.kind == DeadLetterKind.SEND.value or not letter.ref.startswith(SYNC_REF_PREFIX):
                result.refused[letter_id] = "campaign send letters are not replayed from the page"
                continue
            run_id = int(letter.ref.removeprefix(SYNC_REF_PREFIX))
            change = conn.execute(
                sa.select(SyncChange).where(
                    SyncChange.sync_run_id == run_id, SyncChange.customer_id == letter.customer_id
                )
            ).one_or_none()
            if change is None:
                result.refused[letter_id] = f"sync run {run_id} no longer holds this customer's change"
                continue
            if not targets:
                result.refused[letter_id] = "no successful sync run yet to carry it: run the sync first"
                continue
            later = conn.execute(
                sa.select(sa.func.count())
                .select_from(SyncChange)
                .join(SyncRun, SyncRun.id == SyncChange.sync_run_id)
                .where(
                    SyncChange.customer_id == letter.customer_id,
                    SyncChange.sync_run_id > run_id,
                    SyncRun.dry_run.is_(False),
                )
            ).scalar_one()
            if later:
                conn.execute(sa.update(DeadLetter).where(DeadLetter.id == letter_id).values(replayed_at=moment))
                result.superseded.append(letter_id)
                continue
            reason = f"replay of dead letter {letter_id} requested by {user}"
            values = {
                "ext_id": change.ext_id,
                "new_hash": change.new_hash,
                "set_attrs": change.set_attrs,
                "unset_attrs": change.unset_attrs,
                "present_bits": change.present_bits,
                "set_batch_no": None,
                "unset_batch_no": None,
                "status": ChangeStatus.NOT_FOUND.value,
                "reason": reason,
            }
            for target in targets:
                key = (SyncChange.sync_run_id == target, SyncChange.customer_id == letter.customer_id)
                if conn.execute(sa.select(sa.func.count()).select_from(SyncChange).where(*key)).scalar_one():
                    conn.execute(sa.update(SyncChange).where(*key).values(values))
                else:
                    conn.execute(
                        sa.insert(SyncChange).values(sync_run_id=target, customer_id=letter.customer_id, **values)
                    )
            conn.execute(sa.update(DeadLetter).where(DeadLetter.id == letter_id).values(replayed_at=moment))
            result.queued.append(letter_id)
    log.warning("UI action by %s: replay of dead letters %s -> %s", user, ids, result.as_dict())
    return result
