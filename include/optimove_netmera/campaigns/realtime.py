"""Single-target sends (Optimove event 11): drain the ``events`` queue in micro-batches.

The endpoint stores each event 11 as an ``events`` row with status ``queued``. A drainer claims up to
``campaigns.chunk_size`` of them at once (one conditional ``UPDATE ... WHERE status='queued' RETURNING``:
two drainers never get the same row), sends them in **one** ``sendNotification`` request with an array
body (one object per event: its template's notificationKey, its own ``promoCode`` param, its customer's
extId), then marks them:

* ``sent`` (note: the request id);
* ``cancelled`` when the campaign (or, after a partial cancel, the customer) is cancelled;
* ``ignored`` with a ``skipped: ...`` note: no notificationKey mapped for the template, a required param
  missing, or an unknown extId (Netmera's 400 code 5016 when no target of the request is known: never
  retried). A 4xx for a batch of several events is retried event by event, so one bad event cannot sink
  the others;
* ``failed`` with an ``outcome unknown`` note after a 5xx / timeout / dropped connection (the push may
  have gone out), and for rows left ``processing`` by a drainer that died. Those are not re-sent unless
  ``resend_unknown`` puts them back in the queue.

Personal params: an event 11 carries no customer attributes, so ``message.params`` holds ``promoCode``;
the template's other placeholders are resolved by Netmera from the profile the user sync keeps.

:func:`drain` is the worker-side loop (poll every ``poll_seconds`` while events flow);
:class:`QueuedEventsTrigger` is the triggerer-side wait for the next event once the queue has been idle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from airflow.triggers.base import BaseTrigger, TriggerEvent
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.send import is_unknown_target
from optimove_netmera.http import ApiError, is_payload_rejection
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import Settings
from optimove_netmera.store import (
    Campaign,
    CampaignState,
    CancelledCustomer,
    Event,
    EventStatus,
    session_scope,
    transition,
)

__all__ = [
    "REALTIME_EVENT_TYPE",
    "UNKNOWN_NOTE",
    "DrainOutcome",
    "QueuedEventsTrigger",
    "claim_batch",
    "drain",
    "drain_once",
    "percentile",
    "queued_count",
    "recover_stale",
    "requeue_unknown",
]

log = logging.getLogger(__name__)

REALTIME_EVENT_TYPE = 11
UNKNOWN_NOTE = "outcome unknown"
SKIPPED_UNKNOWN_EXT_ID = "skipped: unknown extId (Netmera 5016)"
MAX_LATENCY_SAMPLES = 1000
_E = Event.__table__
_C = Campaign.__table__


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class DrainOutcome:
    """What a drainer did (counts and latencies in seconds; never customer data)."""

    batches: int = 0
    requests: int = 0
    sent: int = 0
    cancelled: int = 0
    skipped: int = 0
    failed: int = 0
    unknown: int = 0
    recovered_unknown: int = 0
    requeued_unknown: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: DrainOutcome) -> None:
        """Fold another outcome into this one (latency samples are capped)."""
        for name in ("batches", "requests", "sent", "cancelled", "skipped", "failed", "unknown"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.recovered_unknown += other.recovered_unknown
        self.requeued_unknown += other.requeued_unknown
        self.latencies = (self.latencies + other.latencies)[-MAX_LATENCY_SAMPLES:]

    def summary(self) -> dict[str, Any]:
        """Counts plus p50/p95/max of receipt -> request latency (for logs and XCom)."""
        out = {k: v for k, v in asdict(self).items() if k != "latencies"}
        out["latency_samples"] = len(self.latencies)
        for name, q in (("latency_p50_s", 0.5), ("latency_p95_s", 0.95), ("latency_max_s", 1.0)):
            value = percentile(self.latencies, q)
            out[name] = None if value is None else round(value, 4)
        return out

    def state(self) -> dict[str, Any]:
        """Everything, JSON-ready (carried across deferrals)."""
        data = asdict(self)
        data["latencies"] = [round(v, 4) for v in self.latencies]
        return data

    @classmethod
    def from_state(cls, data: dict[str, Any] | None) -> DrainOutcome:
        """Rebuild from :meth:`state`."""
        return cls(**(data or {}))


# --------------------------------------------------------------------------------------------------
# Queue operations
# --------------------------------------------------------------------------------------------------


def _queued() -> tuple[Any, Any]:
    return (_E.c.status == EventStatus.QUEUED.value, _E.c.event_type_id == REALTIME_EVENT_TYPE)


def queued_count(engine: Engine) -> int:
    """Queued event-11 rows (index ``ix_events_status_event_type_id_id``)."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(_E).where(*_queued())) or 0)


def claim_batch(engine: Engine, limit: int, claimed_by: str | None) -> list[Any]:
    """queued -> processing for the oldest ``limit`` event-11 rows; the rows this caller won."""
    oldest = sa.select(_E.c.id).where(*_queued()).order_by(_E.c.id).limit(int(limit)).scalar_subquery()
    with session_scope(engine) as session:
        rows = session.execute(
            sa.update(_E)
            .where(_E.c.id.in_(oldest), *_queued())
            .values(status=EventStatus.PROCESSING.value, dag_run_id=claimed_by)
            .returning(
                _E.c.id,
                _E.c.campaign_id,
                _E.c.channel_id,
                _E.c.customer_id,
                _E.c.template_id,
                _E.c.promo_code,
                _E.c.received_at,
            )
        ).all()
    return sorted(rows, key=lambda r: r.id)


def _set(engine: Engine, ids: Sequence[int], status: str, note: str | None) -> int:
    if not ids:
        return 0
    with session_scope(engine) as session:
        return transition(
            session,
            Event,
            _E.c.id.in_(list(ids)),
            from_status=EventStatus.PROCESSING.value,
            to_status=status,
            values={"note": note},
        )


def recover_stale(engine: Engine, stale_seconds: float) -> int:
    """Rows left ``processing`` longer than ``stale_seconds`` (their drainer died): failed, outcome unknown."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max(0.0, stale_seconds))
    with session_scope(engine) as session:
        return transition(
            session,
            Event,
            _E.c.event_type_id == REALTIME_EVENT_TYPE,
            _E.c.updated_at <= cutoff,
            from_status=EventStatus.PROCESSING.value,
            to_status=EventStatus.FAILED.value,
            values={"note": f"{UNKNOWN_NOTE}: in flight when its worker died; not re-sent"},
        )


def requeue_unknown(engine: Engine) -> int:
    """``resend_unknown``: events whose outcome is unknown go back to the queue."""
    with session_scope(engine) as session:
        return transition(
            session,
            Event,
            _E.c.event_type_id == REALTIME_EVENT_TYPE,
            _E.c.note.like(f"{UNKNOWN_NOTE}%"),
            from_status=EventStatus.FAILED.value,
            to_status=EventStatus.QUEUED.value,
            values={"note": "re-queued by resend_unknown"},
        )


def _cancelled(engine: Engine, rows: Sequence[Any]) -> set[int]:
    """Ids of claimed events whose campaign (or, after a partial cancel, whose customer) is cancelled."""
    pairs = {(r.campaign_id, r.channel_id) for r in rows}
    campaigns = sorted({c for c, _ in pairs})
    with engine.connect() as connection:
        states = {
            (row.campaign_id, row.channel_id): row.state
            for row in connection.execute(
                sa.select(_C.c.campaign_id, _C.c.channel_id, _C.c.state).where(_C.c.campaign_id.in_(campaigns))
            )
        }
        listed = {
            (row.campaign_id, row.customer_id)
            for row in connection.execute(
                sa.select(CancelledCustomer.campaign_id, CancelledCustomer.customer_id).where(
                    CancelledCustomer.campaign_id.in_(campaigns),
                    CancelledCustomer.customer_id.in_(sorted({r.customer_id for r in rows})),
                )
            )
        }
    cancelled = CampaignState.CANCELLED.value
    return {
        r.id
        for r in rows
        if states.get((r.campaign_id, r.channel_id)) == cancelled or (r.campaign_id, r.customer_id) in listed
    }


# --------------------------------------------------------------------------------------------------
# Draining
# --------------------------------------------------------------------------------------------------


def _request(row: Any, settings: Settings) -> tuple[dict[str, Any] | None, str | None]:
    """The request object for one event, or (None, skip note)."""
    key = settings.campaigns.templates.get(int(row.template_id)) if row.template_id is not None else None
    if key is None:
        return None, f"skipped: {personalise.no_mapping_reason(row.template_id)}"
    params = personalise.build_params(None, {}, row.promo_code)
    required = [p for p in settings.campaigns.required_params if p == personalise.PROMO_PARAM]
    missing = personalise.missing_required(params, required)
    if missing:
        return None, f"skipped: missing required param(s): {', '.join(missing)}"
    return personalise.request_object(key, settings.ext_id.apply(row.customer_id), params), None


def _send(
    engine: Engine,
    netmera: NetmeraClient,
    ids: list[int],
    bodies: list[dict[str, Any]],
    received: list[dt.datetime],
    out: DrainOutcome,
) -> None:
    """One request for ``ids``; on a 4xx for several events, one request per event."""
    request_id = uuid.uuid4().hex
    started = dt.datetime.now(dt.UTC)
    out.requests += 1
    try:
        netmera.send_notification(bodies)
    except ApiError as exc:
        if is_unknown_target(exc):
            out.skipped += _set(engine, ids, EventStatus.IGNORED.value, SKIPPED_UNKNOWN_EXT_ID)
            return
        if is_payload_rejection(exc):
            if len(ids) > 1:
                log.warning("a batch of %d events was refused (%s); sending them one by one", len(ids), exc)
                for i, body, moment in zip(ids, bodies, received, strict=True):
                    _send(engine, netmera, [i], [body], [moment], out)
                return
            out.failed += _set(engine, ids, EventStatus.FAILED.value, f"refused by Netmera: {exc}"[:2000])
            return
        if exc.ambiguous:
            out.unknown += _set(engine, ids, EventStatus.FAILED.value, f"{UNKNOWN_NOTE}: {exc}; not re-sent"[:2000])
        else:
            _set(engine, ids, EventStatus.QUEUED.value, f"not sent ({exc}); queued again"[:2000])
        raise
    out.sent += _set(engine, ids, EventStatus.SENT.value, f"request {request_id}")
    out.latencies.extend(max(0.0, (started - moment).total_seconds()) for moment in received)
    out.latencies = out.latencies[-MAX_LATENCY_SAMPLES:]


def drain_once(
    engine: Engine, netmera: NetmeraClient, settings: Settings, *, claimed_by: str | None = None
) -> DrainOutcome:
    """Claim and send one micro-batch (at most ``campaigns.chunk_size`` events); empty outcome if none queued."""
    out = DrainOutcome()
    rows = claim_batch(engine, settings.campaigns.chunk_size, claimed_by)
    if not rows:
        return out
    out.batches = 1
    cancelled = _cancelled(engine, rows)
    out.cancelled += _set(engine, sorted(cancelled), EventStatus.CANCELLED.value, "campaign cancelled")
    ids: list[int] = []
    bodies: list[dict[str, Any]] = []
    received: list[dt.datetime] = []
    skipped: dict[str, list[int]] = {}
    for row in rows:
        if row.id in cancelled:
            continue
        body, note = _request(row, settings)
        if body is None:
            skipped.setdefault(note or "skipped", []).append(row.id)
            continue
        ids.append(row.id)
        bodies.append(body)
        received.append(row.received_at)
    for note, skip_ids in skipped.items():
        out.skipped += _set(engine, skip_ids, EventStatus.IGNORED.value, note)
    if ids:
        _send(engine, netmera, ids, bodies, received, out)
    return out


def drain(
    engine: Engine,
    netmera: NetmeraClient,
    settings: Settings,
    *,
    claimed_by: str | None = None,
    until: float | None = None,
    idle_seconds: float = 0.0,
    poll_seconds: float = 0.2,
    should_stop: Callable[[], bool] = lambda: False,
) -> DrainOutcome:
    """Drain micro-batches until the queue has been empty for ``idle_seconds`` or ``until`` (monotonic) passes.

    With ``idle_seconds=0`` it returns as soon as the queue is empty.
    """
    total = DrainOutcome()
    last_work = time.monotonic()
    while not should_stop():
        batch = drain_once(engine, netmera, settings, claimed_by=claimed_by)
        total.add(batch)
        now = time.monotonic()
        if batch.batches:
            last_work = now
            log.info("micro-batch: %s", {k: v for k, v in batch.summary().items() if v})
            continue
        if until is not None and now >= until:
            break
        if now - last_work >= idle_seconds:
            break
        time.sleep(poll_seconds)
    return total


# --------------------------------------------------------------------------------------------------
# Trigger
# --------------------------------------------------------------------------------------------------


def _state_engine() -> Engine:
    from optimove_netmera.settings import get_settings
    from optimove_netmera.store import get_engine

    return get_engine(get_settings().resolved_state_db_url())


class QueuedEventsTrigger(BaseTrigger):
    """Wait (in the triggerer) until an event 11 is queued or ``deadline`` (ISO 8601) passes.

    Polls a ``COUNT(*)`` on the queue index every ``poll_seconds``. Yields ``{"status": "queued", "count": n}``
    or ``{"status": "timeout"}``, plus ``deadline`` and the opaque ``carry`` it was given (the drainer's
    totals so far: counts and latency samples, no customer data), so the resumed task gets them back on
    every path (``dag.test()`` replaces a deferral's kwargs with the event). The state database URL is
    resolved from the settings in the triggerer (never serialised: it may hold a password). It only
    reads, so running it twice is harmless.
    """

    def __init__(self, deadline: str, poll_seconds: float = 1.0, carry: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.deadline = deadline
        self.poll_seconds = poll_seconds
        self.carry = carry or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"deadline": self.deadline, "poll_seconds": self.poll_seconds, "carry": self.carry},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until something is queued or the deadline passes."""
        deadline = dt.datetime.fromisoformat(self.deadline)
        engine = await asyncio.to_thread(_state_engine)
        while True:
            try:
                count = await asyncio.to_thread(queued_count, engine)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("could not read the event queue, will poll again: %s", type(exc).__name__)
                count = 0
            if count:
                yield TriggerEvent({"status": "queued", "count": count, "deadline": self.deadline, "carry": self.carry})
                return
            if dt.datetime.now(dt.UTC) >= deadline:
                yield TriggerEvent({"status": "timeout", "deadline": self.deadline, "carry": self.carry})
                return
            await asyncio.sleep(self.poll_seconds)
