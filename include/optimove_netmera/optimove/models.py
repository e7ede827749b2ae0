"""Typed results of the Optimove API, parsed defensively from its loosely specified JSON.

Row keys are read case-insensitively (``ChannelId`` vs ``ChannelID``); the string ``"NULL"`` means no
value; customer attributes arrive either as a ``CustomerAttributes`` array or as a delimited
``CustomerAttribute(s)`` string and are zipped to the attribute names that were requested.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import unquote

import msgspec

__all__ = [
    "AttributeChange",
    "AttributeInfo",
    "AttributeValue",
    "CampaignDetails",
    "CampaignMetric",
    "CanceledCustomer",
    "ChangerRow",
    "EventListener",
    "ExecutionChannel",
    "ExecutionDetail",
    "KeyPlan",
    "Template",
    "ci_get",
    "decode_changers_page",
    "parse_attributes",
    "parse_date",
    "parse_timestamp",
]

AttributeValue = str | int | float | bool | None

NULL_STRING = "NULL"


def _lower_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in row.items()}


class KeyPlan:
    """Case-insensitive field lookup planned once per key set: the rows of a page share their keys.

    ``fields`` maps a field name to its accepted lower-case spellings in order of preference; calling
    the plan with a row returns ``{field: actual key or None}`` (recomputed only when the key set changes).
    """

    __slots__ = ("_fields", "_keys", "_map")

    def __init__(self, fields: Mapping[str, tuple[str, ...]]) -> None:
        self._fields = fields
        self._keys: frozenset[str] | None = None
        self._map: dict[str, str | None] = {}

    def __call__(self, row: Mapping[str, Any]) -> dict[str, str | None]:
        keys = row.keys()
        if self._keys is None or keys != self._keys:
            lowered = {str(k).lower(): k for k in keys}
            self._map = {
                name: next((lowered[c] for c in spellings if c in lowered), None)
                for name, spellings in self._fields.items()
            }
            self._keys = frozenset(keys)
        return self._map


def ci_get(row: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    """First present value among ``names``, matching keys case-insensitively."""
    for name in names:  # fast path: the documented spelling
        if name in row:
            return row[name]
    lowered = _lower_keys(row)
    for name in names:
        key = name.lower()
        if key in lowered:
            return lowered[key]
    return default


def null_to_none(value: Any) -> Any:
    """``"NULL"`` (Optimove's spelling of no value) becomes None; everything else is kept."""
    if isinstance(value, str) and value == NULL_STRING:
        return None
    return value


def _as_int(value: Any) -> int | None:
    if type(value) is int:
        return value
    value = null_to_none(value)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _as_str(value: Any) -> str | None:
    if value is None or value == NULL_STRING:
        return None
    return value if type(value) is str else str(value)


def _as_bool(value: Any) -> bool | None:
    value = null_to_none(value)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y"):
        return True
    if text in ("false", "0", "no", "n"):
        return False
    return None


def parse_date(value: Any) -> date | None:
    """``YYYY-MM-DD`` (optionally followed by a time) to a date; None when absent."""
    value = null_to_none(value)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value).strip()[:10])


_TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def parse_timestamp(value: Any) -> datetime | None:
    """Optimove's naive ``YYYY-MM-DD HH:MM[:SS]`` timestamps (also ISO ``T``) to a datetime; None if absent."""
    value = null_to_none(value)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return _parse_timestamp_text(str(value))


@lru_cache(maxsize=4096)
def _parse_timestamp_text(value: str) -> datetime:
    # recipient pages repeat a handful of scheduled times: parse each distinct string once
    text = value.strip()
    if "." in text:
        text = text.split(".", 1)[0]
    for fmt in _TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return datetime.fromisoformat(text)


def parse_attributes(row: Mapping[str, Any], names: Sequence[str], delimiter: str) -> dict[str, AttributeValue] | None:
    """Zip a row's customer attributes to ``names``.

    Accepts ``CustomerAttributes`` or ``CustomerAttribute`` holding a JSON array, or a string joined
    by ``delimiter``. Returns None when the row carries no attributes at all, and raises ValueError
    when the number of values does not match the number of names.
    """
    raw = ci_get(row, "CustomerAttributes", "CustomerAttribute")
    return _zip_attributes(raw, names, delimiter)


def _zip_attributes(raw: Any, names: Sequence[str], delimiter: str) -> dict[str, AttributeValue] | None:
    if raw is None:
        return None if names else {}
    if isinstance(raw, str):
        values: list[Any] = raw.split(delimiter) if names else []
        if len(names) == 1:
            values = [raw]  # a single attribute is never split: its value may contain the delimiter
    elif isinstance(raw, list | tuple):
        values = list(raw)
    elif isinstance(raw, Mapping):
        lowered = _lower_keys(raw)
        return {name: null_to_none(lowered.get(name.lower())) for name in names}
    else:
        raise ValueError(f"unexpected CustomerAttributes type {type(raw).__name__}")
    if len(values) != len(names):
        raise ValueError(f"expected {len(names)} attribute values, got {len(values)}")
    return {name: (None if value == NULL_STRING else value) for name, value in zip(names, values)}  # noqa: B905


@dataclass(frozen=True)
class AttributeInfo:
    """One customer attribute from ``model/GetCustomerAttributeList``."""

    name: str
    description: str | None = None
    alias: str | None = None
    field_type: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AttributeInfo:
        """Build from a response row."""
        name = _as_str(ci_get(row, "RealFieldName", "Name", "AttributeName"))
        if not name:
            raise ValueError("attribute row without RealFieldName")
        return cls(
            name=name,
            description=_as_str(ci_get(row, "Description")),
            alias=_as_str(ci_get(row, "Alias")),
            field_type=_as_str(ci_get(row, "FieldType", "Type")),
        )


class ChangerRow(msgspec.Struct):
    """A typed changers row in Optimove's documented spelling; its attribute values stay raw JSON until needed."""

    CustomerID: str | int | None = None
    InitialCustomerAttribute: Any = None
    FinalCustomerAttribute: Any = None
    CustomerAttributes: msgspec.Raw = msgspec.Raw()  # empty: the key is absent (a JSON null is b"null")


_CHANGERS_PAGE = msgspec.json.Decoder(list[ChangerRow])


def decode_changers_page(content: bytes) -> list[Any]:
    """Decode a ``GetCustomerAttributeChangers`` page: typed rows, or plain dicts for any other spelling.

    The typed rows leave each customer's attribute values undecoded (most of a page's bytes), so a row that is
    skipped costs almost nothing. A page whose rows use other key spellings (or the singular
    ``CustomerAttribute``), or that is not an array of objects, is decoded generically instead, for
    :meth:`AttributeChange.from_rows` to read (or reject) as before; typed rows go to
    :meth:`AttributeChange.from_typed_rows`.
    """
    try:
        rows = _CHANGERS_PAGE.decode(content)
    except msgspec.ValidationError:
        return msgspec.json.decode(content)
    if any(row.CustomerID is None or not row.CustomerAttributes for row in rows):
        return msgspec.json.decode(content)
    return rows


@dataclass(frozen=True)
class AttributeChange:
    """One row of ``customers/GetCustomerAttributeChangers``."""

    customer_id: str
    changed_attribute: str
    initial_value: AttributeValue
    final_value: AttributeValue
    attributes: dict[str, AttributeValue] = field(default_factory=dict)

    FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "customer_id": ("customerid", "clientid", "client_id"),
        "initial": ("initialcustomerattribute", "initialvalue"),
        "final": ("finalcustomerattribute", "finalvalue"),
        "attributes": ("customerattributes", "customerattribute"),
    }

    @classmethod
    def from_row(
        cls,
        row: Mapping[str, Any],
        changed_attribute: str,
        names: Sequence[str],
        delimiter: str,
        plan: KeyPlan | None = None,
    ) -> AttributeChange:
        """Build from a response row, zipping attributes to ``names``."""
        k = (plan or KeyPlan(cls.FIELDS))(row)
        get = row.get
        customer_id = _as_str(get(k["customer_id"]))  # type: ignore[arg-type]
        if not customer_id:
            raise ValueError("row without CustomerID")
        return cls(
            customer_id=customer_id,
            changed_attribute=changed_attribute,
            initial_value=null_to_none(get(k["initial"])),  # type: ignore[arg-type]
            final_value=null_to_none(get(k["final"])),  # type: ignore[arg-type]
            attributes=_zip_attributes(get(k["attributes"]), names, delimiter) or {},  # type: ignore[arg-type]
        )

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        changed_attribute: str,
        names: Sequence[str],
        delimiter: str,
        skip: Container[str] = (),
    ) -> list[AttributeChange]:
        """Build a page of rows (one key plan for the page); rows of customers in ``skip`` are left unparsed."""
        plan = KeyPlan(cls.FIELDS)
        if not skip:
            return [cls.from_row(row, changed_attribute, names, delimiter, plan) for row in rows]
        out = []
        for row in rows:
            customer = row.get(plan(row)["customer_id"])  # type: ignore[arg-type]
            if customer is None or str(customer) not in skip:
                out.append(cls.from_row(row, changed_attribute, names, delimiter, plan))
        return out

    @classmethod
    def from_typed_rows(
        cls, rows: list[ChangerRow], changed_attribute: str, names: Sequence[str], delimiter: str, skip: Container[str]
    ) -> list[AttributeChange]:
        """:meth:`from_rows` for the typed rows of :func:`decode_changers_page` (attributes decoded per kept row)."""
        decode = msgspec.json.decode
        out = []
        for row in rows:
            customer_id = _as_str(row.CustomerID)
            if not customer_id:
                raise ValueError("row without CustomerID")
            if customer_id in skip:
                continue
            out.append(
                cls(
                    customer_id=customer_id,
                    changed_attribute=changed_attribute,
                    initial_value=null_to_none(row.InitialCustomerAttribute),
                    final_value=null_to_none(row.FinalCustomerAttribute),
                    attributes=_zip_attributes(decode(row.CustomerAttributes), names, delimiter) or {},
                )
            )
        return out


def _promo_code(value: Any) -> str | None:
    value = null_to_none(value)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        parts = [str(v) for v in value if null_to_none(v) not in (None, "")]
        return ",".join(parts) or None
    return str(value)


@dataclass(frozen=True)
class ExecutionDetail:
    """One recipient row of ``customers/GetCustomerExecutionDetailsByCampaign``.

    ``action_id == 1`` marks a control-group member (:attr:`is_control`), who must not be sent anything.
    ``scheduled_time`` is Optimove's naive timestamp (tenant time zone), read from ``ScheduleTime``
    or ``ScheduledTime``.
    """

    customer_id: str
    action_id: int | None
    channel_id: int | None
    template_id: int | None
    template_name: str | None
    scheduled_time: datetime | None
    promo_code: str | None
    recipient_group_id: int | None = None
    attributes: dict[str, AttributeValue] | None = None

    CONTROL_GROUP_ACTION_ID = 1

    @property
    def is_control(self) -> bool:
        """True for control-group rows (ActionID 1)."""
        return self.action_id == self.CONTROL_GROUP_ACTION_ID

    FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "customer_id": ("customerid", "clientid", "client_id"),
        "action_id": ("actionid",),
        "channel_id": ("channelid",),
        "template_id": ("templateid",),
        "template_name": ("templatename",),
        "scheduled_time": ("scheduletime", "scheduledtime"),
        "promo_code": ("promocode", "promocodes"),
        "recipient_group_id": ("recipientgroupid",),
        "attributes": ("customerattributes", "customerattribute"),
    }

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], names: Sequence[str], delimiter: str, plan: KeyPlan | None = None
    ) -> ExecutionDetail:
        """Build from a response row, zipping attributes to ``names``."""
        k = (plan or KeyPlan(cls.FIELDS))(row)
        get = row.get
        customer_id = _as_str(get(k["customer_id"]))  # type: ignore[arg-type]
        if not customer_id:
            raise ValueError("row without CustomerID")
        # the frozen dataclass's __init__ sets each field through object.__setattr__ (5x slower): staging builds
        # a million of these, so the instance's __dict__ is filled at once (every field, as __init__ would)
        detail = object.__new__(cls)
        detail.__dict__.update(
            customer_id=customer_id,
            action_id=_as_int(get(k["action_id"])),  # type: ignore[arg-type]
            channel_id=_as_int(get(k["channel_id"])),  # type: ignore[arg-type]
            template_id=_as_int(get(k["template_id"])),  # type: ignore[arg-type]
            template_name=_as_str(get(k["template_name"])),  # type: ignore[arg-type]
            scheduled_time=parse_timestamp(get(k["scheduled_time"])),  # type: ignore[arg-type]
            promo_code=_promo_code(get(k["promo_code"])),  # type: ignore[arg-type]
            recipient_group_id=_as_int(get(k["recipient_group_id"])),  # type: ignore[arg-type]
            attributes=_zip_attributes(get(k["attributes"]), names, delimiter),  # type: ignore[arg-type]
        )
        return detail

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], names: Sequence[str], delimiter: str
    ) -> list[ExecutionDetail]:
        """Build a page of rows (one key plan for the page)."""
        plan = KeyPlan(cls.FIELDS)
        return [cls.from_row(row, names, delimiter, plan) for row in rows]


@dataclass(frozen=True)
class CanceledCustomer:
    """One row of ``customers/GetCanceledCampaignCustomers``."""

    customer_id: str
    action_id: int | None
    promo_code: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CanceledCustomer:
        """Build from a response row."""
        customer_id = _as_str(ci_get(row, "CustomerID", "ClientID"))
        if not customer_id:
            raise ValueError("row without CustomerID")
        return cls(
            customer_id=customer_id,
            action_id=_as_int(ci_get(row, "ActionID")),
            promo_code=_promo_code(ci_get(row, "PromoCode", "PromoCodes")),
        )


def _channel_ids(value: Any) -> list[int]:
    if value is None:
        return []
    items: Iterable[Any] = value if isinstance(value, list | tuple) else [value]
    out: list[int] = []
    for item in items:
        if isinstance(item, Mapping):
            item = ci_get(item, "Id", "ChannelID", "ID")
        number = _as_int(item)
        if number is not None:
            out.append(number)
    return out


@dataclass(frozen=True)
class CampaignDetails:
    """``actions/GetCampaignDetails`` for one campaign. ``raw`` keeps the full response object."""

    campaign_id: int
    target_group_id: int | None = None
    campaign_type: str | None = None
    duration: int | None = None
    lead_time: int | None = None
    notes: str | None = None
    is_multichannel: bool | None = None
    is_recurrence: bool | None = None
    status: str | None = None
    error: str | None = None
    channels: list[int] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    test_group_size: int | None = None
    control_group_size: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], campaign_id: int) -> CampaignDetails:
        """Build from the response object (the request's CampaignID fills a missing one)."""
        tags = ci_get(row, "Tags")
        return cls(
            campaign_id=_as_int(ci_get(row, "CampaignID")) or campaign_id,
            target_group_id=_as_int(ci_get(row, "TargetGroupID")),
            campaign_type=_as_str(ci_get(row, "CampaignType")),
            duration=_as_int(ci_get(row, "Duration")),
            lead_time=_as_int(ci_get(row, "LeadTime")),
            notes=_as_str(ci_get(row, "Notes")),
            is_multichannel=_as_bool(ci_get(row, "IsMultiChannel")),
            is_recurrence=_as_bool(ci_get(row, "IsRecurrence")),
            status=_as_str(ci_get(row, "Status")),
            error=_as_str(ci_get(row, "Error")) or None,
            channels=_channel_ids(ci_get(row, "Channels", "ChannelIDs", "ChannelID")),
            tags=list(tags) if isinstance(tags, list | tuple) else [],
            test_group_size=_as_int(ci_get(row, "TestGroupSize")),
            control_group_size=_as_int(ci_get(row, "ControlGroupSize")),
            raw=dict(row),
        )


@dataclass(frozen=True)
class ExecutionChannel:
    """One row of ``actions/GetExecutionChannels``."""

    channel_id: int
    name: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExecutionChannel:
        """Build from a response row."""
        channel_id = _as_int(ci_get(row, "ChannelID", "ID"))
        if channel_id is None:
            raise ValueError("channel row without ChannelID")
        return cls(channel_id=channel_id, name=_as_str(ci_get(row, "ChannelName", "Name")))


@dataclass(frozen=True)
class Template:
    """One row of ``integrations/GetChannelTemplates``."""

    template_id: int
    name: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Template:
        """Build from a response row."""
        template_id = _as_int(ci_get(row, "TemplateID", "ID"))
        if template_id is None:
            raise ValueError("template row without TemplateID")
        return cls(template_id=template_id, name=_as_str(ci_get(row, "TemplateName", "Name")))


@dataclass(frozen=True)
class EventListener:
    """One row of ``general/GetRegisteredEventListeners`` (``listener_url`` decoded: the doc fixture URL-encodes it)."""

    event_type_id: int
    channel_id: int | None
    listener_url: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EventListener:
        """Build from a response row."""
        event_type_id = _as_int(ci_get(row, "EventTypeID", "EventTypeId"))
        url = _as_str(ci_get(row, "ListenerURL", "ListenerUrl"))
        if event_type_id is None or not url:
            raise ValueError("listener row without EventTypeID or ListenerURL")
        return cls(event_type_id, _as_int(ci_get(row, "ChannelID")), unquote(url.strip()))


@dataclass(frozen=True)
class CampaignMetric:
    """One aggregate row for ``integrations/UpdateCampaignMetrics``."""

    campaign_id: int
    channel_id: int
    template_id: int
    metric_id: int
    metric_value: int | float

    def to_json(self) -> dict[str, Any]:
        """The API's PascalCase JSON object."""
        return {
            "ChannelID": self.channel_id,
            "CampaignID": self.campaign_id,
            "TemplateID": self.template_id,
            "MetricID": self.metric_id,
            "MetricValue": self.metric_value,
        }
