"""Optimove campaign events: parse, store, dispatch (and the DAG triggers dispatch uses).

One inbound event goes through three steps, shared by the HTTP endpoint (source ``webhook``), the
reconciliation DAG (``reconcile``) and manual tools (``manual``), so every path dedups identically. Each
step has its own module; this package re-exports their public names, so
``from optimove_netmera.campaigns import events`` and ``events.parse_event(...)`` keep working:

1. :mod:`.parse`: :func:`parse_event` turns a decoded JSON object into an :class:`OptimoveEvent`
   (pydantic); every problem is a :class:`FieldError` that names the field.
2. :mod:`.store`: :func:`store_event` writes the ``events`` row under :func:`dedup_key` (:mod:`.keys`,
   with the run ids); a repeat is a duplicate, never acted on again. The endpoint stores the events that
   arrive together with :func:`store_events`, in one transaction (:class:`GroupCommit`, :mod:`.group`).
3. :mod:`.dispatch`: :func:`dispatch_event` acts on a ``received`` row (13 starts a campaign send, 4
   cancels, 3 starts the day's user sync); :func:`dispatch_pending` retries the ones whose dispatch failed.
   The endpoint does not wait for it: :class:`EventDispatcher` (:mod:`.dispatcher`) dispatches in a thread,
   what queued up together in one :func:`dispatch_events` call (the 13s' runs in one Airflow transaction).

:mod:`.triggers` creates the DAG runs: :class:`AirflowDagTrigger` where the metadata database may be used,
:class:`TaskDagTrigger` inside a task. Logs name event ids, types, campaigns and channels, never customer
ids or keys.
"""

from optimove_netmera.campaigns.events.dispatch import (
    DispatchResult,
    IngestResult,
    PendingReport,
    dispatch_event,
    dispatch_events,
    dispatch_pending,
    ingest,
    pending_event_ids,
)
from optimove_netmera.campaigns.events.dispatcher import EventDispatcher
from optimove_netmera.campaigns.events.group import GroupCommit
from optimove_netmera.campaigns.events.held import HeldReport, held_event_ids, redispatch_held, release_held
from optimove_netmera.campaigns.events.keys import campaign_conf, campaign_run_id, dedup_key, user_sync_run_id
from optimove_netmera.campaigns.events.parse import (
    ACKNOWLEDGED_EVENT_TYPES,
    ACTED_ON_EVENT_TYPES,
    EARLIEST_EVENT_TIME,
    EVENT_TYPES,
    LATEST_EVENT_TIME,
    MAX_DEPTH,
    MAX_INT32,
    MAX_INT64,
    REQUIRED_FIELDS,
    WINDOW_FUTURE,
    WINDOW_PAST,
    WINDOWED_EVENT_TYPES,
    EventValidationError,
    FieldError,
    OptimoveEvent,
    OverlongNumber,
    check_payload,
    parse_event,
    read_json_int,
    redact_payload,
)
from optimove_netmera.campaigns.events.store import StoredEvent, count_by_status, store_event, store_events
from optimove_netmera.campaigns.events.triggers import (
    CAMPAIGN_SEND_DAG_ID,
    USER_SYNC_DAG_ID,
    AirflowDagTrigger,
    DagTrigger,
    DispatchError,
    PermanentDispatchError,
    TaskDagTrigger,
    default_trigger,
    in_task,
)

__all__ = [
    "ACKNOWLEDGED_EVENT_TYPES",
    "ACTED_ON_EVENT_TYPES",
    "CAMPAIGN_SEND_DAG_ID",
    "EARLIEST_EVENT_TIME",
    "EVENT_TYPES",
    "LATEST_EVENT_TIME",
    "MAX_DEPTH",
    "MAX_INT32",
    "MAX_INT64",
    "REQUIRED_FIELDS",
    "USER_SYNC_DAG_ID",
    "WINDOWED_EVENT_TYPES",
    "WINDOW_FUTURE",
    "WINDOW_PAST",
    "AirflowDagTrigger",
    "DagTrigger",
    "DispatchError",
    "DispatchResult",
    "EventDispatcher",
    "EventValidationError",
    "FieldError",
    "GroupCommit",
    "HeldReport",
    "IngestResult",
    "OptimoveEvent",
    "OverlongNumber",
    "PendingReport",
    "PermanentDispatchError",
    "StoredEvent",
    "TaskDagTrigger",
    "campaign_conf",
    "campaign_run_id",
    "check_payload",
    "count_by_status",
    "dedup_key",
    "default_trigger",
    "dispatch_event",
    "dispatch_events",
    "dispatch_pending",
    "held_event_ids",
    "in_task",
    "ingest",
    "parse_event",
    "pending_event_ids",
    "read_json_int",
    "redact_payload",
    "redispatch_held",
    "release_held",
    "store_event",
    "store_events",
    "user_sync_run_id",
]
