"""The Optimove event endpoint: a FastAPI app the plugin mounts at ``/rest/optimove`` on the Airflow API server.

``POST /rest/optimove/event/{app_key}`` keeps the contract of Netmera's own Optimove endpoint, so the
connector's curl works with only the host changed. It is *not* behind Airflow's login (Optimove cannot
log in); it authenticates the ``X-netmera-api-key`` header instead. Checks, in order (nothing is stored
on any rejection; every error body is ``{"status": "rejected", "error": "...", "field": "..."}``):

====  ==========================================================================================
401   no ``X-netmera-api-key`` header
403   the key does not match the inbound key (``hmac.compare_digest``)
404   ``app_key`` is not ``inbound.app_key``
415   the content type is not ``application/json``
413   the body is over ``inbound.max_body_bytes`` (by Content-Length before reading, else while reading)
408   the body has not fully arrived after ``inbound.body_timeout_seconds`` (a stalled or trickling client)
400   not JSON, or JSON that is not an object (an array, a string...)
422   not a valid event: the message names the field (see :mod:`optimove_netmera.campaigns.events.parse`:
      NUL, lone surrogates, numbers past 64 bits, deep nesting, wrong types, a timeStamp outside its window)
503   the state database is unreachable, the inbound key/settings are not usable, or
      ``inbound.max_concurrent_requests`` event requests are already in progress in this process: retry later
====  ==========================================================================================

Accepted events are stored before the answer. Requests that arrive together share one transaction (group commit,
:mod:`optimove_netmera.campaigns.events.group`): each is answered after that commit; when the state database fails,
every request of the batch is answered 503 and none of it is kept; an event the database refuses fails alone (the
others of its batch are stored one by one). Answers: ``200 {"status": "accepted"|"ignored"|"held"|"duplicate",
"event_id": n}`` (Netmera documents no response body for this endpoint and Optimove only needs the 200, so it
stays small). ``held``: its channel (or an event 11's template) is not configured; it is stored with the reason,
logged at error level and acted on once the settings cover it (see :mod:`optimove_netmera.campaigns.events.held`).
13, 4 and 3 are acknowledged as soon as they are stored (``"dispatch": "queued"``, and for 13 the ``dag_run_id``
its run gets) and dispatched off the request path by this process's
:class:`~optimove_netmera.campaigns.events.dispatcher.EventDispatcher` (a thread, retrying transient failures for
~15 s). A sweep every 30 s (``OPTIMOVE_NETMERA_API_SWEEP_SECONDS``; 0 turns it off) hands it any event still
``received`` after 60 s (``OPTIMOVE_NETMERA_API_REDISPATCH_AFTER_SECONDS``): one whose dispatch kept failing, or
one stored by a process that died before dispatching it. ``OPTIMOVE_NETMERA_API_DISPATCHER=0`` leaves every
dispatch to the sweep (``"dispatch": "pending"``, as when the dispatcher's queue is full). One that can never
succeed is marked ``failed`` with its reason, once.

The inbound key: the env var named by ``inbound.api_key_env``, else the Airflow Variable
``optimove_netmera_inbound_api_key`` (read through Airflow's secrets backends, cached 30 s, as are the
settings and their Variable overlay ``optimove_netmera_config``).

The other routes require an Airflow user (``Depends(get_user)``): ``GET /rest/optimove/events`` (recent
events, no customer data; its integer parameters are bounded, out of range is 422) and
``GET /rest/optimove/status`` (counts, pending dispatches, configuration). ``GET /rest/optimove/openapi.json``
(public) is the OpenAPI document of these routes: request body, every answer with its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from optimove_netmera.campaigns import events
from optimove_netmera.settings import (
    STATE_DB_ENV,
    VARIABLE_NAME,
    Settings,
    SettingsError,
    config_path,
    get_settings,
    load_settings,
)
from optimove_netmera.store import (
    Event,
    EventStatus,
    StateDatabaseError,
    default_state_db_url,
    get_engine,
    migrate,
    redact_url,
)
from optimove_netmera.topology import SharedStateError

__all__ = [
    "API_KEY_HEADER",
    "INBOUND_KEY_VARIABLE",
    "URL_PREFIX",
    "create_app",
]

log = logging.getLogger(__name__)

URL_PREFIX = "/rest/optimove"
API_KEY_HEADER = "X-netmera-api-key"
INBOUND_KEY_VARIABLE = "optimove_netmera_inbound_api_key"
CONFIG_TTL_SECONDS = 30.0
SWEEP_INTERVAL_SECONDS = 30.0
REDISPATCH_AFTER_SECONDS = 60.0
SWEEP_ENV = "OPTIMOVE_NETMERA_API_SWEEP_SECONDS"
REDISPATCH_AFTER_ENV = "OPTIMOVE_NETMERA_API_REDISPATCH_AFTER_SECONDS"
DISPATCHER_ENV = "OPTIMOVE_NETMERA_API_DISPATCHER"
RETRY_AFTER_SECONDS = "30"
GC_FREEZE_ENV = "OPTIMOVE_NETMERA_API_GC_FREEZE"
JSON_MEDIA_TYPE = "application/json"


# --------------------------------------------------------------------------------------------------
# Per-process runtime: settings, inbound key, state engine
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    settings: Settings
    api_key: str | None
    key_source: str | None
    loaded_at: float


@dataclass(frozen=True)
class DispatchOptions:
    """How this process dispatches stored events (from the environment; see the module docstring)."""

    dispatcher: bool = True
    sweep_seconds: float = SWEEP_INTERVAL_SECONDS
    redispatch_after_seconds: float = REDISPATCH_AFTER_SECONDS

    @classmethod
    def from_env(cls) -> DispatchOptions:
        """Read the env vars; raises ValueError naming the variable when one is not valid."""
        switch = os.environ.get(DISPATCHER_ENV, "1").strip()
        if switch not in ("0", "1"):
            raise ValueError(f"{DISPATCHER_ENV} must be 1 (dispatch off the request path) or 0 (sweep only)")
        return cls(
            dispatcher=switch == "1",
            sweep_seconds=_seconds(SWEEP_ENV, SWEEP_INTERVAL_SECONDS),
            redispatch_after_seconds=_seconds(REDISPATCH_AFTER_ENV, REDISPATCH_AFTER_SECONDS),
        )


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw[:40]!r}") from None
    if not 0 <= value <= 86_400:
        raise ValueError(f"{name} must be between 0 and 86400 seconds, got {raw[:40]!r}")
    return value


class StoreUnavailable(RuntimeError):
    """The state database cannot take the event now (the caller answers 503)."""


def _read_variable(key: str) -> str | None:
    """An Airflow Variable through the secrets backends (env ``AIRFLOW_VAR_*``, metastore...); None if unset."""
    try:
        from airflow.models.variable import Variable

        value = Variable.get_variable_from_secrets(key=key)
    except Exception as exc:  # a broken metastore must not break the endpoint: fall back to file + env
        log.warning("could not read the Airflow Variable %s: %s", key, type(exc).__name__)
        return None
    return None if value is None else str(value)


DEFAULT_MAX_CONCURRENT = 64
"""The in-progress cap before the settings are loaded (``inbound.max_concurrent_requests``)."""


class _Runtime:
    """Settings and the inbound key (refreshed every 30 s), the state engine and its one-time migration."""

    def __init__(self) -> None:
        self._config: _Config | None = None
        self._lock = threading.Lock()
        self._migrated: set[str] = set()
        self.in_progress = 0  # event requests being handled (one event loop per process: no lock needed)

    def cached(self) -> _Config | None:
        """The current config if it is fresh."""
        config = self._config
        if config is not None and time.monotonic() - config.loaded_at < CONFIG_TTL_SECONDS:
            return config
        return None

    def refresh(self) -> _Config:
        """Reload settings (file + env + Variable overlay) and the inbound key; raises SettingsError."""
        with self._lock:
            fresh = self.cached()
            if fresh is not None:
                return fresh
            settings = self._load_settings()
            env_name = settings.inbound.api_key_env
            key = os.environ.get(env_name) or None
            source = f"env {env_name}" if key else None
            if key is None:
                key = _read_variable(INBOUND_KEY_VARIABLE) or None
                source = f"Airflow Variable {INBOUND_KEY_VARIABLE}" if key else None
            self._config = _Config(settings, key, source, time.monotonic())
            return self._config

    @staticmethod
    def _load_settings() -> Settings:
        overlay_raw = _read_variable(VARIABLE_NAME)
        if not overlay_raw:
            return get_settings()
        try:
            overlay = json.loads(overlay_raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"Airflow Variable {VARIABLE_NAME} is not valid JSON: {exc.msg}") from None
        if not isinstance(overlay, dict):
            raise SettingsError(f"Airflow Variable {VARIABLE_NAME} must be a JSON object")
        return load_settings(config_path(), overlay=overlay)

    async def config(self) -> _Config:
        """The config, refreshed off the event loop when stale."""
        return self.cached() or await run_in_threadpool(self.refresh)

    def engine(self, settings: Settings) -> Engine:
        """The state engine, migrated once per process; raises StoreUnavailable."""
        try:
            url = settings.resolved_state_db_url()
            engine = get_engine(url)
            key = str(engine.url)
            if key not in self._migrated:
                migrate(url)
                self._migrated.add(key)
        except (StateDatabaseError, sa.exc.SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        return engine


def _shown_url(settings: Settings) -> str:
    try:
        return redact_url(settings.resolved_state_db_url())
    except SharedStateError as exc:
        return exc.url or redact_url(default_state_db_url())


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


# --------------------------------------------------------------------------------------------------
# Responses and request checks
# --------------------------------------------------------------------------------------------------


class Rejected(Exception):
    """A request the endpoint refuses: HTTP status, message and the field it concerns."""

    def __init__(self, status: int, error: str, field: str | None = None, errors: list[dict[str, str]] | None = None):
        super().__init__(error)
        self.status, self.error, self.field, self.errors = status, error, field, errors

    def response(self) -> JSONResponse:
        """The JSON error response."""
        body: dict[str, Any] = {"status": "rejected", "error": self.error}
        if self.field is not None:
            body["field"] = self.field
        if self.errors:
            body["errors"] = self.errors
        return JSONResponse(body, status_code=self.status)


def _unavailable(error: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "error": error}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


def _check_key(given: str, expected: str) -> None:
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise Rejected(403, f"{API_KEY_HEADER} is not valid for this endpoint", API_KEY_HEADER)


def _check_app_key(app_key: str, config: _Config) -> None:
    if not hmac.compare_digest(app_key.encode("utf-8"), config.settings.inbound.app_key.encode("utf-8")):
        raise Rejected(404, "unknown app key in the path /rest/optimove/event/{app_key}", "app_key")


def _check_content_type(request: Request) -> None:
    header = request.headers.get("content-type")
    media = (header or "").split(";", 1)[0].strip().lower()
    if media != JSON_MEDIA_TYPE:
        shown = repr(header[:80]) if header else "none"
        raise Rejected(415, f"Content-Type must be {JSON_MEDIA_TYPE}, got {shown}", "Content-Type")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refusing more than ``limit`` bytes (Content-Length first, so a large body is never read) and a body
    that has not fully arrived after ``timeout`` seconds (408: a stalled or trickling client holds no slot for long).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Rejected(400, "Content-Length is not a number", "Content-Length")
        if int(declared) > limit:
            raise Rejected(413, f"body is {int(declared)} bytes; at most {limit} are accepted", "body")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise Rejected(413, f"body is over {limit} bytes", "body")
    except TimeoutError:
        raise Rejected(408, f"the body did not arrive within {timeout:g} s; send it at once", "body") from None
    return bytes(body)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's key/value pairs in order (keeps repeated keys visible)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode(body: bytes) -> _Pairs:
    if not body.strip():
        raise Rejected(400, "body is empty; expected a JSON object", "body")
    try:
        parsed = json.loads(
            body, object_pairs_hook=_Pairs, parse_constant=_reject_constant, parse_int=events.read_json_int
        )
    except RecursionError:
        raise Rejected(400, "body is not valid JSON: nested too deeply", "body") from None
    except UnicodeDecodeError:
        raise Rejected(400, "body is not valid JSON: not UTF-8", "body") from None
    except json.JSONDecodeError as exc:
        raise Rejected(
            400, f"body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})", "body"
        ) from None
    except ValueError as exc:
        raise Rejected(400, f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(parsed, _Pairs):
        raise Rejected(400, f"body must be a JSON object, got {_json_kind(parsed)}", "body")
    return parsed


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number"


def _plain(value: Any, depth: int = 0) -> Any:
    """Pairs back to plain JSON values (last key wins, as in ``json.loads``).

    Stops converting below :data:`~optimove_netmera.campaigns.events.MAX_DEPTH` (+1) levels, so a deep
    body cannot exhaust the stack; :func:`~optimove_netmera.campaigns.events.check_payload` refuses it
    before looking that deep.
    """
    if depth > events.MAX_DEPTH + 1:
        return value
    if isinstance(value, _Pairs):
        return {k: _plain(v, depth + 1) for k, v in value}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


Stored = tuple[events.StoredEvent, bool]
"""What storing one event gave: its row and whether a held row was released by this repeat."""

Pending = tuple[_Config, events.OptimoveEvent, dict[str, Any]]
"""One event waiting for the group commit: the config it was checked under, the event, its raw body."""


def _store(
    runtime: _Runtime, config: _Config, event: events.OptimoveEvent, raw: dict[str, Any]
) -> tuple[events.StoredEvent, bool]:
    """Store one event on its own (see :func:`_store_batch`)."""
    engine = runtime.engine(config.settings)
    try:
        return _release(engine, config, events.store_event(engine, event, raw=raw, settings=config.settings))
    except (StateDatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
        raise StoreUnavailable(_describe(exc)) from exc


def _release(engine: Engine, config: _Config, stored: events.StoredEvent) -> Stored:
    """A repeat of a held event that the settings now cover is released (``True``)."""
    if stored.created or stored.status != EventStatus.HELD.value:
        return stored, False
    status = events.release_held(engine, stored.event_id, config.settings, by="a repeat from Optimove")
    return (stored, False) if status is None else (dataclasses.replace(stored, status=status), True)


def _store_batch(runtime: _Runtime, pending: list[Pending]) -> list[Stored | Exception]:
    """The group commit's flush: the events of ``pending`` in one transaction, one outcome each, in order.

    The state database unreachable (or not shared, not migrated): every event of the batch gets
    :class:`StoreUnavailable` (503), none is stored. Any other error of the batch insert (a value the
    database refuses, a bug) rolls the whole batch back and stores each event on its own, so only the
    event it concerns fails.
    """
    outcomes: list[Stored | Exception | None] = [None] * len(pending)
    groups: dict[int, list[int]] = {}  # by config: normally one group (the config is cached for 30 s)
    for index, (config, _, _) in enumerate(pending):
        groups.setdefault(id(config), []).append(index)
    for indexes in groups.values():
        config = pending[indexes[0]][0]
        try:
            engine = runtime.engine(config.settings)
            stored = events.store_events(
                engine, [(pending[i][1], pending[i][2]) for i in indexes], settings=config.settings
            )
        except StoreUnavailable as exc:
            for i in indexes:
                outcomes[i] = exc
            continue
        except (StateDatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
            unavailable = StoreUnavailable(_describe(exc))
            unavailable.__cause__ = exc
            for i in indexes:
                outcomes[i] = unavailable
            continue
        except Exception as exc:
            log.warning(
                "Optimove events: a batch of %d could not be stored together (%s); storing each on its own",
                len(indexes),
                type(exc).__name__,
            )
            for i in indexes:
                outcomes[i] = _outcome(_store, runtime, *pending[i])
            continue
        for i, row in zip(indexes, stored, strict=True):
            outcomes[i] = _outcome(_release_or_unavailable, engine, pending[i][0], row)
    return [o if o is not None else RuntimeError("no outcome") for o in outcomes]


def _release_or_unavailable(engine: Engine, config: _Config, stored: events.StoredEvent) -> Stored:
    try:
        return _release(engine, config, stored)
    except (StateDatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
        raise StoreUnavailable(_describe(exc)) from exc


def _outcome(function: Any, *args: Any) -> Stored | Exception:
    try:
        return function(*args)  # type: ignore[no-any-return]
    except Exception as exc:
        return exc


def _dispatch_one(runtime: _Runtime, event_id: int) -> events.DispatchResult:
    """Dispatch one stored event (the dispatcher's work; state-database errors propagate: it retries)."""
    config = runtime.cached() or runtime.refresh()
    engine = runtime.engine(config.settings)
    return events.dispatch_event(engine, event_id, trigger=events.AirflowDagTrigger(), settings=config.settings)


def _dispatch_many(runtime: _Runtime, event_ids: list[int]) -> list[events.DispatchResult]:
    """Dispatch what the dispatcher took at once (the 13s' runs created together; see ``dispatch_events``)."""
    config = runtime.cached() or runtime.refresh()
    engine = runtime.engine(config.settings)
    return events.dispatch_events(engine, event_ids, trigger=events.AirflowDagTrigger(), settings=config.settings)


def _answer(
    stored: events.StoredEvent, event: events.OptimoveEvent, released: bool, queued: bool | None
) -> dict[str, Any]:
    """The 200 body; ``queued`` is None when nothing is dispatched, else whether the dispatcher took the event."""
    result = events.IngestResult(stored, released=released)
    body: dict[str, Any] = {"status": result.response_status, "event_id": stored.event_id}
    if result.response_status in ("ignored", "held") and stored.note:
        body["reason"] = stored.note
    if queued is not None:
        if event.event_type_id == 13 and event.campaign_id is not None and event.channel_id is not None:
            body["dag_run_id"] = events.campaign_run_id(event.campaign_id, event.channel_id, event.event_time)
        body["dispatch"] = "queued" if queued else "pending"
    return body


def _sweep(runtime: _Runtime, options: DispatchOptions, dispatcher: events.EventDispatcher | None) -> None:
    """Hand every event still ``received`` after ``redispatch_after_seconds`` to the dispatcher (or dispatch it)."""
    config = runtime.cached() or runtime.refresh()
    engine = runtime.engine(config.settings)
    if dispatcher is None:
        events.dispatch_pending(
            engine,
            older_than_seconds=options.redispatch_after_seconds,
            trigger=events.AirflowDagTrigger(),
            settings=config.settings,
        )
        return
    handed = 0
    for event_id in events.pending_event_ids(engine, older_than_seconds=options.redispatch_after_seconds):
        if dispatcher.holds(event_id):
            continue
        if not dispatcher.submit(event_id):
            break
        handed += 1
    if handed:
        log.info("re-dispatch sweep: %d stored Optimove event(s) handed to the dispatcher", handed)


def _warm_up(runtime: _Runtime) -> None:
    """Load settings and key, open and migrate the state database before the first event (errors: later).

    Then freeze the start-up heap (``gc.freeze()``): the API server holds millions of long-lived objects,
    and without this every full GC pass under event load stops all requests for ~350 ms (measured on
    the 2-core benchmark machine). Set ``OPTIMOVE_NETMERA_API_GC_FREEZE=0`` to leave GC alone.
    """
    try:
        runtime.engine(runtime.refresh().settings)
    except StoreUnavailable as exc:
        if isinstance(exc.__cause__, SharedStateError):
            log.error("Optimove event endpoint REFUSES every event (503) until this is fixed: %s", exc.__cause__)
        else:
            log.warning("Optimove event endpoint: start-up check failed (retried on the first event): %s", exc)
    except Exception as exc:
        log.warning("Optimove event endpoint: start-up check failed (retried on the first event): %s", _describe(exc))
    if os.environ.get(GC_FREEZE_ENV, "1") != "0":
        gc.collect()
        gc.freeze()
        log.info("Optimove event endpoint: %d start-up objects frozen out of GC passes", gc.get_freeze_count())


async def _sweep_forever(
    runtime: _Runtime, options: DispatchOptions, dispatcher: events.EventDispatcher | None
) -> None:
    failing = False
    while True:
        await asyncio.sleep(options.sweep_seconds)
        try:
            await run_in_threadpool(_sweep, runtime, options, dispatcher)
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("re-dispatch sweep of pending Optimove events failed (will retry): %s", _describe(exc))
            failing = True


def _require_user() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


# --------------------------------------------------------------------------------------------------
# The OpenAPI document (``GET /rest/optimove/openapi.json``): what the routes take and answer
# --------------------------------------------------------------------------------------------------

OPENAPI_PATH = "/openapi.json"
_INTEGER_OR_TEXT = "an integer, as a JSON number or a numeric string"


class EventBody(BaseModel):
    """An Optimove event as posted (keys case-insensitive: ``EventTypeID`` works too; other keys are kept)."""

    model_config = ConfigDict(extra="allow", title="OptimoveEvent")

    eventTypeId: int | str = Field(description=f"1, 2, 3, 4, 5, 11, 13 or 14 ({_INTEGER_OR_TEXT})")
    timeStamp: str = Field(
        pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?$",
        description="'YYYY-MM-DD HH:MM:SS' in UTC, between 2000-01-01 and 2100-01-01; for 13, 4 and 11 also "
        "at most 30 days before and 2 days after the time it is received",
    )
    campaignId: int | str | None = Field(None, description=f"required for 13, 4, 11 ({_INTEGER_OR_TEXT})")
    channelId: int | str | None = Field(None, description=f"required for 13, 11 ({_INTEGER_OR_TEXT})")
    customerID: str | int | None = Field(None, description="required for 11; at most 255 characters")
    templateID: int | str | None = Field(None, description=f"required for 11 ({_INTEGER_OR_TEXT})")
    promoCode: str | list[str | int | float] | None = Field(None, description="a string, a list or null (11)")


class FieldProblem(BaseModel):
    """One bad field and what is wrong with it."""

    field: str
    message: str


class RejectedAnswer(BaseModel):
    """A refused request: nothing was stored."""

    status: Literal["rejected"]
    error: str
    field: str | None = None
    errors: list[FieldProblem] | None = None


class UnavailableAnswer(BaseModel):
    """The server cannot take the event now; nothing was stored, retry after ``Retry-After`` seconds."""

    status: Literal["unavailable"]
    error: str


class EventAnswer(BaseModel):
    """The event is stored (or was already). ``dispatch``: ``queued`` (dispatched off the request path within
    moments) or ``pending`` (left to the re-dispatch sweep); ``dag_run_id``: the run an event 13 starts."""

    status: Literal["accepted", "duplicate", "ignored", "held"]
    event_id: int
    dag_run_id: str | None = None
    reason: str | None = None
    dispatch: Literal["queued", "pending"] | None = None


class EventSummary(BaseModel):
    """One stored event, without customer data."""

    id: int
    event_type_id: int
    campaign_id: int | None
    channel_id: int | None
    template_id: int | None
    event_time: str | None
    received_at: str | None
    source: str
    status: str
    dag_run_id: str | None
    note: str | None


class EventsPage(BaseModel):
    """The most recent events, newest first."""

    total: int
    events: list[EventSummary]


def _rejected(description: str) -> dict[str, Any]:
    return {"model": RejectedAnswer, "description": description}


_EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": EventAnswer,
        "description": "stored (accepted, ignored, or held until its channel or template is configured) or a "
        "duplicate of a stored event",
    },
    400: _rejected("not JSON, not a JSON object, or a bad Content-Length"),
    401: _rejected("no X-netmera-api-key header"),
    403: _rejected("the X-netmera-api-key is not the inbound key"),
    404: _rejected("unknown app key in the path"),
    408: _rejected("the body did not fully arrive within inbound.body_timeout_seconds"),
    413: _rejected("the body is over inbound.max_body_bytes"),
    415: _rejected("the Content-Type is not application/json"),
    422: _rejected("not a valid event: field names the first bad field, errors lists them all"),
    503: {
        "model": UnavailableAnswer,
        "description": "state database down, server not configured, or inbound.max_concurrent_requests in "
        "progress: retry",
    },
}
_USER_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "not logged in to Airflow"},
    403: {"description": "the Airflow user may not read this"},
    422: _rejected("a query parameter is invalid (out of range, not an integer, unknown status)"),
    503: {"model": UnavailableAnswer, "description": "the state database is unavailable"},
}


def create_app(options: DispatchOptions | None = None) -> FastAPI:
    """The FastAPI app (no settings, database or network touched until the first request).

    ``options`` default to the environment (a bad value raises ValueError naming the variable). The dispatcher
    thread starts with the app's lifespan (or with the first event) and drains its queue when the app stops.
    """
    runtime = _Runtime()
    options = options or DispatchOptions.from_env()
    dispatcher = (
        events.EventDispatcher(
            lambda event_id: _dispatch_one(runtime, event_id),
            dispatch_many=lambda event_ids: _dispatch_many(runtime, event_ids),
        )
        if options.dispatcher
        else None
    )
    group: events.GroupCommit[Pending, Stored] = events.GroupCommit(lambda pending: _store_batch(runtime, pending))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        warm = asyncio.create_task(run_in_threadpool(_warm_up, runtime))
        tasks = [warm]
        if dispatcher is not None:
            dispatcher.start()
        if options.sweep_seconds > 0:
            tasks.append(asyncio.create_task(_sweep_forever(runtime, options, dispatcher)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if dispatcher is not None:
                await run_in_threadpool(dispatcher.stop)

    app = FastAPI(
        title="Optimove events",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
    )
    app.state.runtime = runtime
    app.state.dispatcher = dispatcher
    app.state.group_commit = group

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own checks (query parameters) answer in the endpoint's format, naming the parameter."""
        details = [
            {"field": str(err["loc"][-1]) if err.get("loc") else "request", "message": str(err.get("msg", "invalid"))}
            for err in exc.errors()
        ]
        error = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
        return Rejected(422, error, details[0]["field"] if details else None, details).response()

    @app.post(
        "/event/{app_key}",
        responses=_EVENT_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON_MEDIA_TYPE: {"schema": EventBody.model_json_schema()}},
            }
        },
    )
    async def receive_event(app_key: str, request: Request) -> JSONResponse:
        """Store one Optimove event (dispatched off the request path); at most ``inbound.max_concurrent_requests``
        at once (503 over)."""
        cached = runtime.cached()
        cap = cached.settings.inbound.max_concurrent_requests if cached else DEFAULT_MAX_CONCURRENT
        if runtime.in_progress >= cap:
            log.warning("Optimove event refused with 503: %d event requests already in progress (the cap)", cap)
            return _unavailable(f"{cap} event requests are already in progress on this server; retry later")
        runtime.in_progress += 1
        try:
            return await _receive_event(app_key, request)
        finally:
            runtime.in_progress -= 1

    async def _receive_event(app_key: str, request: Request) -> JSONResponse:
        try:
            given = request.headers.get(API_KEY_HEADER)
            if not given:
                raise Rejected(401, f"missing {API_KEY_HEADER} header", API_KEY_HEADER)
            try:
                config = await runtime.config()
            except SettingsError as exc:
                log.error("Optimove event refused with 503: the integration settings are invalid: %s", exc)
                return _unavailable("the integration settings are invalid; see the Airflow API server log")
            if config.api_key is None:
                log.error(
                    "Optimove event refused with 503: no inbound API key configured (set env %s or the "
                    "Airflow Variable %s)",
                    config.settings.inbound.api_key_env,
                    INBOUND_KEY_VARIABLE,
                )
                return _unavailable("the inbound API key is not configured on this server")
            _check_key(given, config.api_key)
            _check_app_key(app_key, config)
            _check_content_type(request)
            inbound = config.settings.inbound
            body = await _read_body(request, inbound.max_body_bytes, inbound.body_timeout_seconds)
            pairs = _decode(body)
            raw = _plain(pairs)
            try:  # nested objects as plain dicts: an object is "an object", never a list of pairs
                event = events.parse_event([(k, _plain(v, 1)) for k, v in pairs], now=dt.datetime.now(dt.UTC))
            except events.EventValidationError as exc:
                details = [{"field": e.field, "message": e.message} for e in exc.errors]
                raise Rejected(422, str(exc), exc.field, details) from None
        except Rejected as rejected:
            log.info("Optimove event rejected with %s (field %s)", rejected.status, rejected.field)
            return rejected.response()
        try:
            stored, released = await group.submit((config, event, raw))
        except StoreUnavailable as exc:
            url = _shown_url(config.settings)
            log.error(
                "Optimove event (type %s, campaign %s) refused with 503: state database %s unavailable: %s",
                event.event_type_id,
                event.campaign_id,
                url,
                exc,
            )
            if isinstance(exc.__cause__, SharedStateError):
                return _unavailable(
                    f"this server's state database is not shared with the Airflow workers; nothing was stored. "
                    f"Its operator must set {STATE_DB_ENV} (see the API server log)"
                )
            return _unavailable("the state database is unavailable; nothing was stored, retry later")
        except Exception as exc:  # a bug: log no message or traceback (they can carry the event's values)
            log.error(
                "Optimove event (type %s, campaign %s) could not be stored: %s; answered 500",
                event.event_type_id,
                event.campaign_id,
                type(exc).__name__,
            )
            return JSONResponse(
                {"status": "error", "error": "the event could not be stored (a server bug; see the server log)"},
                status_code=500,
            )
        queued = None
        if (stored.created or released) and stored.status == EventStatus.RECEIVED.value:
            queued = dispatcher is not None and dispatcher.submit(stored.event_id)
            if dispatcher is not None and not queued:
                log.warning("Optimove event %s stored; the dispatcher is full: left to the sweep", stored.event_id)
        return JSONResponse(_answer(stored, event, released, queued), status_code=200)

    @app.get(
        "/events",
        dependencies=[_require_user()],
        responses={200: {"model": EventsPage, "description": "recent events"}, **_USER_RESPONSES},
    )
    def list_events(
        limit: Annotated[int, Query(ge=1, le=1000, description="How many events, newest first")] = 50,
        status: Annotated[EventStatus | None, Query(description="Only events in this status")] = None,
        event_type_id: Annotated[int | None, Query(ge=1, le=events.MAX_INT32)] = None,
        campaign_id: Annotated[int | None, Query(ge=1, le=events.MAX_INT64)] = None,
    ) -> JSONResponse:
        """The most recent events (newest first), without customer data."""
        config = runtime.cached() or runtime.refresh()
        try:
            engine = runtime.engine(config.settings)
            table = Event.__table__
            columns = [
                table.c.id,
                table.c.event_type_id,
                table.c.campaign_id,
                table.c.channel_id,
                table.c.template_id,
                table.c.event_time,
                table.c.received_at,
                table.c.source,
                table.c.status,
                table.c.dag_run_id,
                table.c.note,
            ]
            stmt = sa.select(*columns).order_by(table.c.id.desc()).limit(limit)
            wanted = {"status": status.value if status else None, "event_type_id": event_type_id}
            for column, value in {**wanted, "campaign_id": campaign_id}.items():
                if value is not None:
                    stmt = stmt.where(table.c[column] == value)
            with engine.connect() as connection:
                rows = [dict(r._mapping) for r in connection.execute(stmt)]
        except (StoreUnavailable, StateDatabaseError, sa.exc.OperationalError) as exc:
            return _unavailable(f"the state database is unavailable: {type(exc).__name__}")
        for row in rows:
            for name in ("event_time", "received_at"):
                row[name] = row[name].isoformat() if row[name] is not None else None
        return JSONResponse({"total": len(rows), "events": rows})

    @app.get(
        "/status",
        dependencies=[_require_user()],
        responses={200: {"description": "configuration (no secrets), counts per status, backlog"}, **_USER_RESPONSES},
    )
    def status() -> JSONResponse:
        """Configuration in use (no secrets), event counts per status and the dispatch backlog."""
        config = runtime.cached() or runtime.refresh()
        body: dict[str, Any] = {
            "app_key_configured": bool(config.settings.inbound.app_key),
            "inbound_key_source": config.key_source,
            "channels": list(config.settings.campaigns.channels),
            "max_body_bytes": config.settings.inbound.max_body_bytes,
            "state_db": _shown_url(config.settings),
        }
        try:
            engine = runtime.engine(config.settings)
            body["events"] = events.count_by_status(engine)
            body["pending_dispatch"] = len(events.pending_event_ids(engine, older_than_seconds=0, limit=10_000))
            body["state_db_reachable"] = True
        except (StoreUnavailable, StateDatabaseError, sa.exc.OperationalError) as exc:
            body["state_db_reachable"] = False
            body["state_db_error"] = type(exc).__name__
        return JSONResponse(body)

    return app
