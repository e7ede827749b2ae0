"""Step 1, parsing: a decoded JSON object -> a validated :class:`OptimoveEvent`, or field-naming errors.

Keys are matched case-insensitively, so the seed's camelCase (``eventTypeId``, ``timeStamp``,
``campaignId``, ``channelId``) and Optimove's PascalCase (``EventTypeID``, ``TimeStamp``, ``CampaignID``,
``ChannelID``) both work, as do the single-target fields ``customerID``, ``templateID`` and ``promoCode``.
Every problem is reported as a :class:`FieldError` that names the field.

What is refused, so that every stored event can be stored as sent and dispatched:

- anywhere in the payload (known fields or not, keys too; :func:`check_payload`): text with a NUL or a lone
  UTF-16 surrogate, integers outside 64 bits (literals over 20 digits are never even converted), numbers
  too large for a double (``1e999``), arrays/objects nested more than 16 levels;
- ``timeStamp`` (UTC) outside ``2000-01-01 00:00:00 <= t < 2100-01-01 00:00:00``, for every event type and
  source;
- **the acceptable time window**: at the endpoint (``parse_event(..., now=...)``) events 13, 4 and 11 must be
  at most 30 days before and 2 days after the time they arrive (``now - 30 d <= timeStamp <= now + 2 d``).
  Older is a replay of a campaign that is long over, later is a clock or timezone error; both answer 422
  naming ``timeStamp`` and the window. Event 3 (daily process done, one user-sync run per day) and the
  acknowledged types are not windowed. The reconcile DAG and manual tools parse without ``now``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

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
MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**63 - 1
"""Any integer in a payload (known field or not) must fit 64 bits: the stored raw payload is JSON both
state databases and the JSON encoder can hold."""
MAX_DEPTH = 16
"""Arrays/objects nested deeper than this anywhere in a payload are refused (Optimove's events are flat)."""

EARLIEST_EVENT_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST_EVENT_TIME = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
"""Every event, from any source: ``EARLIEST_EVENT_TIME <= timeStamp < LATEST_EVENT_TIME`` (dispatchable dates)."""
WINDOW_PAST = dt.timedelta(days=30)
WINDOW_FUTURE = dt.timedelta(days=2)
WINDOWED_EVENT_TYPES: frozenset[int] = frozenset({4, 11, 13})
"""At the endpoint (``parse_event(..., now=...)``), 13, 4 and 11 must also be within
``[now - WINDOW_PAST, now + WINDOW_FUTURE]``: a campaign event older than 30 days is a replay, not a send."""

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
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
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
        moment = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
        return _within_bounds(moment)
    if not isinstance(value, str):
        raise ValueError(f"must be a string 'YYYY-MM-DD HH:MM:SS', got {_kind(value)}")
    text = value.strip()
    if _TIMESTAMP.match(text):
        for fmt in TIMESTAMP_FORMATS:
            try:
                moment = dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
            except ValueError:
                continue
            return _within_bounds(moment)
    raise ValueError(f"must be a date and time 'YYYY-MM-DD HH:MM:SS' (or 'YYYY-MM-DD HH:MM'), got {value[:40]!r}")


def _within_bounds(moment: dt.datetime) -> dt.datetime:
    if not EARLIEST_EVENT_TIME <= moment < LATEST_EVENT_TIME:
        raise ValueError(
            f"must be between {EARLIEST_EVENT_TIME:%Y-%m-%d %H:%M:%S} and {LATEST_EVENT_TIME:%Y-%m-%d %H:%M:%S} "
            f"(UTC), got {moment:%Y-%m-%d %H:%M:%S}"
        )
    return moment


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


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_MAX_SHOWN = 80


def _shown(text: str) -> str:
    """``text`` safe to echo and log: control characters and lone surrogates as ``\\uXXXX``, at most 80 chars."""
    if not text:
        return '""'
    shown = _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."


def _text_problem(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored: remove it"
    return (
        f"contains a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode: "
        "send the character itself in UTF-8 (or an escaped surrogate pair)"
    )


class OverlongNumber(str):
    """A JSON integer literal too long to be a 64-bit number, kept as its text (see :func:`read_json_int`)."""


def read_json_int(text: str) -> int | OverlongNumber:
    """``json.loads(..., parse_int=read_json_int)``: literals over 20 digits stay text, never converted.

    Converting a 5,000-digit literal costs quadratic time and, past Python's 4,300-digit limit, raises an
    error that names no field; kept as text, :func:`check_payload` names the field instead.
    """
    return OverlongNumber(text) if len(text.lstrip("-")) > 20 else int(text)


def check_payload(pairs: Sequence[tuple[str, Any]]) -> list[FieldError]:
    """Problems anywhere in a payload (known fields or not) that would stop it being stored as sent.

    Text (keys and values) with a NUL or a lone surrogate, integers outside 64 bits, numbers too large
    for a double (``1e999``), arrays/objects nested deeper than :data:`MAX_DEPTH`. The field is named as
    a path (``Extra.items[2]``). Iterative, so a deep payload cannot exhaust the stack.
    """
    errors: list[FieldError] = []
    stack: list[tuple[str, Any, int]] = []
    for key, value in reversed(list(pairs)):
        stack.append((str(key), value, 1))
        problem = _text_problem(str(key))
        if problem:
            errors.append(FieldError(_shown(str(key)), f"the key {problem}"))
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, OverlongNumber):
            problem = f"is a number with {len(value.lstrip('-'))} digits, outside the 64-bit integer range"
        elif isinstance(value, str):
            problem = _text_problem(value)
        elif isinstance(value, bool) or value is None:
            problem = None
        elif isinstance(value, int):
            problem = (
                None
                if MIN_JSON_INT <= value <= MAX_JSON_INT
                else f"is a number outside the 64-bit integer range ({MIN_JSON_INT} to {MAX_JSON_INT})"
            )
        elif isinstance(value, float):
            problem = None if math.isfinite(value) else "is a number too large to represent"
        elif isinstance(value, Mapping | list):
            children = list(value.items()) if isinstance(value, Mapping) else list(enumerate(value))
            problem = None
            if depth >= MAX_DEPTH and children:
                problem = f"nests arrays/objects more than {MAX_DEPTH} levels deep; send a flatter payload"
            else:
                for child_key, child in reversed(children):
                    child_path = f"{path}[{child_key}]" if isinstance(child_key, int) else f"{path}.{child_key}"
                    key_problem = None if isinstance(child_key, int) else _text_problem(child_key)
                    if key_problem:
                        errors.append(FieldError(_shown(child_path), f"the key {key_problem}"))
                    stack.append((child_path, child, depth + 1))
        else:  # built in code (a datetime...): the model judges it
            problem = None
        if problem:
            errors.append(FieldError(_shown(path), problem))
    return errors


def parse_event(
    payload: Mapping[str, Any] | Sequence[tuple[str, Any]], *, now: dt.datetime | None = None
) -> OptimoveEvent:
    """Validate a decoded JSON object (a mapping, or its key/value pairs to catch repeated keys).

    Known keys are matched case-insensitively; other keys are allowed and ignored (they stay in the
    stored raw payload, so :func:`check_payload` checks them too). A key given twice (``campaignId`` and
    ``CampaignID``) with different values is an error. With ``now`` (the endpoint), 13, 4 and 11 must
    also fall in the window around it (:data:`WINDOW_PAST`, :data:`WINDOW_FUTURE`). Raises
    :class:`EventValidationError` listing every bad field.
    """
    pairs = list(payload.items()) if isinstance(payload, Mapping) else list(payload)
    errors: list[FieldError] = check_payload(pairs)
    if errors:
        raise EventValidationError(errors)
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
    if now is not None and event.event_type_id in WINDOWED_EVENT_TYPES:
        _check_window(event, now, spelled.get("event_time", _WIRE_NAMES["event_time"]))
    return event


def _check_window(event: OptimoveEvent, now: dt.datetime, spelled: str) -> None:
    earliest, latest = now - WINDOW_PAST, now + WINDOW_FUTURE
    if not earliest <= event.event_time <= latest:
        raise EventValidationError(
            [
                FieldError(
                    spelled,
                    f"{event.event_time:%Y-%m-%d %H:%M:%S} is outside the accepted window for eventTypeId "
                    f"{event.event_type_id}: {WINDOW_PAST.days} days before to {WINDOW_FUTURE.days} days after "
                    f"now ({earliest:%Y-%m-%d %H:%M:%S} to {latest:%Y-%m-%d %H:%M:%S} UTC); send the time the "
                    "campaign ran, in UTC",
                )
            ]
        )


def redact_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as stored: secret-bearing keys (event 14's ``DecryptionKey``, ``ServiceAccount``) redacted."""
    return {k: (REDACTED if str(k).lower() in SENSITIVE_KEYS else v) for k, v in payload.items()}
