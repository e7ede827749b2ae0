"""Optimove API client (pure: requests only, no Airflow imports).

Two auth modes, exactly one per client:

- ``api_key``: the ``X-API-KEY`` header on every request (the current method).
- ``username`` + ``password``: the legacy ``general/login`` flow. The token (a quoted JSON string) goes
  in ``Authorization-Token``; it expires 20 minutes after its last use, so the client logs in again
  after that much idle time, and once more when a call answers ``403 Authorization-Token Expired``.
  Logins are paced to one per second (the server answers 429 otherwise) and are not counted in the
  50 requests / 10 s window.

Every other request goes through a process-wide :class:`~optimove_netmera.http.RateLimiter` shared by
all clients of the same base URL and credentials (default 50 calls per 10 s).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

import requests

from optimove_netmera.http import (
    BaseHttpClient,
    RateLimiter,
    Redactor,
    ResponseFormatError,
    RetryPolicy,
    Timeout,
    body_text,
    chunked,
    get_rate_limiter,
)
from optimove_netmera.optimove.models import (
    AttributeChange,
    AttributeInfo,
    CampaignDetails,
    CampaignMetric,
    CanceledCustomer,
    ChangerRow,
    EventListener,
    ExecutionChannel,
    ExecutionDetail,
    Template,
    ci_get,
    decode_changers_page,
    parse_date,
)

__all__ = ["MAX_METRICS_PER_CALL", "MAX_PAGE_SIZE", "OptimoveClient"]

MAX_PAGE_SIZE = 10_000
MAX_METRICS_PER_CALL = 100
TOKEN_EXPIRED_TEXT = "authorization-token expired"
_FORBIDDEN_DELIMITERS = set(":/?&#%$+=")


def _fingerprint(*parts: str | None) -> str:
    digest = hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()
    return digest[:12]


def _date_param(value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return date.fromisoformat(str(value)).isoformat()


class OptimoveClient(BaseHttpClient):
    """Client for ``{base_url}/current/{category}/{Function}``.

    ``rate_limit`` is ``(calls, period_seconds)``, a :class:`RateLimiter`, or None (no pacing).
    ``page_size`` (≤ 10,000, Optimove's page cap) is the ``$top`` used by :meth:`iter_pages`.
    Attribute lists are requested with ``attribute_delimiter`` (``;``) as both the list separator
    and the explicit ``CustomerAttributesDelimiter``.
    """

    service = "optimove"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: Timeout = (5, 60),
        rate_limit: tuple[int, float] | RateLimiter | None = (50, 10.0),
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        page_size: int = MAX_PAGE_SIZE,
        pool_size: int = 8,
        token_ttl: float = 1200.0,
        login_interval: float = 1.0,
        attribute_delimiter: str = ";",
    ) -> None:
        if api_key and (username or password):
            raise ValueError("OptimoveClient: give either api_key or username+password, not both")
        if not api_key and not (username and password):
            raise ValueError("OptimoveClient: give api_key, or both username and password")
        if int(page_size) != page_size or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
        if len(attribute_delimiter) != 1 or attribute_delimiter in _FORBIDDEN_DELIMITERS:
            raise ValueError("attribute_delimiter must be one character, not one of : / ? & # % $ + =")
        base = base_url.rstrip("/")
        if base.lower().endswith("/current"):
            base = base[: -len("/current")]
        account = _fingerprint(api_key) if api_key else _fingerprint(username)
        if isinstance(rate_limit, RateLimiter) or rate_limit is None:
            limiter = rate_limit
        else:
            calls, period = rate_limit
            limiter = get_rate_limiter(f"optimove:{base.lower()}:{account}", calls, period)
        super().__init__(
            base,
            timeout=timeout,
            retry=retry,
            limiter=limiter,
            pool_size=pool_size,
            redactor=Redactor([api_key, password]),
            headers={"X-API-KEY": api_key} if api_key else None,
        )
        self.page_size = int(page_size)
        self.auth_mode = "api_key" if api_key else "login"
        self.attribute_delimiter = attribute_delimiter
        self.token_ttl = float(token_ttl)
        self._username = username
        self._password = password
        self._token: str | None = None
        self._token_used_at = 0.0
        self._token_lock = threading.Lock()
        self._login_limiter = (
            get_rate_limiter(f"optimove-login:{base.lower()}:{account}", 1, login_interval, margin=0.05)
            if self.auth_mode == "login"
            else None
        )

    def __repr__(self) -> str:
        return f"OptimoveClient({self.base_url!r}, auth={self.auth_mode})"

    # --- auth --------------------------------------------------------------------------------------
    def login(self) -> None:
        """Log in (legacy mode) and keep the token. Raises :class:`AuthError` on bad credentials."""
        if self.auth_mode != "login":
            raise ValueError("login() is only used with username/password authentication")
        with self._token_lock:
            self._login_locked()

    def _login_locked(self) -> None:
        path = "/current/general/login"
        response = self._request(
            "POST",
            path,
            json_body={"Username": self._username, "Password": self._password},
            authenticated=False,
            limiter=self._login_limiter,
        )
        token = body_text(response)
        if not token:
            raise ResponseFormatError(
                "login returned no token", service=self.service, method="POST", path=path, redactor=self._redact
            )
        self._redact.add(token)
        self._token = token
        self._token_used_at = time.monotonic()

    def _auth_headers(self) -> dict[str, str]:
        if self.auth_mode != "login":
            return {}
        with self._token_lock:
            idle = time.monotonic() - self._token_used_at
            if self._token is None or idle >= self.token_ttl:
                self._login_locked()
            self._token_used_at = time.monotonic()
            assert self._token is not None
            return {"Authorization-Token": self._token}

    def _handle_auth_failure(self, response: requests.Response, sent_headers: Mapping[str, str]) -> bool:
        if self.auth_mode != "login" or response.status_code != 403:
            return False
        if TOKEN_EXPIRED_TEXT not in (body_text(response) or "").lower():
            return False
        stale = sent_headers.get("Authorization-Token")
        with self._token_lock:
            if self._token == stale:  # nobody refreshed it in the meantime
                self._token = None
                self._login_locked()
        return True

    # --- error mapping -----------------------------------------------------------------------------
    def _parse_error(self, response: requests.Response) -> tuple[Any, str | None]:
        try:
            body = response.json()
        except ValueError:
            return None, body_text(response)
        if isinstance(body, Mapping):
            code = ci_get(body, "code", "errorcode", "error")
            message = ci_get(body, "message", "error_description", "detail", "title")
            if message is None and code is not None and not isinstance(code, int):
                message, code = str(code), None
            return code, (str(message) if message is not None else None)
        if isinstance(body, str):
            return None, body
        return None, body_text(response)

    # --- generic calls -----------------------------------------------------------------------------
    @staticmethod
    def path(category: str, function: str) -> str:
        """``/current/{category}/{Function}``."""
        return f"/current/{category.strip('/')}/{function.strip('/')}"

    def get(self, category: str, function: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a function; returns the decoded JSON (None for an empty body)."""
        path = self.path(category, function)
        response = self._request("GET", path, params=dict(params or {}))
        return self._decode(response, "GET", path)

    def post(
        self,
        category: str,
        function: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        *,
        idempotent: bool = True,
    ) -> Any:
        """POST a JSON body to a function; returns the decoded JSON (None for an empty body).

        ``idempotent=False``: a 5xx or a timeout (the server may have processed it) is not retried and raises with
        ``ambiguous=True``.
        """
        path = self.path(category, function)
        response = self._request("POST", path, params=dict(params or {}) or None, json_body=json, idempotent=idempotent)
        return self._decode(response, "POST", path)

    def iter_pages(
        self,
        category: str,
        function: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
        decode: Callable[[bytes], list[Any]] | None = None,
    ) -> Iterator[list[Any]]:
        """Yield non-empty pages of rows using ``$top``/``$skip`` (``decode``: a page decoder other than JSON's).

        Stops after an empty page or a page shorter than ``$top`` (or longer: a server that ignores
        paging sent everything at once). ``$top`` never exceeds the page
        size (≤ 10,000): the server silently clamps larger values, which would defeat the stop rule.
        """
        top = self.page_size if page_size is None else int(page_size)
        if not 1 <= top <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        path = self.path(category, function)
        skip = 0
        while True:
            query = dict(params or {})
            query["$top"] = top
            query["$skip"] = skip
            body = self._decode(self._request("GET", path, params=query), "GET", path, decode)
            if body is None:
                return
            if not isinstance(body, list):
                raise ResponseFormatError(
                    f"expected a JSON array page, got {type(body).__name__}",
                    service=self.service,
                    method="GET",
                    path=path,
                    redactor=self._redact,
                )
            if not body:
                return
            yield body
            if len(body) != top:
                # shorter: the last page; longer: the server ignored $top and sent everything
                return
            skip += len(body)

    # --- typed wrappers ----------------------------------------------------------------------------
    def _attribute_params(self, attributes: Sequence[str]) -> dict[str, str]:
        if isinstance(attributes, str):
            raise TypeError("attributes must be a sequence of names, not a string")
        names = list(attributes)
        for name in names:
            if not name or self.attribute_delimiter in name:
                raise ValueError(f"invalid attribute name {name!r}")
        if not names:
            return {}
        return {
            "CustomerAttributes": self.attribute_delimiter.join(names),
            "CustomerAttributesDelimiter": self.attribute_delimiter,
        }

    def _format_error(self, path: str, exc: Exception) -> ResponseFormatError:
        return ResponseFormatError(str(exc), service=self.service, method="GET", path=path, redactor=self._redact)

    def get_last_data_update(self) -> date:
        """``general/GetLastDataUpdate``: the date of the latest data Optimove has processed."""
        path = self.path("general", "GetLastDataUpdate")
        body = self.get("general", "GetLastDataUpdate")
        value = ci_get(body, "Date", "LastDataUpdate") if isinstance(body, Mapping) else body
        try:
            parsed = parse_date(value)
        except ValueError as exc:
            raise self._format_error(path, exc) from None
        if parsed is None:
            raise self._format_error(path, ValueError("no Date in the response"))
        return parsed

    def get_customer_attribute_list(self) -> list[AttributeInfo]:
        """``model/GetCustomerAttributeList``: the attributes (RealFieldName, Description)."""
        path = self.path("model", "GetCustomerAttributeList")
        body = self.get("model", "GetCustomerAttributeList") or []
        try:
            return [AttributeInfo.from_row(row) for row in _rows(body)]
        except ValueError as exc:
            raise self._format_error(path, exc) from None

    def iter_customer_attribute_changers(
        self,
        changed_attribute: str,
        start_date: date | datetime | str,
        end_date: date | datetime | str,
        attributes: Sequence[str] = (),
        *,
        page_size: int | None = None,
        skip_customers: Container[str] = (),
    ) -> Iterator[list[AttributeChange]]:
        """``customers/GetCustomerAttributeChangers``: pages of customers whose attribute changed.

        One changed attribute per call (the API's rule); ``attributes`` are the values to return
        for each customer, zipped into :attr:`AttributeChange.attributes`. Rows of customers in
        ``skip_customers`` (a live container: it may grow while paging) are dropped unparsed.
        """
        names = list(attributes)
        params: dict[str, Any] = {
            "ChangedCustomerAttribute": changed_attribute,
            "StartDate": _date_param(start_date),
            "EndDate": _date_param(end_date),
            **self._attribute_params(names),
        }
        path = self.path("customers", "GetCustomerAttributeChangers")
        pages = self.iter_pages(
            "customers", "GetCustomerAttributeChangers", params, page_size=page_size, decode=decode_changers_page
        )
        for page in pages:
            try:
                args = (changed_attribute, names, self.attribute_delimiter, skip_customers)
                if isinstance(page[0], ChangerRow):
                    yield AttributeChange.from_typed_rows(page, *args)
                else:
                    yield AttributeChange.from_rows(_rows(page), *args)
            except ValueError as exc:
                raise self._format_error(path, exc) from None

    def iter_campaign_recipients(
        self,
        campaign_id: int,
        channel_id: int,
        attributes: Sequence[str] = (),
        *,
        page_size: int | None = None,
    ) -> Iterator[list[ExecutionDetail]]:
        """``customers/GetCustomerExecutionDetailsByCampaign``: pages of recipients of a campaign on a channel.

        Control-group rows (ActionID 1) are included; see :attr:`ExecutionDetail.is_control`.
        """
        names = list(attributes)
        params: dict[str, Any] = {
            "CampaignID": int(campaign_id),
            "ChannelID": int(channel_id),
            **self._attribute_params(names),
        }
        path = self.path("customers", "GetCustomerExecutionDetailsByCampaign")
        for page in self.iter_pages("customers", "GetCustomerExecutionDetailsByCampaign", params, page_size=page_size):
            try:
                yield ExecutionDetail.from_rows(_rows(page), names, self.attribute_delimiter)
            except ValueError as exc:
                raise self._format_error(path, exc) from None

    def get_canceled_campaign_customers(self, campaign_id: int) -> list[CanceledCustomer]:
        """``customers/GetCanceledCampaignCustomers``, all pages (available for 2 hours after the cancellation)."""
        path = self.path("customers", "GetCanceledCampaignCustomers")
        out: list[CanceledCustomer] = []
        for page in self.iter_pages("customers", "GetCanceledCampaignCustomers", {"CampaignID": int(campaign_id)}):
            try:
                out.extend(CanceledCustomer.from_row(row) for row in _rows(page))
            except ValueError as exc:
                raise self._format_error(path, exc) from None
        return out

    def get_campaign_details(self, campaign_id: int) -> CampaignDetails:
        """``actions/GetCampaignDetails``."""
        path = self.path("actions", "GetCampaignDetails")
        body = self.get("actions", "GetCampaignDetails", {"CampaignID": int(campaign_id)})
        if isinstance(body, list) and len(body) == 1:
            body = body[0]
        if not isinstance(body, Mapping):
            raise self._format_error(path, ValueError("expected a JSON object"))
        return CampaignDetails.from_row(body, int(campaign_id))

    def get_executed_campaigns_by_channel(self, channel_id: int, day: date | datetime | str) -> list[int]:
        """``actions/GetExecutedCampaignsByChannel``: IDs of campaigns executed on ``day``."""
        path = self.path("actions", "GetExecutedCampaignsByChannel")
        body = self.get(
            "actions", "GetExecutedCampaignsByChannel", {"ChannelID": int(channel_id), "Date": _date_param(day)}
        )
        out: list[int] = []
        for item in body or []:
            value = ci_get(item, "CampaignID") if isinstance(item, Mapping) else item
            try:
                out.append(int(value))
            except (TypeError, ValueError):
                raise self._format_error(path, ValueError("campaign row without a CampaignID")) from None
        return out

    def get_execution_channels(self) -> list[ExecutionChannel]:
        """``actions/GetExecutionChannels``."""
        path = self.path("actions", "GetExecutionChannels")
        try:
            return [ExecutionChannel.from_row(r) for r in _rows(self.get("actions", "GetExecutionChannels"))]
        except ValueError as exc:
            raise self._format_error(path, exc) from None

    def get_channel_templates(self, channel_id: int) -> list[Template]:
        """``integrations/GetChannelTemplates``."""
        path = self.path("integrations", "GetChannelTemplates")
        body = self.get("integrations", "GetChannelTemplates", {"ChannelID": int(channel_id)})
        try:
            return [Template.from_row(r) for r in _rows(body)]
        except ValueError as exc:
            raise self._format_error(path, exc) from None

    def add_channel_templates(self, channel_id: int, templates: Mapping[int, str]) -> int:
        """``integrations/AddChannelTemplates?ChannelID=N`` in chunks of ≤ 100 (integer IDs, non-empty names)."""
        items = []
        for template_id, name in templates.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"template {template_id}: TemplateName must be a non-empty string")
            items.append({"TemplateID": int(template_id), "TemplateName": name.strip()})
        for chunk in chunked(items, MAX_METRICS_PER_CALL):
            self.post("integrations", "AddChannelTemplates", chunk, params={"ChannelID": int(channel_id)})
        return len(items)

    def delete_channel_templates(self, channel_id: int, template_ids: Iterable[int]) -> int:
        """``integrations/DeleteChannelTemplates`` in chunks of ≤ 100."""
        items = [{"ChannelID": int(channel_id), "TemplateID": int(t)} for t in template_ids]
        for chunk in chunked(items, MAX_METRICS_PER_CALL):
            self.post("integrations", "DeleteChannelTemplates", chunk)
        return len(items)

    def update_campaign_metrics(
        self,
        rows: Iterable[CampaignMetric | Mapping[str, Any]],
        *,
        on_accepted: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> int:
        """``integrations/UpdateCampaignMetrics`` in chunks of ≤ 100 rows; returns the rows sent.

        Optimove adds what it receives to its aggregates, so a call is not repeated on a 5xx or timeout (it may
        have been counted): that raises with ``ambiguous=True``. ``on_accepted`` is called with each chunk once
        Optimove has accepted it (before the next chunk goes out).
        """
        payload = [row.to_json() if isinstance(row, CampaignMetric) else dict(row) for row in rows]
        for chunk in chunked(payload, MAX_METRICS_PER_CALL):
            self.post("integrations", "UpdateCampaignMetrics", chunk, idempotent=False)
            if on_accepted is not None:
                on_accepted(chunk)
        return len(payload)

    def register_event_listener(self, event_type_id: int, listener_url: str, channel_id: int | None = None) -> None:
        """``general/RegisterEventListener`` for one event type (and channel); ``ListenerURL`` URL-encoded as in
        the documentation's fixture."""
        if not listener_url.startswith(("http://", "https://")):
            raise ValueError("listener_url must be an http(s) URL")
        body: dict[str, Any] = {"EventTypeID": int(event_type_id), "ListenerURL": quote(listener_url, safe="")}
        if channel_id is not None:
            body["ChannelID"] = int(channel_id)
        self.post("general", "RegisterEventListener", body)

    def unregister_event_listener(self, event_type_id: int, channel_id: int | None = None) -> None:
        """``general/UnregisterEventListener`` for one event type (and channel)."""
        body: dict[str, Any] = {"EventTypeID": int(event_type_id)}
        if channel_id is not None:
            body["ChannelID"] = int(channel_id)
        self.post("general", "UnregisterEventListener", body)

    def get_registered_event_listeners(self) -> list[EventListener]:
        """``general/GetRegisteredEventListeners`` (URLs decoded)."""
        path = self.path("general", "GetRegisteredEventListeners")
        try:
            return [EventListener.from_row(r) for r in _rows(self.get("general", "GetRegisteredEventListeners"))]
        except ValueError as exc:
            raise self._format_error(path, exc) from None


def _rows(body: Any) -> list[Mapping[str, Any]]:
    if body is None:
        return []
    if not isinstance(body, list) or not all(isinstance(r, Mapping) for r in body):
        raise ValueError("expected a JSON array of objects")
    return body
