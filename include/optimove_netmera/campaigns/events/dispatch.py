"""Step 3, dispatch: act on a ``received`` row and move it to ``dispatched``.

13 records the campaign and creates a run of ``optimove_campaign_send`` (run_id
:func:`~.keys.campaign_run_id`, conf :func:`~.keys.campaign_conf`); 4 cancels the campaign; 3 creates a
run of ``optimove_user_sync`` for that day unless one exists. Every action is idempotent (deterministic
run ids, "insert unless exists"), so a dispatch may be repeated safely. If it fails the row stays
``received`` with the error in ``note`` and is retried: by the API server's dispatcher and its 30 s sweep,
and hourly by the reconcile DAG (:func:`dispatch_pending`). :func:`ingest` is store + dispatch in one call
(the reconcile DAG and manual tools); the endpoint stores and leaves the dispatch to :mod:`.dispatcher`, off
the request path.
Dispatch order does not matter: a cancel wins over its campaign's 13 whichever is dispatched first.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.events.keys import campaign_conf, campaign_run_id, user_sync_run_id
from optimove_netmera.campaigns.events.parse import (
    ACTED_ON_EVENT_TYPES,
    EARLIEST_EVENT_TIME,
    LATEST_EVENT_TIME,
    OptimoveEvent,
)
from optimove_netmera.campaigns.events.store import StoredEvent, store_event
from optimove_netmera.campaigns.events.triggers import (
    CAMPAIGN_SEND_DAG_ID,
    USER_SYNC_DAG_ID,
    DagTrigger,
    PermanentDispatchError,
    default_trigger,
)
from optimove_netmera.settings import Settings, get_settings
from optimove_netmera.store import (
    Event,
    EventSource,
    EventStatus,
    StateDatabaseError,
    as_utc,
    session_scope,
    transition,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchResult:
    """What dispatching one event did: ``status`` is the row's status afterwards."""

    event_id: int
    status: str
    dag_run_id: str | None = None
    note: str | None = None
    error: str | None = None


def _columns() -> list[Any]:
    table = Event.__table__
    return [
        table.c.id,
        table.c.event_type_id,
        table.c.campaign_id,
        table.c.channel_id,
        table.c.event_time,
        table.c.source,
        table.c.status,
        table.c.dag_run_id,
        table.c.note,
    ]


def _load(engine: Engine, event_id: int) -> Any:
    table = Event.__table__
    with engine.connect() as connection:
        return connection.execute(sa.select(*_columns()).where(table.c.id == int(event_id))).one_or_none()


def _act(engine: Engine, row: Any, trigger: DagTrigger) -> tuple[str | None, str]:
    """Perform the event's action; return (dag_run_id, note). Raises on failure."""
    from optimove_netmera.campaigns import state

    event_time = as_utc(row.event_time)
    if not EARLIEST_EVENT_TIME <= event_time < LATEST_EVENT_TIME:
        raise PermanentDispatchError(
            f"event time {event_time:%Y-%m-%d %H:%M:%S} is outside {EARLIEST_EVENT_TIME:%Y-%m-%d} to "
            f"{LATEST_EVENT_TIME:%Y-%m-%d}; it can never be dispatched (re-send the event with its real time)"
        )
    if row.event_type_id == 13:
        run_id = campaign_run_id(row.campaign_id, row.channel_id, event_time)
        state.record_campaign(engine, row.campaign_id, row.channel_id, event_time, run_id)
        conf = campaign_conf(row.campaign_id, row.channel_id, event_time, row.id, row.source)
        created = trigger.trigger(CAMPAIGN_SEND_DAG_ID, run_id, conf, note=f"Optimove event {row.id} ({row.source})")
        return run_id, f"{CAMPAIGN_SEND_DAG_ID} run {'created' if created else 'already existed'}"
    if row.event_type_id == 4:
        if row.channel_id is None:  # every channel: first record those its stored 13s announce
            _record_announced(engine, row.campaign_id)
        cancelled = state.mark_cancelled(engine, row.campaign_id, row.channel_id, event_time, row.source)
        return None, f"campaign cancelled ({cancelled} pending recipient(s) cancelled)"
    if row.event_type_id == 3:
        day = event_time.astimezone(dt.UTC).date()
        run_id = user_sync_run_id(day)
        if trigger.has_run_on(USER_SYNC_DAG_ID, day):
            return None, f"{USER_SYNC_DAG_ID} already has a run for {day}"
        created = trigger.trigger(
            USER_SYNC_DAG_ID, run_id, {}, logical_date=event_time, note=f"Optimove event {row.id}: daily process done"
        )
        return run_id, f"{USER_SYNC_DAG_ID} run {'created' if created else 'already existed'}"
    raise PermanentDispatchError(f"event type {row.event_type_id} is not dispatched")


def _record_announced(engine: Engine, campaign_id: int) -> None:
    """Record the campaign on the channel of every stored 13 not dispatched yet (as its dispatch will).

    A cancel without a channel cancels the channels the campaign has rows for; a 13 stored before the
    cancel but dispatched after it (dispatch runs off the request path, in any process) has no row yet,
    so without this it would escape the cancel.
    """
    from optimove_netmera.campaigns import state

    table = Event.__table__
    with engine.connect() as connection:
        announced = connection.execute(
            sa.select(table.c.channel_id, table.c.event_time)
            .where(
                table.c.event_type_id == 13,
                table.c.campaign_id == int(campaign_id),
                table.c.status == EventStatus.RECEIVED.value,
                table.c.channel_id.is_not(None),
            )
            .order_by(table.c.id)
        ).all()
    for channel_id, event_time in announced:
        when = as_utc(event_time)
        state.record_campaign(engine, campaign_id, channel_id, when, campaign_run_id(campaign_id, channel_id, when))


def dispatch_event(
    engine: Engine, event_id: int, *, trigger: DagTrigger | None = None, settings: Settings | None = None
) -> DispatchResult:
    """Act on a ``received`` event (13, 4, 3) and mark it ``dispatched``; a row in any other status is left alone.

    Never raises for a failed action: the row stays ``received`` with the error in ``note`` (for
    :func:`dispatch_pending`) and the result carries ``error``; a permanent failure
    (:class:`PermanentDispatchError`, ``OverflowError``) moves it to ``failed`` with the reason instead,
    once, so no sweep retries it. State-database errors propagate.
    """
    row = _load(engine, event_id)
    if row is None:
        raise LookupError(f"no event {event_id} in the state database")
    if row.status != EventStatus.RECEIVED.value:
        return DispatchResult(row.id, row.status, row.dag_run_id, row.note)
    what = f"Optimove event {row.id} (type {row.event_type_id}, campaign {row.campaign_id}, channel {row.channel_id})"
    try:
        dag_run_id, note = _act(engine, row, trigger or default_trigger(settings))
    except (PermanentDispatchError, OverflowError) as exc:
        error = f"dispatch failed permanently: {type(exc).__name__}: {exc}"[:2000]
        with session_scope(engine) as session:
            moved = transition(
                session,
                Event,
                key={"id": row.id},
                from_status=EventStatus.RECEIVED.value,
                to_status=EventStatus.FAILED.value,
                values={"note": error},
            )
        if moved:
            log.error("%s marked failed, not retried: %s", what, error)
        return DispatchResult(row.id, EventStatus.FAILED.value, None, error, error)
    except Exception as exc:
        error = f"dispatch failed: {type(exc).__name__}: {exc}"[:2000]
        log.error("%s stays received and will be retried: %s", what, error)
        _note_failure(engine, row.id, error)
        return DispatchResult(row.id, EventStatus.RECEIVED.value, None, error, error)
    with session_scope(engine) as session:
        moved = _mark_dispatched(session, row.id, dag_run_id, note)
    log.info("%s dispatched: %s%s", what, note, f" ({dag_run_id})" if dag_run_id else "")
    status = EventStatus.DISPATCHED.value if moved else str(_load(engine, row.id).status)
    return DispatchResult(row.id, status, dag_run_id, note)


def _mark_dispatched(session: Any, event_id: int, dag_run_id: str | None, note: str) -> bool:
    """received -> dispatched with the run it made; False when another dispatcher moved the event first."""
    return (
        transition(
            session,
            Event,
            key={"id": event_id},
            from_status=EventStatus.RECEIVED.value,
            to_status=EventStatus.DISPATCHED.value,
            values={"dag_run_id": dag_run_id, "note": note},
        )
        == 1
    )


def _note_failure(engine: Engine, event_id: int, error: str) -> None:
    table = Event.__table__
    try:
        with session_scope(engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.id == event_id, table.c.status == EventStatus.RECEIVED.value)
                .values(note=error)
            )
    except (StateDatabaseError, sa.exc.SQLAlchemyError) as exc:
        log.warning("could not record the dispatch failure of event %s: %s", event_id, type(exc).__name__)


def dispatch_events(
    engine: Engine, event_ids: Sequence[int], *, trigger: DagTrigger | None = None, settings: Settings | None = None
) -> list[DispatchResult]:
    """:func:`dispatch_event` for each of ``event_ids``, one result each, in order; the 13s together.

    When the trigger can create several runs at once (``trigger_many``, :class:`AirflowDagTrigger`), the
    ``received`` 13s among them are dispatched as one batch: their campaigns recorded in one transaction
    (before their runs, as one by one, so a cancel still wins), their runs created in one Airflow transaction,
    their rows moved to ``dispatched`` in one more. Whatever the batch did not finish (it failed, or a row
    was no longer ``received``) and every other event goes through :func:`dispatch_event` on its own, which
    retries, classifies the failure and notes it. State-database errors propagate.
    """
    ids = [int(i) for i in event_ids]
    chosen = trigger or default_trigger(settings)
    done: dict[int, DispatchResult] = {}
    trigger_many = getattr(chosen, "trigger_many", None)
    if trigger_many is not None and len(ids) > 1:
        table = Event.__table__
        with engine.connect() as connection:
            rows = connection.execute(sa.select(*_columns()).where(table.c.id.in_(ids)).order_by(table.c.id)).all()
        campaigns = [
            row
            for row in rows
            if row.status == EventStatus.RECEIVED.value
            and row.event_type_id == 13
            and EARLIEST_EVENT_TIME <= as_utc(row.event_time) < LATEST_EVENT_TIME
        ]
        if len(campaigns) > 1:
            done = _dispatch_campaigns(engine, campaigns, trigger_many)
    return [done.get(i) or dispatch_event(engine, i, trigger=chosen, settings=settings) for i in ids]


def _dispatch_campaigns(engine: Engine, rows: list[Any], trigger_many: Any) -> dict[int, DispatchResult]:
    """Dispatch ``received`` 13s as one batch; the results of those it finished (see :func:`dispatch_events`)."""
    from optimove_netmera.campaigns import state

    planned = []
    for row in rows:
        when = as_utc(row.event_time)
        run_id = campaign_run_id(row.campaign_id, row.channel_id, when)
        conf = campaign_conf(row.campaign_id, row.channel_id, when, row.id, row.source)
        planned.append((row, when, run_id, conf))
    # recorded before their runs exist, as one by one: a cancel stored meanwhile finds (and keeps) them cancelled
    state.record_campaigns(engine, [(r.campaign_id, r.channel_id, when, run_id) for r, when, run_id, _ in planned])
    try:
        created = trigger_many(
            CAMPAIGN_SEND_DAG_ID,
            [(run_id, conf, f"Optimove event {row.id} ({row.source})") for row, _, run_id, conf in planned],
        )
    except Exception as exc:  # one of them (or all) failed: each is dispatched on its own, which tells which and why
        log.warning(
            "%d Optimove campaign events could not be dispatched together (%s): dispatching each on its own",
            len(planned),
            type(exc).__name__,
        )
        return {}
    results: dict[int, DispatchResult] = {}
    with session_scope(engine) as session:
        for row, _, run_id, _ in planned:
            note = f"{CAMPAIGN_SEND_DAG_ID} run {'created' if created[run_id] else 'already existed'}"
            if _mark_dispatched(session, row.id, run_id, note):
                results[row.id] = DispatchResult(row.id, EventStatus.DISPATCHED.value, run_id, note)
    for row, _, run_id, _ in planned:
        if row.id in results:
            what = f"Optimove event {row.id} (type 13, campaign {row.campaign_id}, channel {row.channel_id})"
            log.info("%s dispatched: %s (%s)", what, results[row.id].note, run_id)
    return results


@dataclass(frozen=True)
class IngestResult:
    """Store + dispatch of one event."""

    stored: StoredEvent
    dispatch: DispatchResult | None = None

    released: bool = False

    @property
    def response_status(self) -> str:
        """``accepted``, ``duplicate``, ``held`` or ``ignored`` (what the endpoint answers).

        A repeat of a held event that the configuration now covers is released and ``accepted``.
        """
        if self.released:
            return "accepted"
        if self.stored.status == EventStatus.HELD.value:
            return "held"
        if not self.stored.created:
            return "duplicate"
        if self.stored.status == EventStatus.IGNORED.value:
            return "ignored"
        return "accepted"


def ingest(
    engine: Engine,
    event: OptimoveEvent,
    *,
    source: str = EventSource.WEBHOOK.value,
    raw: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    trigger: DagTrigger | None = None,
) -> IngestResult:
    """Store the event and, if it is new and ``received``, dispatch it right away."""
    from optimove_netmera.campaigns.events.held import release_held

    s = settings or get_settings()
    stored = store_event(engine, event, source=source, raw=raw, settings=s)
    released = False
    if not stored.created and stored.status == EventStatus.HELD.value:  # Optimove retried a held event
        new_status = release_held(engine, stored.event_id, s, by=f"a repeat from {source}")
        if new_status is not None:
            released = True
            stored = replace(stored, status=new_status)
    if not (stored.created or released) or stored.status != EventStatus.RECEIVED.value:
        return IngestResult(stored, released=released)
    try:
        dispatched = dispatch_event(engine, stored.event_id, trigger=trigger, settings=s)
    except Exception as exc:  # the event is stored: it must be answered 2xx and retried later
        error = f"dispatch failed: {type(exc).__name__}"
        log.error("Optimove event %s stays received and will be retried: %s", stored.event_id, error)
        dispatched = DispatchResult(stored.event_id, EventStatus.RECEIVED.value, None, error, error)
    return IngestResult(stored, dispatched, released=released)


@dataclass
class PendingReport:
    """What :func:`dispatch_pending` did."""

    checked: int = 0
    dispatched: int = 0
    failed: int = 0
    event_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """Counts only (what a task returns to XCom)."""
        return {"checked": self.checked, "dispatched": self.dispatched, "failed": self.failed}


def pending_event_ids(engine: Engine, *, older_than_seconds: float = 60, limit: int = 500) -> list[int]:
    """Ids of ``received`` events of the dispatched types stored more than ``older_than_seconds`` ago."""
    table = Event.__table__
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max(0.0, older_than_seconds))
    stmt = (
        sa.select(table.c.id)
        .where(
            table.c.status == EventStatus.RECEIVED.value,
            table.c.event_type_id.in_(sorted(ACTED_ON_EVENT_TYPES - {11})),
            table.c.received_at <= cutoff,
        )
        .order_by(table.c.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [int(i) for i in connection.scalars(stmt)]


def dispatch_pending(
    engine: Engine,
    *,
    older_than_seconds: float = 60,
    limit: int = 500,
    trigger: DagTrigger | None = None,
    settings: Settings | None = None,
) -> PendingReport:
    """Re-dispatch events that got their 2xx but whose dispatch failed or never ran (status ``received``).

    Rows younger than ``older_than_seconds`` are left to the dispatcher of the process that stored them. Safe
    to run concurrently and repeatedly (every action is idempotent). The API server's sweep runs it when its
    dispatcher is off (else it hands the ids to the dispatcher); the reconcile DAG calls it from a task
    (``trigger`` then defaults to :class:`TaskDagTrigger`).
    """
    report = PendingReport()
    chosen = trigger or default_trigger(settings)
    for event_id in pending_event_ids(engine, older_than_seconds=older_than_seconds, limit=limit):
        report.checked += 1
        result = dispatch_event(engine, event_id, trigger=chosen, settings=settings)
        if result.error:
            report.failed += 1
        elif result.status == EventStatus.DISPATCHED.value:
            report.dispatched += 1
            report.event_ids.append(event_id)
    if report.checked:
        log.info("re-dispatch of pending Optimove events: %s", report.as_dict())
    return report
