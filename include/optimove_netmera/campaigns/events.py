"""Optimove campaign events: payload validation, dedup key, durable storage and dispatch.

One inbound event goes through three steps, shared by the HTTP endpoint (source ``webhook``), the
reconciliation DAG (``reconcile``) and manual tools (``manual``), so every path dedups identically:

1. :func:`parse_event` turns a decoded JSON object into an :class:`OptimoveEvent` (pydantic). Keys are
   matched case-insensitively, so the seed's camelCase (``eventTypeId``, ``timeStamp``, ``campaignId``,
   ``channelId``) and Optimove's PascalCase (``EventTypeID``, ``TimeStamp``, ``CampaignID``, ``ChannelID``)
   both work, as do the single-target fields ``customerID``, ``templateID`` and ``promoCode``. Every
   problem is reported as a :class:`FieldError` that names the field.
2. :func:`store_event` writes the ``events`` row under :func:`dedup_key` (``INSERT ... ON CONFLICT DO
   NOTHING``): a repeat is reported as a duplicate and never acted on again. The initial status:
   ``ignored`` for the acknowledged types 1, 2, 5, 14 and for channels not in ``campaigns.channels``;
   ``queued`` for 11 (the realtime DAG drains those rows); ``received`` for 13, 4 and 3.
3. :func:`dispatch_event` acts on a ``received`` row and moves it to ``dispatched``: 13 records the
   campaign and creates a run of ``optimove_campaign_send`` (run_id :func:`campaign_run_id`, conf
   :func:`campaign_conf`); 4 cancels the campaign; 3 creates a run of ``optimove_user_sync`` for that day
   unless one exists. Every action is idempotent (deterministic run ids, "insert unless exists"), so a
   dispatch may be repeated safely. If it fails the row stays ``received`` with the error in ``note`` and
   :func:`dispatch_pending` (run every 30 s by the API server and hourly by the reconcile DAG) retries it.

DAG runs are created by a :class:`DagTrigger`: :class:`AirflowDagTrigger` in processes that may use the
metadata database (the API server, the CLI, tests) and :class:`TaskDagTrigger` inside a running task
(through the task's Execution API channel, as ``TriggerDagRunOperator`` does). :func:`default_trigger`
picks the right one. Logs name event ids, types, campaigns and channels, never customer ids or keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from optimove_netmera.settings import Settings, get_settings
from optimove_netmera.store import (
    Event,
    EventSource,
    EventStatus,
    StateDatabaseError,
    insert_if_absent,
    session_scope,
    transition,
)

__all__ = [
    "ACKNOWLEDGED_EVENT_TYPES",
    "ACTED_ON_EVENT_TYPES",
    "CAMPAIGN_SEND_DAG_ID",
    "EVENT_TYPES",
    "USER_SYNC_DAG_ID",
    "AirflowDagTrigger",
    "DagTrigger",
    "DispatchError",
    "DispatchResult",
    "EventValidationError",
    "FieldError",
    "IngestResult",
    "OptimoveEvent",
    "StoredEvent",
    "TaskDagTrigger",
    "campaign_conf",
    "campaign_run_id",
    "dedup_key",
    "default_trigger",
    "dispatch_event",
    "dispatch_pending",
    "ingest",
    "parse_event",
    "redact_payload",
    "store_event",
    "user_sync_run_id",
]

log = logging.getLogger(__name__)

CAMPAIGN_SEND_DAG_ID = "optimove_campaign_send"
USER_SYNC_DAG_ID = "optimove_user_sync"

ACTED_ON_EVENT_TYPES: frozenset[int] = frozenset({3, 4, 11, 13})
"""3 daily process completed, 4 campaign cancelled, 11 single-target send, 13 campaign executed on a channel."""
ACKNOWLEDGED_EVENT_TYPES: frozenset[int] = frozenset({1, 2, 5, 14})
"""Stored with status ``ignored``: 1 campaign processed, 2 all campaigns processed, 5 conditional, 14 SDK flow."""
EVENT_TYPES: frozenset[int] = ACTED_ON_EVENT_TYPES | ACKNOWLEDGED_EVENT_TYPES

REQUIRED_FIELDS: dict[int, tuple[str, ...]] = {
    13: ("campaign_id", "channel_id"),
    4: ("campaign_id",),
    11: ("campaign_id", "channel_id", "customer_id", "template_id"),
}
"""Fields an event type needs besides ``eventTypeId`` and ``timeStamp`` (4 without a channel: every channel)."""

TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?$")
_DIGITS = re.compile(r"^[0-9]+$")
_NEGATIVE = re.compile(r"^-[0-9]+$")
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_CUSTOMER_ID_LENGTH = 255

# Payload keys that carry secrets (event 14's storage credentials): never stored, never logged.
SENSITIVE_KEYS = frozenset({"decryptionkey", "serviceaccount"})
REDACTED = "[redacted]"

# canonical field -> the name the seed (camelCase) uses; keys are matched on their lower-case form
_WIRE_NAMES = {
    "event_type_id": "eventTypeId",
    "event_time": "timeStamp",
    "campaign_id": "campaignId",
    "channel_id": "channelId",
    "customer_id": "customerID",
    "template_id": "templateID",
    "promo_code": "promoCode",
}
_BY_LOWER = {wire.lower(): name for name, wire in _WIRE_NAMES.items()}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One problem with the payload: the field as the sender spelled it, and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class EventValidationError(ValueError):
    """The payload is not a valid Optimove event; ``errors`` name each bad field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    @property
    def field(self) -> str:
        """The first bad field."""
        return self.errors[0].field


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _as_positive_int(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise ValueError(f"must be a positive integer (a JSON number or a numeric string), got {_kind(value)}")
    if isinstance(value, float):
        raise ValueError(f"must be a positive integer, got the non-integer number {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if _NEGATIVE.match(text):
            raise ValueError(f"must be a positive integer, got {text}")
        if not _DIGITS.match(text):
            raise ValueError(f"must be a positive integer (a JSON number or a numeric string), got {value[:40]!r}")
        value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    if value > limit:
        raise ValueError(f"must be at most {limit}, got {value}")
    return value


def _positive_int(limit: int) -> BeforeValidator:
    return BeforeValidator(lambda value: _as_positive_int(value, limit))


def _event_type(value: Any) -> int:
    number = _as_positive_int(value, MAX_INT32)
    if number not in EVENT_TYPES:
        known = ", ".join(str(t) for t in sorted(EVENT_TYPES))
        raise ValueError(f"{number} is not an Optimove event type (known: {known})")
    return number


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):  # built in code (reconcile, tests): naive means UTC
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    if not isinstance(value, str):
        raise ValueError(f"must be a string 'YYYY-MM-DD HH:MM:SS', got {_kind(value)}")
    text = value.strip()
    if _TIMESTAMP.match(text):
        for fmt in TIMESTAMP_FORMATS:
            try:
                return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
            except ValueError:
                continue
    raise ValueError(f"must be a date and time 'YYYY-MM-DD HH:MM:SS' (or 'YYYY-MM-DD HH:MM'), got {value[:40]!r}")


def _customer_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string (the Optimove CustomerID), got {_kind(value)}")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > MAX_CUSTOMER_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_CUSTOMER_ID_LENGTH} characters")
    return text


def _promo_code(value: Any) -> str | None:
    """A string, a list of strings/numbers (joined with commas, in order) or null; empty means none."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        parts: list[str] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ValueError(f"must be a string, a list of strings or null; the list holds {_kind(item)}")
            text = str(item).strip()
            if text:
                parts.append(text)
        return ",".join(parts) or None
    raise ValueError(f"must be a string, a list of strings or null, got {_kind(value)}")


class OptimoveEvent(BaseModel):
    """A validated Optimove event. ``event_time`` is the payload's ``timeStamp``, read as UTC."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    event_type_id: Annotated[int, BeforeValidator(_event_type)] = Field(alias="eventTypeId")
    event_time: Annotated[dt.datetime, BeforeValidator(_timestamp)] = Field(alias="timeStamp")
    campaign_id: Annotated[int, _positive_int(MAX_INT64)] | None = Field(None, alias="campaignId")
    channel_id: Annotated[int, _positive_int(MAX_INT32)] | None = Field(None, alias="channelId")
    customer_id: Annotated[str, BeforeValidator(_customer_id)] | None = Field(None, alias="customerID")
    template_id: Annotated[int, _positive_int(MAX_INT64)] | None = Field(None, alias="templateID")
    promo_code: Annotated[str | None, BeforeValidator(_promo_code)] = Field(None, alias="promoCode")

    @property
    def acted_on(self) -> bool:
        """Whether this event type makes us do something (13, 4, 11, 3)."""
        return self.event_type_id in ACTED_ON_EVENT_TYPES


def _message(error: Mapping[str, Any]) -> str:
    if error.get("type") == "missing":
        return "is required"
    text = str(error.get("msg", "is invalid"))
    return text.removeprefix("Value error, ")


def parse_event(payload: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> OptimoveEvent:
    """Validate a decoded JSON object (a mapping, or its key/value pairs to catch repeated keys).

    Known keys are matched case-insensitively; other keys are allowed and ignored (they stay in the
    stored raw payload). A key given twice (``campaignId`` and ``CampaignID``) with different values is
    an error. Raises :class:`EventValidationError` listing every bad field.
    """
    pairs = list(payload.items()) if isinstance(payload, Mapping) else list(payload)
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in pairs:
        name = _BY_LOWER.get(str(key).lower())
        if name is None:
            continue
        if name not in values:
            values[name], spelled[name] = value, str(key)
        elif values[name] != value or type(values[name]) is not type(value):
            errors.append(
                FieldError(str(key), f"given more than once ({spelled[name]} and {key}) with different values")
            )
    data = {_WIRE_NAMES[name]: values[name] for name in _WIRE_NAMES if name in values}
    try:
        event = OptimoveEvent.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            wire = str(err["loc"][0]) if err["loc"] else "body"
            name = next((n for n, w in _WIRE_NAMES.items() if w == wire), None)
            errors.append(FieldError(spelled.get(name, wire) if name else wire, _message(err)))
        raise EventValidationError(errors) from None
    if errors:
        raise EventValidationError(errors)
    missing = [n for n in REQUIRED_FIELDS.get(event.event_type_id, ()) if getattr(event, n) is None]
    if missing:
        raise EventValidationError(
            [FieldError(_WIRE_NAMES[n], f"is required for eventTypeId {event.event_type_id}") for n in missing]
        )
    return event


def redact_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as stored: secret-bearing keys (event 14's ``DecryptionKey``, ``ServiceAccount``) redacted."""
    return {k: (REDACTED if str(k).lower() in SENSITIVE_KEYS else v) for k, v in payload.items()}


# --------------------------------------------------------------------------------------------------
# Keys and run ids
# --------------------------------------------------------------------------------------------------


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S")


def dedup_key(event: OptimoveEvent) -> str:
    """The unique key of an event: type, campaign, channel, timestamp (+ customer and template for 11).

    The customer id enters as a hash prefix, so the key has a bounded length and shows no customer data.
    """
    parts = [
        f"e{event.event_type_id}",
        f"c{event.campaign_id if event.campaign_id is not None else '-'}",
        f"ch{event.channel_id if event.channel_id is not None else '-'}",
        _stamp(event.event_time),
    ]
    if event.event_type_id == 11:
        digest = hashlib.sha256((event.customer_id or "").encode()).hexdigest()[:32]
        parts += [f"u{digest}", f"t{event.template_id}"]
    return ":".join(parts)


def campaign_run_id(campaign_id: int, channel_id: int, event_time: dt.datetime) -> str:
    """``optimove_c{campaign}_ch{channel}_{YYYYMMDDTHHMMSS}``: the send DAG's run for a bulk event."""
    return f"optimove_c{int(campaign_id)}_ch{int(channel_id)}_{_stamp(event_time)}"


def user_sync_run_id(day: dt.date) -> str:
    """``optimove_event3_{YYYYMMDD}``: the user sync started by Optimove's daily-process event."""
    return f"optimove_event3_{day:%Y%m%d}"


def campaign_conf(
    campaign_id: int, channel_id: int, event_time: dt.datetime, event_id: int, source: str
) -> dict[str, Any]:
    """The send DAG's conf (its params have the same names)."""
    return {
        "campaign_id": int(campaign_id),
        "channel_id": int(channel_id),
        "event_time": event_time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "event_id": int(event_id),
        "source": str(source),
    }


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    """The ``events`` row an event landed in; ``created`` False means it was a duplicate."""

    event_id: int
    created: bool
    status: str
    dedup_key: str
    note: str | None = None
    dag_run_id: str | None = None


def _initial_status(event: OptimoveEvent, settings: Settings) -> tuple[str, str | None]:
    if event.event_type_id in ACKNOWLEDGED_EVENT_TYPES:
        return EventStatus.IGNORED.value, f"event type {event.event_type_id} is acknowledged, not acted on"
    if event.channel_id is not None and event.channel_id not in settings.campaigns.channels:
        return EventStatus.IGNORED.value, f"channel {event.channel_id} is not configured (campaigns.channels)"
    if event.event_type_id == 11:
        return EventStatus.QUEUED.value, None
    return EventStatus.RECEIVED.value, None


_SQLITE_WRITER = threading.Lock()


def _writer(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """SQLite: one writer at a time in this process (its busy-timeout backoff starves waiting writers)."""
    return _SQLITE_WRITER if engine.dialect.name == "sqlite" else contextlib.nullcontext()


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
    status, note = _initial_status(event, s)
    values = {
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
    table = Event.__table__
    with _writer(engine), session_scope(engine) as session:
        created = insert_if_absent(session, Event, values, conflict_columns=["dedup_key"])
        row = session.execute(
            sa.select(table.c.id, table.c.status, table.c.note, table.c.dag_run_id).where(table.c.dedup_key == key)
        ).one()
    stored = StoredEvent(int(row.id), created, str(row.status), key, row.note, row.dag_run_id)
    _log_stored(event, stored, source)
    return stored


def _log_stored(event: OptimoveEvent, stored: StoredEvent, source: str) -> None:
    what = f"Optimove event {stored.event_id} (type {event.event_type_id}, campaign {event.campaign_id}, "
    what += f"channel {event.channel_id}, source {source})"
    if not stored.created:
        log.info("%s is a duplicate of a stored event: ignored", what)
    elif stored.status == EventStatus.IGNORED.value:
        if event.event_type_id in ACTED_ON_EVENT_TYPES:
            log.warning("%s stored and ignored: %s", what, stored.note)
        else:
            log.info("%s stored and ignored: %s", what, stored.note)
    elif stored.status == EventStatus.QUEUED.value:
        log.debug("%s stored as queued", what)  # single-target events can be many: not logged one by one
    else:
        log.info("%s stored as %s", what, stored.status)


# --------------------------------------------------------------------------------------------------
# DAG triggers
# --------------------------------------------------------------------------------------------------


class DispatchError(RuntimeError):
    """Acting on a stored event failed; the event stays ``received`` and is retried."""


class DagTrigger(Protocol):
    """Creates DAG runs (idempotently: an existing run id is reported, not an error)."""

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        """Create the run (state queued); True if created, False if a run with that id already existed."""
        ...

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        """Whether ``dag_id`` has a run whose logical date (else run_after) falls on ``day`` (UTC)."""
        ...


class AirflowDagTrigger:
    """Creates runs in-process in the Airflow metadata database (API server, CLI, tests; not in a task).

    Uses ``airflow.api.common.trigger_dag.trigger_dag`` (what the REST API does, run type ``manual``,
    triggered by ``rest_api``). A paused DAG still gets its run, in state ``queued``. With a SQLite
    metadata database the writes are serialised in-process to avoid "database is locked".
    """

    _lock = threading.Lock()

    def __init__(self, triggering_user: str = "optimove") -> None:
        self.triggering_user = triggering_user

    def _serialise(self) -> contextlib.AbstractContextManager[Any]:
        from airflow.settings import engine

        return self._lock if engine is not None and engine.dialect.name == "sqlite" else contextlib.nullcontext()

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound, DagRunAlreadyExists
        from airflow.utils.session import create_session
        from airflow.utils.types import DagRunTriggeredByType

        try:
            with self._serialise(), create_session() as session:
                trigger_dag(
                    dag_id,
                    run_id=run_id,
                    conf=conf,
                    logical_date=logical_date,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=self.triggering_user,
                    note=note,
                    session=session,
                )
        except DagRunAlreadyExists:
            return False
        except DagNotFound as exc:
            raise DispatchError(
                f"DAG {dag_id!r} does not exist in Airflow (not deployed, not parsed yet, or it has import errors: "
                f"check the dags folder and `airflow dags list-import-errors`): {exc}"
            ) from exc
        except (ValueError, sa.exc.SQLAlchemyError) as exc:
            raise DispatchError(
                f"could not create run {run_id} of DAG {dag_id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        from airflow.models import DagRun
        from airflow.utils.session import create_session

        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        stmt = (
            sa.select(sa.func.count())
            .select_from(DagRun)
            .where(
                DagRun.dag_id == dag_id,
                sa.or_(
                    sa.and_(DagRun.logical_date >= start, DagRun.logical_date < end),
                    sa.and_(DagRun.logical_date.is_(None), DagRun.run_after >= start, DagRun.run_after < end),
                ),
            )
        )
        with create_session() as session:
            return bool(session.scalar(stmt))


class TaskDagTrigger:
    """Creates runs from inside a running task, through its Execution API channel (as TriggerDagRunOperator).

    ``has_run_on`` can only ask for exact logical dates there: it checks the scheduled fire times of the
    user sync's cron (``sync.schedule`` in ``sync.timezone``) on that day.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    @staticmethod
    def _send(message: Any) -> Any:
        from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

        return SUPERVISOR_COMMS.send(message)

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun

        response = self._send(
            TriggerDagRun(dag_id=dag_id, run_id=run_id, conf=conf, logical_date=logical_date, note=note)
        )
        if isinstance(response, ErrorResponse):
            if response.error == ErrorType.DAGRUN_ALREADY_EXISTS:
                return False
            raise DispatchError(f"could not create run {run_id} of DAG {dag_id!r}: {response.error} {response.detail}")
        return True

    def fire_times(self, day: dt.date) -> list[dt.datetime]:
        """The user sync's scheduled logical dates that fall on ``day`` (UTC)."""
        from zoneinfo import ZoneInfo

        from croniter import croniter

        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        zone = ZoneInfo(self.settings.sync.timezone)
        itr = croniter(self.settings.sync.schedule, (start - dt.timedelta(seconds=1)).astimezone(zone))
        times: list[dt.datetime] = []
        while len(times) < 1440:
            moment = itr.get_next(dt.datetime).astimezone(dt.UTC)
            if moment >= end:
                break
            times.append(moment)
        return times

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        from airflow.sdk.execution_time.comms import GetDRCount

        times = self.fire_times(day) if dag_id == USER_SYNC_DAG_ID else []
        if not times:
            return False
        response = self._send(GetDRCount(dag_id=dag_id, logical_dates=times))
        return bool(getattr(response, "count", 0))


def in_task() -> bool:
    """Whether this code runs inside an Airflow task (where the metadata database is off limits)."""
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


def default_trigger(settings: Settings | None = None) -> DagTrigger:
    """:class:`TaskDagTrigger` inside a task, else :class:`AirflowDagTrigger`."""
    return TaskDagTrigger(settings) if in_task() else AirflowDagTrigger()


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchResult:
    """What dispatching one event did: ``status`` is the row's status afterwards."""

    event_id: int
    status: str
    dag_run_id: str | None = None
    note: str | None = None
    error: str | None = None


def _load(engine: Engine, event_id: int) -> Any:
    table = Event.__table__
    with engine.connect() as connection:
        return connection.execute(
            sa.select(
                table.c.id,
                table.c.event_type_id,
                table.c.campaign_id,
                table.c.channel_id,
                table.c.event_time,
                table.c.source,
                table.c.status,
                table.c.dag_run_id,
                table.c.note,
            ).where(table.c.id == int(event_id))
        ).one_or_none()


def _act(engine: Engine, row: Any, trigger: DagTrigger) -> tuple[str | None, str]:
    """Perform the event's action; return (dag_run_id, note). Raises on failure."""
    from optimove_netmera.campaigns import state

    event_time: dt.datetime = row.event_time
    if row.event_type_id == 13:
        run_id = campaign_run_id(row.campaign_id, row.channel_id, event_time)
        state.record_campaign(engine, row.campaign_id, row.channel_id, event_time, run_id)
        conf = campaign_conf(row.campaign_id, row.channel_id, event_time, row.id, row.source)
        created = trigger.trigger(CAMPAIGN_SEND_DAG_ID, run_id, conf, note=f"Optimove event {row.id} ({row.source})")
        return run_id, f"{CAMPAIGN_SEND_DAG_ID} run {'created' if created else 'already existed'}"
    if row.event_type_id == 4:
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
    raise DispatchError(f"event type {row.event_type_id} is not dispatched")


def dispatch_event(
    engine: Engine, event_id: int, *, trigger: DagTrigger | None = None, settings: Settings | None = None
) -> DispatchResult:
    """Act on a ``received`` event (13, 4, 3) and mark it ``dispatched``; a row in any other status is left alone.

    Never raises for a failed action: the row stays ``received`` with the error in ``note`` (for
    :func:`dispatch_pending`) and the result carries ``error``. State-database errors propagate.
    """
    row = _load(engine, event_id)
    if row is None:
        raise LookupError(f"no event {event_id} in the state database")
    if row.status != EventStatus.RECEIVED.value:
        return DispatchResult(row.id, row.status, row.dag_run_id, row.note)
    what = f"Optimove event {row.id} (type {row.event_type_id}, campaign {row.campaign_id}, channel {row.channel_id})"
    try:
        dag_run_id, note = _act(engine, row, trigger or default_trigger(settings))
    except Exception as exc:
        error = f"dispatch failed: {type(exc).__name__}: {exc}"[:2000]
        log.error("%s stays received and will be retried: %s", what, error)
        _note_failure(engine, row.id, error)
        return DispatchResult(row.id, EventStatus.RECEIVED.value, None, error, error)
    with session_scope(engine) as session:
        moved = transition(
            session,
            Event,
            key={"id": row.id},
            from_status=EventStatus.RECEIVED.value,
            to_status=EventStatus.DISPATCHED.value,
            values={"dag_run_id": dag_run_id, "note": note},
        )
    log.info("%s dispatched: %s%s", what, note, f" ({dag_run_id})" if dag_run_id else "")
    status = EventStatus.DISPATCHED.value if moved else str(_load(engine, row.id).status)
    return DispatchResult(row.id, status, dag_run_id, note)


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


@dataclass(frozen=True)
class IngestResult:
    """Store + dispatch of one event."""

    stored: StoredEvent
    dispatch: DispatchResult | None = None

    @property
    def response_status(self) -> str:
        """``accepted``, ``duplicate`` or ``ignored`` (what the endpoint answers)."""
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
    s = settings or get_settings()
    stored = store_event(engine, event, source=source, raw=raw, settings=s)
    if not stored.created or stored.status != EventStatus.RECEIVED.value:
        return IngestResult(stored)
    try:
        dispatched = dispatch_event(engine, stored.event_id, trigger=trigger, settings=s)
    except Exception as exc:  # the event is stored: it must be answered 2xx and retried later
        error = f"dispatch failed: {type(exc).__name__}"
        log.error("Optimove event %s stays received and will be retried: %s", stored.event_id, error)
        dispatched = DispatchResult(stored.event_id, EventStatus.RECEIVED.value, None, error, error)
    return IngestResult(stored, dispatched)


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

    Rows younger than ``older_than_seconds`` are left to the request that stored them. Safe to run
    concurrently and repeatedly (every action is idempotent). The API server runs it every 30 s; the
    reconcile DAG calls it from a task (``trigger`` then defaults to :class:`TaskDagTrigger`).
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


def count_by_status(engine: Engine, statuses: Iterable[str] | None = None) -> dict[str, int]:
    """Event counts per status (for the status page)."""
    table = Event.__table__
    stmt = sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
    if statuses is not None:
        stmt = stmt.where(table.c.status.in_(list(statuses)))
    with engine.connect() as connection:
        return {str(s): int(n) for s, n in connection.execute(stmt)}
