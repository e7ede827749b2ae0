"""A contract-faithful Optimove REST API sandbox (FastAPI), with its admin endpoints under ``/_sandbox/``.

Real endpoints keep the real contract and its quirks: ``/current/{category}/{Function}`` (also without
``/current``; category and function case-insensitive), ``X-API-KEY`` or the legacy ``general/login`` token
(quoted JSON string body, ``Authorization-Token`` header, 20-minute sliding expiry answered with 403
``Authorization-Token Expired``, at most one login per second), 50 requests per 10 s per key with Optimove's
429 JSON body and no ``Retry-After``, ``$top``/``$skip`` paging capped at 10,000 rows, ``CustomerAttributes``
as an array (or the legacy delimited ``CustomerAttribute`` string) with ``"NULL"`` for empty values, and empty
200 bodies on writes. Handlers are plain ``async def`` functions over ``request.query_params`` that build JSON
with :mod:`json`; no per-row validation, so a 10,000-row page is served in tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from optimove_netmera.sandbox.data import Campaign, Dataset, format_customer_id, parse_date
from optimove_netmera.sandbox.faults import FaultInjectingApp, FaultInjector

__all__ = ["DEFAULT_CONFIG", "create_optimove_app"]

ADMIN_PREFIX = "/_sandbox/"
RATE_LIMIT_BODY = {
    "status": 429,
    "error": "Too Many Requests",
    "message": "You have exceeded the rate limit for this API group. Please retry later.",
}
TOKEN_EXPIRED = "Authorization-Token Expired"
UNAUTHORIZED_USER = "Unauthorized User"
MISSING_TOKEN = "Missing Authorization-Token"
INVALID_API_KEY = "Invalid API Key"
INVALID_LOGIN = "Wrong user / password combination"
WEBHOOK_TIMEOUT_S = 10.0
EVENT_TYPES = (1, 2, 3, 4, 5, 11, 13, 14)
MAX_BATCH = 100

DEFAULT_CONFIG: dict[str, Any] = {
    "rate_limit": {"calls": 50, "period": 10},
    "token_ttl_seconds": 1200,
    "legacy_attributes": False,
    "schedule_time_key": "ScheduleTime",
    "max_page_size": 10000,
    "last_data_update": None,  # None: yesterday's date, evaluated on every call
    "login_min_interval": 1.0,
    "cancel_window_seconds": 7200,
    # GetRegisteredEventListeners: False lists ListenerURL decoded; True lists it exactly as registered (URL-encoded
    # if it was sent encoded, as the documentation's fixture does). The documents do not say which Optimove does.
    "listener_urls_as_sent": False,
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Query = dict[str, str]
Handler = Callable[["_Sandbox", Query, Any], Awaitable[Response]]


# --------------------------------------------------------------------------------------------- responses
def _dumps(obj: Any) -> bytes:
    # compact UTF-8, like Optimove's: the bytes of json.dumps(ensure_ascii=False), 7x faster on 10k-row pages
    return msgspec.json.encode(obj)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json; charset=utf-8", headers=headers)


def _text(text: str, status: int) -> Response:
    return Response(text.encode("utf-8"), status_code=status, media_type="text/plain; charset=utf-8")


def _empty() -> Response:
    return Response(b"", status_code=200)


class ApiError(Exception):
    """An error answered by a real endpoint (JSON ``{"Message": ...}`` unless ``text``)."""

    def __init__(self, status: int, message: str, *, text: bool = False, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.text = text
        self.headers = headers

    def response(self) -> Response:
        if self.text:
            return _text(self.message, self.status)
        return _json({"Message": self.message}, self.status, self.headers)


class AdminError(Exception):
    """An error answered by an admin endpoint (``{"detail": ...}``, like the fault router)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_TIME_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------------------------- parameters
def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _param(q: Query, name: str, required: bool = True) -> str | None:
    value = q.get(name.lower())
    if value is None or value.strip() == "":
        if required:
            raise _bad(f"Missing required parameter: {name}")
        return None
    return value.strip()


def _int_param(q: Query, name: str, required: bool = True) -> int | None:
    value = _param(q, name, required)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _bad(f"Invalid value for parameter {name}: '{value}' is not an integer") from None


def _date_param(q: Query, name: str, required: bool = True) -> dt.date | None:
    value = _param(q, name, required)
    if value is None:
        return None
    try:
        return parse_date(value)
    except ValueError:
        raise _bad(f"Invalid value for parameter {name}: '{value}'. {name} must be in the format YYYY-MM-DD") from None


def _body_field(body: dict[str, Any], name: str) -> Any:
    wanted = name.lower()
    for key, value in body.items():
        if str(key).lower() == wanted:
            return value
    return None


def _body_int(body: dict[str, Any], name: str, required: bool = True, where: str = "") -> int | None:
    value = _body_field(body, name)
    if value is None:
        if required:
            raise _bad(f"Missing required field: {name}{where}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(f"Invalid value for field {name}{where}: an integer is required")
    try:
        return int(value)
    except ValueError:
        raise _bad(f"Invalid value for field {name}{where}: '{value}' is not an integer") from None


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(400, f"{name} must be an integer")
    return value


def _as_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdminError(400, f"{name} must be a number")
    return float(value)


@dataclass
class _Token:
    user: str
    last_used: float
    expired: bool = False


@dataclass(frozen=True)
class _Function:
    category: str
    name: str
    method: str
    handler: Handler | None
    auth: bool = True

    @property
    def path(self) -> str:
        return f"/current/{self.category}/{self.name}"


# --------------------------------------------------------------------------------------------- state
class _Sandbox:
    """All mutable state of one Optimove sandbox app (guarded by ``lock``; no lock is held across awaits)."""

    def __init__(
        self, dataset: Dataset, *, api_key: str, username: str, password: str, faults: FaultInjector, seed: int
    ) -> None:
        self.dataset = dataset
        self.api_key = api_key
        self.username = username
        self.password = password
        self.faults = faults
        self.seed = seed
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.config: dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))
            self.tokens: dict[str, _Token] = {}
            self.last_login: dict[str, float] = {}
            self.windows: dict[str, deque[float]] = {}
            self.listeners: list[dict[str, Any]] = []
            self.metrics: list[dict[str, Any]] = []
            self.counts: dict[str, dict[str, int]] = {}
            self.total = 0
            self.dataset.reset()
            self.faults.clear()

    # ------------------------------------------------------------------ counters
    def record(self, method: str, path: str, status: str) -> None:
        """Count one request (``status`` is the code as text, or ``reset``)."""
        if path.startswith(ADMIN_PREFIX):
            return
        key = f"{method} {canonical_path(path)}"
        with self.lock:
            per = self.counts.setdefault(key, {})
            per[status] = per.get(status, 0) + 1
            self.total += 1

    # ------------------------------------------------------------------ config
    def last_data_update(self) -> dt.date:
        value = self.config["last_data_update"]
        if value is None:
            return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        return parse_date(value)

    def config_view(self) -> dict[str, Any]:
        view = json.loads(json.dumps(self.config))
        view["last_data_update"] = self.last_data_update().isoformat()
        return view

    def update_config(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise AdminError(400, "config body must be a JSON object")
        unknown = sorted(set(raw) - set(DEFAULT_CONFIG))
        if unknown:
            raise AdminError(400, f"unknown config key(s): {', '.join(unknown)}; allowed: {', '.join(DEFAULT_CONFIG)}")
        new = dict(self.config)
        for key, value in raw.items():
            if key == "rate_limit":
                if value is not None:
                    if not isinstance(value, dict) or set(value) - {"calls", "period"}:
                        raise AdminError(400, 'rate_limit must be {"calls": int, "period": seconds} or null')
                    current = new["rate_limit"] or DEFAULT_CONFIG["rate_limit"]
                    calls, period = value.get("calls", current["calls"]), value.get("period", current["period"])
                    if _as_int(calls, "calls") < 1 or _as_number(period, "period") <= 0:
                        raise AdminError(400, "rate_limit calls must be >= 1 and period > 0")
                    value = {"calls": calls, "period": period}
            elif key in ("token_ttl_seconds", "login_min_interval", "cancel_window_seconds"):
                number = _as_number(value, key)
                if number < 0 or (key == "token_ttl_seconds" and number == 0):
                    raise AdminError(400, f"{key} must be {'> 0' if key == 'token_ttl_seconds' else '>= 0'}")
            elif key in ("legacy_attributes", "listener_urls_as_sent"):
                if not isinstance(value, bool):
                    raise AdminError(400, f"{key} must be a boolean")
            elif key == "schedule_time_key":
                if value not in ("ScheduleTime", "ScheduledTime"):
                    raise AdminError(400, 'schedule_time_key must be "ScheduleTime" or "ScheduledTime"')
            elif key == "max_page_size":
                if _as_int(value, key) < 1:
                    raise AdminError(400, "max_page_size must be >= 1")
            elif key == "last_data_update" and value is not None:
                try:
                    parse_date(value)
                except ValueError:
                    raise AdminError(400, "last_data_update must be a YYYY-MM-DD date or null") from None
            new[key] = value
        with self.lock:
            self.config = new

    # ------------------------------------------------------------------ auth
    def authenticate(self, request: Request) -> str:
        """Return the rate-limit identity of the caller or raise the API's 401/403."""
        headers = request.headers
        api_key = headers.get("x-api-key")
        if api_key is not None:
            if not hmac.compare_digest(api_key.encode(), self.api_key.encode()):
                raise ApiError(401, INVALID_API_KEY, text=True)
            return "key:" + api_key
        token = headers.get("authorization-token")
        if token is None:
            raise ApiError(401, MISSING_TOKEN, text=True)
        now = time.monotonic()
        with self.lock:
            record = self.tokens.get(token.strip())
            if record is None:
                raise ApiError(403, UNAUTHORIZED_USER, text=True)
            if record.expired or now - record.last_used > float(self.config["token_ttl_seconds"]):
                record.expired = True
                raise ApiError(403, TOKEN_EXPIRED, text=True)
            record.last_used = now
            return "user:" + record.user

    def check_rate(self, identity: str) -> None:
        limit = self.config["rate_limit"]
        if not limit:
            return
        now = time.monotonic()
        with self.lock:
            window = self.windows.setdefault(identity, deque())
            horizon = now - float(limit["period"])
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= int(limit["calls"]):
                raise _RateLimited()
            window.append(now)

    def login(self, body: Any) -> Response:
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object with Username and Password")
        fields = {str(k).lower(): v for k, v in body.items()}
        user, password = fields.get("username"), fields.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
            raise _bad("Missing required field: Username and Password are required")
        ok_user = hmac.compare_digest(user.encode(), self.username.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        if not (ok_user and ok_password):
            raise ApiError(401, INVALID_LOGIN, text=True)
        now = time.monotonic()
        with self.lock:
            last = self.last_login.get(user)
            if last is not None and now - last < float(self.config["login_min_interval"]):
                raise _RateLimited()
            self.last_login[user] = now
            token = str(uuid.uuid4())
            self.tokens[token] = _Token(user=user, last_used=now)
        return _json(token)

    # ------------------------------------------------------------------ attributes
    def requested_attributes(self, q: Query) -> tuple[list[str] | None, str]:
        """Parse ``CustomerAttributes`` (+ ``CustomerAttributesDelimiter``) into canonical names."""
        delimiter = q.get("customerattributesdelimiter")
        if delimiter is not None and delimiter not in (",", ";"):
            raise _bad(
                f"Invalid value for parameter CustomerAttributesDelimiter: '{delimiter}'. Only ',' or ';' are allowed"
            )
        raw = q.get("customerattributes")
        if raw is None or not raw.strip():
            return None, delimiter or ","
        text = raw.replace(delimiter, ";") if delimiter else raw
        names: list[str] = []
        for part in text.split(";"):
            if not part.strip():
                continue
            name = self.dataset.resolve_attribute(part)
            if name is None:
                raise _bad(f"Invalid value for parameter CustomerAttributes: unknown attribute '{part.strip()}'")
            names.append(name)
        return names, delimiter or ","

    def attribute_writer(
        self, attrs: list[str] | None, delimiter: str
    ) -> Callable[[dict[str, Any], tuple[str | None, ...] | None], None]:
        """A function adding the attribute field (array, or legacy delimited string) to a row dict."""
        if attrs is None:
            return lambda row, values: None
        if self.config["legacy_attributes"]:

            def legacy(row: dict[str, Any], values: tuple[str | None, ...] | None) -> None:
                if values is None:
                    values = (None,) * len(attrs)
                row["CustomerAttribute"] = delimiter.join("NULL" if v is None else v for v in values)

            return legacy

        def array(row: dict[str, Any], values: tuple[str | None, ...] | None) -> None:
            if values is None:
                row["CustomerAttributes"] = ["NULL"] * len(attrs)
            else:
                row["CustomerAttributes"] = ["NULL" if v is None else v for v in values]

        return array

    def paging(self, q: Query) -> tuple[int, int]:
        max_page = int(self.config["max_page_size"])
        top = _int_param(q, "$top", required=False)
        skip = _int_param(q, "$skip", required=False)
        if top is not None and top < 0:
            raise _bad("Invalid value for parameter $top: must be >= 0")
        if skip is not None and skip < 0:
            raise _bad("Invalid value for parameter $skip: must be >= 0")
        return (max_page if top is None else min(top, max_page)), (skip or 0)


class _RateLimited(ApiError):
    def __init__(self) -> None:
        super().__init__(429, RATE_LIMIT_BODY["message"])

    def response(self) -> Response:
        return _json(RATE_LIMIT_BODY, 429)


# --------------------------------------------------------------------------------------------- handlers
async def h_last_data_update(s: _Sandbox, q: Query, body: Any) -> Response:
    return _json({"Date": s.last_data_update().isoformat()})


def _listener_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad("Missing required field: ListenerURL")
    url = unquote(value.strip())
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _bad(f"Invalid value for field ListenerURL: '{value}' is not an http(s) URL")
    return url


async def h_register_listener(s: _Sandbox, q: Query, body: Any) -> Response:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    event_type = _body_int(body, "EventTypeID")
    if event_type not in EVENT_TYPES:
        raise _bad(f"Invalid value for field EventTypeID: {event_type}")
    raw = _body_field(body, "ListenerURL")
    url = _listener_url(raw)
    channel = _body_int(body, "ChannelID", required=False)
    with s.lock:
        s.listeners = [li for li in s.listeners if not (li["EventTypeID"] == event_type and li["ChannelID"] == channel)]
        s.listeners.append({"EventTypeID": event_type, "ListenerURL": url, "ChannelID": channel, "_as_sent": raw})
    return _empty()


async def h_unregister_listener(s: _Sandbox, q: Query, body: Any) -> Response:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    event_type = _body_int(body, "EventTypeID")
    channel = _body_int(body, "ChannelID", required=False)
    with s.lock:
        s.listeners = [
            li
            for li in s.listeners
            if not (li["EventTypeID"] == event_type and (channel is None or li["ChannelID"] == channel))
        ]
    return _empty()


def _listener_view(li: dict[str, Any], as_sent: bool) -> dict[str, Any]:
    view = {k: v for k, v in li.items() if not k.startswith("_")}
    if as_sent:
        view["ListenerURL"] = str(li["_as_sent"]).strip()
    return view


async def h_get_listeners(s: _Sandbox, q: Query, body: Any) -> Response:
    with s.lock:
        return _json([_listener_view(li, bool(s.config["listener_urls_as_sent"])) for li in s.listeners])


async def h_attribute_list(s: _Sandbox, q: Query, body: Any) -> Response:
    return _json([{"RealFieldName": spec.name, "Description": spec.description} for spec in s.dataset.specs])


async def h_execution_channels(s: _Sandbox, q: Query, body: Any) -> Response:
    with s.dataset.lock:
        return _json([{"ChannelID": cid, "ChannelName": name} for cid, name in s.dataset.channels.items()])


def _campaign(s: _Sandbox, q: Query) -> Campaign:
    campaign_id = _int_param(q, "CampaignID")
    campaign = s.dataset.campaigns.get(campaign_id)  # type: ignore[arg-type]
    if campaign is None:
        raise _bad(f"Invalid value for parameter CampaignID: campaign {campaign_id} does not exist")
    return campaign


async def h_campaign_details(s: _Sandbox, q: Query, body: Any) -> Response:
    c = _campaign(s, q)
    return _json(
        {
            "TestGroupSize": c.recipients - c.control,
            "ControlGroupSize": c.control,
            "Channels": [{"Id": c.channel_id}],
            "Tags": [],
            "TargetGroupID": c.target_group_id,
            "CampaignType": "Test/Control" if c.control else "Test",
            "Duration": c.duration,
            "LeadTime": c.lead_time,
            "Notes": "",
            "IsMultiChannel": False,
            "IsRecurrence": False,
            "Error": "",
        }
    )


async def h_executed_by_channel(s: _Sandbox, q: Query, body: Any) -> Response:
    channel = _int_param(q, "ChannelID")
    day = _date_param(q, "Date")
    with s.dataset.lock:
        ids = sorted(c.campaign_id for c in s.dataset.campaigns.values() if c.channel_id == channel and c.date == day)
    return _json([{"CampaignID": cid} for cid in ids])


async def h_executed_details(s: _Sandbox, q: Query, body: Any) -> Response:
    day = _date_param(q, "Date")
    with s.dataset.lock:
        campaigns = sorted((c for c in s.dataset.campaigns.values() if c.date == day), key=lambda c: c.campaign_id)
    return _json(
        [
            {
                "CampaignID": c.campaign_id,
                "TargetGroupID": c.target_group_id,
                "CampaignType": "Test/Control" if c.control else "Test",
                "Duration": c.duration,
                "LeadTime": c.lead_time,
                "Notes": "",
                "IsMultiChannel": "false",
                "IsRecurrence": "false",
                "Status": "Successful",
                "Error": "",
            }
            for c in campaigns
        ]
    )


async def h_executed_channel_details(s: _Sandbox, q: Query, body: Any) -> Response:
    campaign_id = _int_param(q, "CampaignID")
    channel = _int_param(q, "ChannelID")
    c = s.dataset.campaigns.get(campaign_id)  # type: ignore[arg-type]
    if c is None or c.channel_id != channel:
        return _json([])
    return _json([{"ListID": 0, "SendID": "", "TemplateID": t, "ScheduledTime": c.scheduled_time} for t in c.templates])


async def h_attribute_changers(s: _Sandbox, q: Query, body: Any) -> Response:
    changed = _param(q, "ChangedCustomerAttribute")
    assert changed is not None
    attr = s.dataset.resolve_attribute(changed)
    if attr is None:
        raise _bad(f"Invalid value for parameter ChangedCustomerAttribute: unknown attribute '{changed}'")
    start = _date_param(q, "StartDate")
    end = _date_param(q, "EndDate")
    assert start is not None and end is not None
    if start > end:
        raise _bad("Invalid date range: StartDate must not be later than EndDate")
    attrs, delimiter = s.requested_attributes(q)
    top, skip = s.paging(q)
    indices, initial = s.dataset.changers(attr, start, end)
    page = indices[skip : skip + top]
    if page.size == 0:
        return _json([])
    first = initial[skip : skip + top] if initial is not None else [None] * page.size
    final = s.dataset.values_as_of(page, attr, end)
    values = s.dataset.rows(page, attrs) if attrs else None
    write = s.attribute_writer(attrs, delimiter)
    out = []
    for pos, index in enumerate(page.tolist()):
        row: dict[str, Any] = {
            "CustomerID": format_customer_id(index),
            "InitialCustomerAttribute": "NULL" if first[pos] is None else first[pos],
            "FinalCustomerAttribute": "NULL" if final[pos] is None else final[pos],
        }
        write(row, values[pos] if values is not None else None)
        out.append(row)
    return _json(out)


def _page_rows(
    s: _Sandbox, c: Campaign, rows: np.ndarray, attrs: list[str] | None
) -> list[tuple[str | None, ...] | None] | None:
    if not attrs:
        return None
    values = s.dataset.rows(c.customers[rows], attrs)
    missing = c.missing[rows].tolist()
    return [None if m else v for v, m in zip(values, missing, strict=True)]


async def h_execution_details(s: _Sandbox, q: Query, body: Any) -> Response:
    campaign_id = _int_param(q, "CampaignID")
    channel = _int_param(q, "ChannelID")
    attrs, delimiter = s.requested_attributes(q)
    top, skip = s.paging(q)
    c = s.dataset.campaigns.get(campaign_id)  # type: ignore[arg-type]
    if c is None or c.channel_id != channel:
        return _json([])
    rows = np.arange(skip, min(skip + top, c.rows), dtype=np.int64)
    if rows.size == 0:
        return _json([])
    names = s.dataset.templates.get(c.channel_id, {})
    key = s.config["schedule_time_key"]
    values = _page_rows(s, c, rows, attrs)
    write = s.attribute_writer(attrs, delimiter)
    out = []
    customers = c.customers[rows].tolist()
    actions = c.actions[rows].tolist()
    templates = [c.templates[p] for p in c.template_pos[rows].tolist()]
    for pos in range(rows.size):
        template = templates[pos]
        action = actions[pos]
        row: dict[str, Any] = {
            "CustomerID": format_customer_id(customers[pos]),
            "ActionID": action,
            "ChannelID": c.channel_id,
            "TemplateID": template,
            "TemplateName": names.get(template, f"Template {template}"),
            key: c.scheduled_time,
            "PromoCode": "" if action == 1 else c.promo_code,
        }
        write(row, values[pos] if values is not None else None)
        out.append(row)
    return _json(out)


async def h_send_details_by_channel(s: _Sandbox, q: Query, body: Any) -> Response:
    channel = _int_param(q, "ChannelID")
    campaign_id = _int_param(q, "CampaignID")
    attrs, delimiter = s.requested_attributes(q)
    top, skip = s.paging(q)
    c = s.dataset.campaigns.get(campaign_id)  # type: ignore[arg-type]
    if c is None or c.channel_id != channel:
        return _json([])
    rows = np.flatnonzero(c.actions != 1)[skip : skip + top]
    if rows.size == 0:
        return _json([])
    values = _page_rows(s, c, rows, attrs)
    write = s.attribute_writer(attrs, delimiter)
    out = []
    for pos, (customer, tpos) in enumerate(zip(c.customers[rows].tolist(), c.template_pos[rows].tolist(), strict=True)):
        row: dict[str, Any] = {
            "CustomerID": format_customer_id(customer),
            "TemplateID": c.templates[tpos],
            "ScheduledTime": c.scheduled_time,
        }
        write(row, values[pos] if values is not None else None)
        out.append(row)
    return _json(out)


async def h_canceled_customers(s: _Sandbox, q: Query, body: Any) -> Response:
    campaign_id = _int_param(q, "CampaignID")
    top, skip = s.paging(q)
    c = s.dataset.campaigns.get(campaign_id)  # type: ignore[arg-type]
    if c is None or c.cancelled_at is None or c.cancelled_rows is None:
        return _json([])
    if time.monotonic() - c.cancelled_at > float(s.config["cancel_window_seconds"]):
        return _json([])
    rows = c.cancelled_rows[skip : skip + top]
    return _json(
        [
            {"CustomerID": format_customer_id(customer), "ActionID": str(action), "PromoCode": c.promo_code}
            for customer, action in zip(c.customers[rows].tolist(), c.actions[rows].tolist(), strict=True)
        ]
    )


async def h_channel_templates(s: _Sandbox, q: Query, body: Any) -> Response:
    channel = _int_param(q, "ChannelID")
    with s.dataset.lock:
        templates = dict(s.dataset.templates.get(channel, {}))  # type: ignore[arg-type]
    return _json([{"TemplateID": tid, "TemplateName": name} for tid, name in sorted(templates.items())])


def _batch(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, list):
        raise _bad("The request body must be a JSON array")
    if len(body) > MAX_BATCH:
        raise _bad(f"Too many items: {len(body)} (at most {MAX_BATCH} per call)")
    for pos, item in enumerate(body):
        if not isinstance(item, dict):
            raise _bad(f"Item {pos} must be a JSON object")
    return body


async def h_add_templates(s: _Sandbox, q: Query, body: Any) -> Response:
    channel = _int_param(q, "ChannelID")
    items = _batch(body)
    if channel not in s.dataset.channels:
        raise _bad(f"Invalid value for parameter ChannelID: {channel}")
    parsed: dict[int, str] = {}
    for pos, item in enumerate(items):
        template_id = _body_int(item, "TemplateID", where=f" (item {pos})")
        name = _body_field(item, "TemplateName")
        if not isinstance(name, str) or not name.strip():
            raise _bad(f"Missing required field: TemplateName (item {pos})")
        parsed[template_id] = name  # type: ignore[index]
    with s.dataset.lock:
        s.dataset.templates.setdefault(channel, {}).update(parsed)  # type: ignore[arg-type]
    return _empty()


async def h_delete_templates(s: _Sandbox, q: Query, body: Any) -> Response:
    items = _batch(body)
    pairs = [
        (_body_int(item, "ChannelID", where=f" (item {pos})"), _body_int(item, "TemplateID", where=f" (item {pos})"))
        for pos, item in enumerate(items)
    ]
    with s.dataset.lock:
        for channel, template in pairs:
            s.dataset.templates.get(channel, {}).pop(template, None)  # type: ignore[arg-type]
    return _empty()


async def h_update_metrics(s: _Sandbox, q: Query, body: Any) -> Response:
    items = _batch(body)
    rows = []
    received = _now_text()
    for pos, item in enumerate(items):
        where = f" (item {pos})"
        row: dict[str, Any] = {
            name: _body_int(item, name, where=where) for name in ("ChannelID", "CampaignID", "TemplateID", "MetricID")
        }
        value = _body_field(item, "MetricValue")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"Missing or invalid field: MetricValue{where} must be a number")
        row["MetricValue"] = value
        row["received_at"] = received
        rows.append(row)
    with s.lock:
        s.metrics.extend(rows)
    return _empty()


def _functions() -> dict[tuple[str, str], _Function]:
    table = [
        _Function("general", "login", "POST", None, auth=False),
        _Function("general", "GetLastDataUpdate", "GET", h_last_data_update),
        _Function("general", "RegisterEventListener", "POST", h_register_listener),
        _Function("general", "UnregisterEventListener", "POST", h_unregister_listener),
        _Function("general", "GetRegisteredEventListeners", "GET", h_get_listeners),
        _Function("model", "GetCustomerAttributeList", "GET", h_attribute_list),
        _Function("actions", "GetExecutionChannels", "GET", h_execution_channels),
        _Function("actions", "GetCampaignDetails", "GET", h_campaign_details),
        _Function("actions", "GetExecutedCampaignsByChannel", "GET", h_executed_by_channel),
        _Function("actions", "GetExecutedCampaignDetails", "GET", h_executed_details),
        _Function("actions", "GetExecutedCampaignChannelDetails", "GET", h_executed_channel_details),
        _Function("customers", "GetCustomerAttributeChangers", "GET", h_attribute_changers),
        _Function("customers", "GetCustomerExecutionDetailsByCampaign", "GET", h_execution_details),
        _Function("customers", "GetCustomerSendDetailsByChannel", "GET", h_send_details_by_channel),
        _Function("customers", "GetCanceledCampaignCustomers", "GET", h_canceled_customers),
        _Function("integrations", "GetChannelTemplates", "GET", h_channel_templates),
        _Function("integrations", "AddChannelTemplates", "POST", h_add_templates),
        _Function("integrations", "DeleteChannelTemplates", "POST", h_delete_templates),
        _Function("integrations", "UpdateCampaignMetrics", "POST", h_update_metrics),
    ]
    functions = {(f.category, f.name.lower()): f for f in table}
    # The third-party list spells it in the singular too.
    functions[("general", "getregisteredeventlistener")] = functions[("general", "getregisteredeventlisteners")]
    return functions


FUNCTIONS = _functions()


def resolve(path: str) -> _Function | None:
    """The function served at ``path`` (``/current`` optional; category and name case-insensitive)."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0].lower() == "current":
        parts = parts[1:]
    if len(parts) != 2:
        return None
    return FUNCTIONS.get((parts[0].lower(), parts[1].lower()))


def canonical_path(path: str) -> str:
    """``/current/{category}/{Function}`` for a known function, otherwise the path as requested."""
    function = resolve(path)
    return function.path if function is not None else path


class _CountingMiddleware:
    """Counts every non-admin request by canonical endpoint and final status."""

    def __init__(self, app: ASGIApp, sandbox: _Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.sandbox.record(scope.get("method", ""), path, str(status[0]) if status else "500")


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower():
        raise _bad("Content-Type must be application/json")
    if not raw.strip():
        raise _bad("The request body is empty")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad("The request body is not valid JSON") from None


async def _dispatch(s: _Sandbox, request: Request) -> Response:
    path = request.url.path
    if path.startswith(ADMIN_PREFIX) or path.rstrip("/") == ADMIN_PREFIX.rstrip("/"):
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    function = resolve(path)
    if function is None:
        return _json({"Message": f"No HTTP resource was found that matches the request URI '{path}'."}, 404)
    if request.method != function.method:
        return _json(
            {"Message": f"The requested resource does not support http method '{request.method}'."},
            405,
            headers={"Allow": function.method},
        )
    try:
        if not function.auth:
            return s.login(await _read_json(request))
        identity = s.authenticate(request)
        s.check_rate(identity)
        q = {k.lower(): v for k, v in request.query_params.multi_items()}
        body = await _read_json(request) if function.method == "POST" else None
        assert function.handler is not None
        return await function.handler(s, q, body)
    except ApiError as exc:
        return exc.response()


# --------------------------------------------------------------------------------------------- admin
async def _admin_body(request: Request, allowed: set[str], required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise AdminError(400, "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise AdminError(400, "body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AdminError(400, f"unknown key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return body


def _opt_date(value: Any, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return parse_date(value)
    except ValueError:
        raise AdminError(400, f"{name} must be a YYYY-MM-DD date") from None


def _attr_value(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise AdminError(400, f"attribute values must be strings, numbers, booleans or null, got {value!r}")


def _change_customers(s: _Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    ds = s.dataset
    has_count, has_changes = body.get("count") is not None, body.get("changes") is not None
    if has_count == has_changes:
        raise AdminError(400, 'give exactly one of "count" or "changes"')
    day = _opt_date(body.get("date"), "date") or s.last_data_update()
    emptied: dict[int, list[str]] = {}
    if has_changes:
        if body.get("attributes") is not None or body.get("empty"):
            raise AdminError(400, '"attributes" and "empty" only apply with "count"')
        items = body["changes"]
        if not isinstance(items, list):
            raise AdminError(400, "changes must be a list")
        changes: dict[int, dict[str, str | None]] = {}
        for pos, item in enumerate(items):
            if not isinstance(item, dict) or set(item) - {"customer_id", "attributes"}:
                raise AdminError(400, f'changes[{pos}] must be {{"customer_id": ..., "attributes": {{...}}}}')
            index = ds.customer_index(item.get("customer_id"))  # type: ignore[arg-type]
            if index is None:
                raise AdminError(400, f"changes[{pos}]: unknown customer_id {item.get('customer_id')!r}")
            attrs = item.get("attributes")
            if not isinstance(attrs, dict) or not attrs:
                raise AdminError(400, f"changes[{pos}].attributes must be a non-empty object")
            row = changes.setdefault(index, {})
            for name, value in attrs.items():
                canonical = ds.resolve_attribute(str(name))
                if canonical is None:
                    raise AdminError(400, f"changes[{pos}]: unknown attribute {name!r}")
                row[canonical] = _attr_value(value)
                if row[canonical] is None:
                    emptied.setdefault(index, []).append(canonical)
    else:
        count = _as_int(body["count"], "count")
        empty = _as_int(body.get("empty", 0) or 0, "empty")
        names = body.get("attributes")
        attrs_list: list[str] | None = None
        if names is not None:
            if not isinstance(names, list) or not names:
                raise AdminError(400, "attributes must be a non-empty list of attribute names or null")
            attrs_list = []
            for name in names:
                canonical = ds.resolve_attribute(str(name))
                if canonical is None:
                    raise AdminError(400, f"unknown attribute {name!r}")
                attrs_list.append(canonical)
        try:
            changes, emptied = ds.random_changes(count, empty, attrs_list)
        except ValueError as exc:
            raise AdminError(400, str(exc)) from None
    ds.apply_changes(changes, day)
    with s.lock:
        if day > s.last_data_update():
            s.config["last_data_update"] = day.isoformat()
    return {
        "date": day.isoformat(),
        "changed": [format_customer_id(i) for i in sorted(changes)],
        "emptied": {format_customer_id(i): names for i, names in sorted(emptied.items())},
    }


def _create_campaign(s: _Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    campaign_id = body.get("campaign_id")
    if campaign_id is not None:
        campaign_id = _as_int(campaign_id, "campaign_id")
    channel_id = _as_int(body.get("channel_id", 506) if body.get("channel_id") is not None else 506, "channel_id")
    recipients = _as_int(body.get("recipients", 100) if body.get("recipients") is not None else 100, "recipients")
    control = body.get("control_fraction")
    control_fraction = 0.1 if control is None else _as_number(control, "control_fraction")
    missing = body.get("missing_data_fraction")
    missing_fraction = 0.0 if missing is None else _as_number(missing, "missing_data_fraction")
    duplicates = _as_int(body.get("duplicates") or 0, "duplicates")
    templates = body.get("templates")
    if templates is not None:
        if not isinstance(templates, list) or not templates:
            raise AdminError(400, "templates must be a non-empty list of template IDs or null")
        templates = [_as_int(t, "templates[]") for t in templates]
    today = dt.datetime.now(dt.UTC).date()
    day = _opt_date(body.get("date"), "date") or today
    scheduled = body.get("scheduled_time")
    if scheduled is None:
        scheduled = _now_text() if day == today else f"{day.isoformat()} 10:00:00"
    else:
        try:
            dt.datetime.strptime(scheduled, "%Y-%m-%d %H:%M:%S")
        except (TypeError, ValueError):
            raise AdminError(400, "scheduled_time must be YYYY-MM-DD HH:MM:SS") from None
    try:
        campaign = s.dataset.create_campaign(
            campaign_id=campaign_id,
            channel_id=channel_id,
            recipients=recipients,
            control_fraction=control_fraction,
            templates=templates,
            scheduled_time=scheduled,
            duplicates=duplicates,
            missing_data_fraction=missing_fraction,
            day=day,
        )
    except ValueError as exc:
        status = 409 if "already exists" in str(exc) else 400
        raise AdminError(status, str(exc)) from None
    return campaign.summary()


def _webhook_body(s: _Sandbox, body: dict[str, Any]) -> tuple[dict[str, Any], int, int | None]:
    event = _as_int(body.get("event_type_id"), "event_type_id")
    if event not in EVENT_TYPES:
        raise AdminError(400, f"event_type_id must be one of {', '.join(map(str, EVENT_TYPES))}")
    style = body.get("style") or "netmera"
    if style not in ("netmera", "optimove"):
        raise AdminError(400, 'style must be "netmera" or "optimove"')
    campaign_id = body.get("campaign_id")
    if campaign_id is not None:
        campaign_id = _as_int(campaign_id, "campaign_id")
    elif event in (4, 11, 13):
        raise AdminError(400, f"campaign_id is required for event_type_id {event}")
    campaign = s.dataset.campaigns.get(campaign_id) if campaign_id is not None else None
    channel_id = body.get("channel_id")
    if channel_id is not None:
        channel_id = _as_int(channel_id, "channel_id")
    elif campaign is not None:
        channel_id = campaign.channel_id
    elif event in (11, 13):
        raise AdminError(400, f"channel_id is required for event_type_id {event} of an unknown campaign")
    stamp = body.get("time_stamp") or _now_text()  # a given stamp re-sends the same event, as Optimove's retries do
    if not isinstance(stamp, str) or not _TIME_STAMP.match(stamp):
        raise AdminError(400, "time_stamp must be 'YYYY-MM-DD HH:MM:SS'")
    if style == "netmera":
        payload: dict[str, Any] = {"eventTypeId": event, "timeStamp": stamp}
        names = ("campaignId", "channelId")
    else:
        payload = {"EventTypeID": event, "TimeStamp": stamp}
        names = ("CampaignID", "ChannelID")
    if campaign_id is not None:
        payload[names[0]] = campaign_id
    if channel_id is not None:
        payload[names[1]] = channel_id
    if event == 11:
        customer_id, template_id, promo = body.get("customer_id"), body.get("template_id"), body.get("promo_code")
        if campaign is not None and (customer_id is None or template_id is None):
            sendable = np.flatnonzero(campaign.actions != 1)
            if sendable.size:
                row = int(sendable[0])
                if customer_id is None:
                    customer_id = format_customer_id(int(campaign.customers[row]))
                if template_id is None:
                    template_id = campaign.templates[int(campaign.template_pos[row])]
        if promo is None:
            promo = campaign.promo_code if campaign is not None else ""
        if customer_id is None or template_id is None:
            raise AdminError(400, "customer_id and template_id are required for event 11 of this campaign")
        payload.update({"customerID": customer_id, "templateID": template_id, "promoCode": promo})
    return payload, event, channel_id


async def _fire(s: _Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    payload, event, channel_id = _webhook_body(s, body)
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise AdminError(400, "headers must be an object of string values")
    url = body.get("url")
    if url is not None:
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
            raise AdminError(400, "url must be an http(s) URL")
        urls = [url]
    else:
        with s.lock:
            urls = [
                li["ListenerURL"]
                for li in s.listeners
                if li["EventTypeID"] == event and (li["ChannelID"] is None or li["ChannelID"] == channel_id)
            ]
    send_headers = {"Content-Type": "application/json", **headers}
    content = _dumps(payload)

    async def deliver(client: httpx.AsyncClient, target: str) -> dict[str, Any]:
        try:
            response = await client.post(target, content=content, headers=send_headers)
            return {"url": target, "status": response.status_code, "error": None}
        except httpx.HTTPError as exc:
            return {"url": target, "status": None, "error": f"{type(exc).__name__}: {exc}"}

    async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
        deliveries = await asyncio.gather(*(deliver(client, target) for target in urls))
    return {"body": payload, "deliveries": list(deliveries)}


def _add_admin_routes(app: FastAPI, s: _Sandbox) -> None:
    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> Response:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/_sandbox/health")
    async def health() -> Response:
        return _json({"status": "ok", "service": "optimove"})

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        s.reset()
        return _json({"status": "ok"})

    @app.get("/_sandbox/requests")
    async def requests_seen() -> Response:
        with s.lock:
            return _json({"counts": {k: dict(v) for k, v in s.counts.items()}, "total": s.total})

    @app.get("/_sandbox/config")
    async def get_config() -> Response:
        return _json(s.config_view())

    @app.post("/_sandbox/config")
    async def set_config(request: Request) -> Response:
        s.update_config(await _admin_body(request, set(DEFAULT_CONFIG)))
        return _json(s.config_view())

    @app.post("/_sandbox/tokens/expire")
    async def expire_tokens() -> Response:
        with s.lock:
            for token in s.tokens.values():
                token.expired = True
            return _json({"expired": len(s.tokens)})

    @app.get("/_sandbox/attributes")
    async def attributes() -> Response:
        return _json(
            [{"name": spec.name, "type": spec.type, "description": spec.description} for spec in s.dataset.specs]
        )

    @app.post("/_sandbox/customers/change")
    async def change_customers(request: Request) -> Response:
        body = await _admin_body(request, {"count", "empty", "attributes", "date", "changes"})
        return _json(_change_customers(s, body))

    @app.get("/_sandbox/customers/{customer_id}")
    async def customer(customer_id: str) -> Response:
        index = s.dataset.customer_index(customer_id)
        if index is None:
            raise AdminError(404, f"unknown customer {customer_id!r}")
        return _json({"customer_id": customer_id, "attributes": s.dataset.customer(index)})

    @app.post("/_sandbox/export")
    async def export(request: Request) -> Response:
        body = await _admin_body(request, {"path"})
        path = body.get("path")
        if not isinstance(path, str) or not path.startswith("/") or not path.lower().endswith((".csv", ".parquet")):
            raise AdminError(400, "path must be an absolute path ending in .csv or .parquet")
        overrides = s.dataset.snapshot_overrides()
        try:
            rows = await asyncio.to_thread(s.dataset.export, path, overrides)
        except OSError as exc:
            raise AdminError(400, f"cannot write {path}: {exc.strerror or exc}") from None
        return _json({"rows": rows, "path": path})

    @app.post("/_sandbox/campaigns")
    async def create_campaign(request: Request) -> Response:
        allowed = {
            "campaign_id",
            "channel_id",
            "recipients",
            "control_fraction",
            "templates",
            "scheduled_time",
            "duplicates",
            "missing_data_fraction",
            "date",
        }
        return _json(_create_campaign(s, await _admin_body(request, allowed, required=False)))

    @app.get("/_sandbox/campaigns")
    async def list_campaigns() -> Response:
        with s.dataset.lock:
            items = [c.summary() for _, c in sorted(s.dataset.campaigns.items())]
        return _json({"total": len(items), "campaigns": items})

    @app.get("/_sandbox/campaigns/{campaign_id}")
    async def get_campaign(campaign_id: int) -> Response:
        campaign = s.dataset.campaigns.get(campaign_id)
        if campaign is None:
            raise AdminError(404, f"unknown campaign {campaign_id}")
        return _json(campaign.summary())

    @app.post("/_sandbox/campaigns/{campaign_id}/cancel")
    async def cancel_campaign(campaign_id: int, request: Request) -> Response:
        body = await _admin_body(request, {"customers"}, required=False)
        customers = body.get("customers")
        if customers is not None:
            customers = _as_int(customers, "customers")
        try:
            campaign = s.dataset.cancel_campaign(campaign_id, customers, time.monotonic(), _now_text())
        except KeyError:
            raise AdminError(404, f"unknown campaign {campaign_id}") from None
        except ValueError as exc:
            raise AdminError(400, str(exc)) from None
        return _json(
            {
                "campaign_id": campaign_id,
                "cancelled": int(campaign.cancelled_rows.shape[0]) if campaign.cancelled_rows is not None else 0,
                "cancelled_at": campaign.cancelled_wall,
            }
        )

    @app.post("/_sandbox/webhooks/fire")
    async def fire(request: Request) -> Response:
        allowed = {
            "event_type_id",
            "campaign_id",
            "channel_id",
            "url",
            "headers",
            "style",
            "customer_id",
            "template_id",
            "promo_code",
            "time_stamp",
        }
        return _json(await _fire(s, await _admin_body(request, allowed)))

    @app.get("/_sandbox/listeners")
    async def listeners() -> Response:
        with s.lock:
            items = [_listener_view(li, False) for li in s.listeners]
        return _json({"total": len(items), "listeners": items})

    @app.get("/_sandbox/metrics")
    async def metrics() -> Response:
        with s.lock:
            rows = [dict(r) for r in s.metrics]
        # Optimove keeps aggregate counts: each row received adds its MetricValue to its key's aggregate.
        sums: dict[tuple[int, int, int, int], float] = {}
        for r in rows:
            key = (r["CampaignID"], r["ChannelID"], r["TemplateID"], r["MetricID"])
            sums[key] = sums.get(key, 0) + r["MetricValue"]
        aggregates = [
            {"CampaignID": c, "ChannelID": ch, "TemplateID": t, "MetricID": m, "MetricValue": v}
            for (c, ch, t, m), v in sorted(sums.items())
        ]
        return _json({"total": len(rows), "rows": rows, "aggregates": aggregates})


# --------------------------------------------------------------------------------------------- factory
def create_optimove_app(
    dataset: Dataset, *, api_key: str, username: str, password: str, faults: FaultInjector, seed: int
) -> FastAPI:
    """Build the Optimove sandbox app over ``dataset`` (state in memory; ``/_sandbox/reset`` restores it)."""
    sandbox = _Sandbox(dataset, api_key=api_key, username=username, password=password, faults=faults, seed=seed)
    app = FaultInjectingApp(title="Optimove sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = sandbox
    # Outermost: faults (injected ones are counted through ``recorder``); inner: counts what reaches the app.
    app.inject_faults(faults, "optimove", recorder=sandbox.record)
    app.add_middleware(_CountingMiddleware, sandbox=sandbox)
    _add_admin_routes(app, sandbox)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def api(request: Request) -> Response:
        return await _dispatch(sandbox, request)

    return app
