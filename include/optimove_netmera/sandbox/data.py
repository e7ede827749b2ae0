"""Deterministic Optimove sandbox dataset: customers, attribute history, channels, templates, campaigns.

Everything is a pure function of ``(seed, customers)``. Attribute values are never materialised for the whole
population: a value is computed on demand from ``(seed, customer index, attribute, version)`` with a vectorised
64-bit hash (numpy), so a 10,000-row page costs a few milliseconds at any population size. Only changes made
through the admin API are stored (per attribute and customer, as a dated history), which keeps memory flat at
1,000,000 customers x 20 attributes.

Values are what the API serves: strings (numbers as ``"42"``/``"12.50"``, booleans as ``"true"``/``"false"``,
dates as ``"YYYY-MM-DD"``), or ``None`` for an empty value (served as ``"NULL"``). Every customer's initial
values count as set on :attr:`Dataset.base_date` (30 days before the initial last data update, which is
yesterday), so an attribute-changers window that contains the base date returns every non-empty customer.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CHANNELS",
    "AttributeSpec",
    "Campaign",
    "Dataset",
    "format_customer_id",
    "parse_date",
]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: The sandbox tenant's generic execution channels (Optimove's public sandbox uses these IDs).
DEFAULT_CHANNELS: dict[int, str] = {
    504: "Email",
    505: "SMS",
    502: "Call Center",
    506: "Push Notification",
    510: "Web Push",
    511: "In-Platform",
    # The channels Netmera's connector guide names for its push channel at Optimove (the seed's curl sends them).
    459: "Netmera Push",
    481: "Netmera Push (secondary)",
}

_DEFAULT_TEMPLATES: dict[int, dict[int, str]] = {
    504: {21: "Monthly Newsletter", 22: "Abandoned Cart Email"},
    505: {11: "SMS Reminder", 12: "SMS Bonus Offer"},
    502: {31: "Call Center Retention"},
    506: {1: "Welcome Push", 2: "Win-back Push", 3: "Weekly Offers Push", 4: "Birthday Push"},
    510: {41: "Web Push Flash Sale"},
    511: {51: "In-App Banner"},
    459: {1: "Welcome Push", 2: "Win-back Push", 3: "Weekly Offers Push", 4: "Birthday Push"},
    481: {1: "Welcome Push", 2: "Win-back Push", 3: "Weekly Offers Push", 4: "Birthday Push"},
}

_FIRST_NAMES = (
    "Ahmet", "Mehmet", "Ayşe", "Fatma", "Zeynep", "Elif", "Mustafa", "Emre", "Can", "Deniz", "Çağla", "Gökhan",
    "Şule", "Oğuz", "İrem", "Burak", "John", "Mary", "James", "Linda", "Michael", "Sarah", "David", "Emma",
    "Lukas", "Hannah", "Jonas", "Lea", "Pierre", "Camille", "Louis", "Chloé", "Giulia", "Marco", "Sofia",
    "Lucas", "Noah", "Olivia", "Mia", "Ben",
)  # fmt: skip
_LAST_NAMES = (
    "Yılmaz", "Kaya", "Demir", "Şahin", "Çelik", "Yıldız", "Öztürk", "Aydın", "Arslan", "Doğan", "Smith",
    "Johnson", "Brown", "Taylor", "Wilson", "Müller", "Schmidt", "Schneider", "Fischer", "Martin", "Bernard",
    "Dubois", "Rossi", "Russo", "Bianchi", "de Vries", "Jansen", "García", "López", "Novak",
)  # fmt: skip
_COUNTRIES = ("TR", "TR", "TR", "US", "GB", "DE", "FR", "NL", "ES", "IT")
_COUNTRY_LANGUAGE = {"TR": "tr", "US": "en", "GB": "en", "DE": "de", "FR": "fr", "NL": "nl", "ES": "es", "IT": "it"}
_LANGUAGES = ("tr", "en", "de", "fr", "nl", "es", "it")
_CITIES = {
    "TR": ("Istanbul", "Ankara", "Izmir", "Bursa", "Antalya"),
    "US": ("New York", "Chicago", "Austin", "Seattle"),
    "GB": ("London", "Manchester", "Leeds"),
    "DE": ("Berlin", "Hamburg", "München", "Köln"),
    "FR": ("Paris", "Lyon", "Marseille"),
    "NL": ("Amsterdam", "Rotterdam", "Utrecht"),
    "ES": ("Madrid", "Barcelona", "Valencia"),
    "IT": ("Roma", "Milano", "Torino"),
}
_ALL_CITIES = tuple(city for cities in _CITIES.values() for city in cities)
_GENDERS = ("F", "M")
_SEGMENTS = ("New", "Bronze", "Silver", "Gold", "Platinum", "Churn Risk")
_CATEGORIES = ("Sports", "Casino", "Fashion", "Electronics", "Travel", "Books", "Home", "Beauty")


@dataclass(frozen=True)
class AttributeSpec:
    """One customer attribute: its RealFieldName, type, description and how often it is empty."""

    name: str
    type: str  # "string" | "number" | "boolean" | "date"
    description: str
    empty_permille: int = 0


_CATALOGUE: tuple[AttributeSpec, ...] = (
    AttributeSpec("FirstName", "string", "First name"),
    AttributeSpec("LastName", "string", "Last name"),
    AttributeSpec("Email", "string", "Email address", 20),
    AttributeSpec("MobilePhone", "string", "Mobile phone number (E.164)", 150),
    AttributeSpec("Country", "string", "Country code (ISO 3166-1 alpha-2)"),
    AttributeSpec("City", "string", "City", 50),
    AttributeSpec("Language", "string", "Preferred language (ISO 639-1)"),
    AttributeSpec("Gender", "string", "Gender (F/M)", 100),
    AttributeSpec("Segment", "string", "Value segment"),
    AttributeSpec("FavoriteCategory", "string", "Favourite product category", 120),
    AttributeSpec("Age", "number", "Age in years", 30),
    AttributeSpec("LTV", "number", "Lifetime value (EUR)"),
    AttributeSpec("Score", "number", "Engagement score 0-100"),
    AttributeSpec("TotalOrders", "number", "Number of orders"),
    AttributeSpec("IsVIP", "boolean", "VIP customer"),
    AttributeSpec("OptIn", "boolean", "Marketing opt-in"),
    AttributeSpec("PushEnabled", "boolean", "Push notifications enabled", 50),
    AttributeSpec("BirthDate", "date", "Date of birth", 80),
    AttributeSpec("RegistrationDate", "date", "Registration date"),
    AttributeSpec("LastOrderDate", "date", "Date of the last order", 200),
)


def format_customer_id(index: int) -> str:
    """The CustomerID of the customer at zero-based ``index`` (``0`` -> ``"C0000001"``)."""
    return f"C{index + 1:07d}"


def parse_date(value: str) -> dt.date:
    """Parse a strict ``YYYY-MM-DD`` date; raises ValueError otherwise."""
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise ValueError(f"{value!r} is not a YYYY-MM-DD date")
    return dt.date.fromisoformat(value)


def _smix(value: int) -> int:
    """splitmix64 finaliser on a Python int (for salts)."""
    z = (value + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _salt(*parts: int) -> int:
    acc = 0x5EED
    for part in parts:
        acc = _smix(acc ^ (part & _MASK64))
    return acc


def _hash(indices: np.ndarray, salt: int) -> np.ndarray:
    """Vectorised splitmix64 of ``indices`` (int array) under ``salt``; returns uint64."""
    x = indices.astype(np.uint64) ^ np.uint64(salt)
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _pick(options: Sequence[str], h: np.ndarray) -> list[str]:
    table = np.array(options, dtype=object)
    return table[(h % np.uint64(len(options))).astype(np.int64)].tolist()


def _int_range(h: np.ndarray, low: int, high: int) -> np.ndarray:
    return (h % np.uint64(high - low + 1)).astype(np.int64) + low


def _dates(h: np.ndarray, first: str, last: str) -> list[str]:
    start = np.datetime64(first, "D")
    span = int((np.datetime64(last, "D") - start).astype(int)) + 1
    days = (h % np.uint64(span)).astype(np.int64).astype("timedelta64[D]")
    return (start + days).astype(str).tolist()


@dataclass
class Campaign:
    """A campaign executed on one channel with its recipient rows (numpy arrays, one entry per row)."""

    campaign_id: int
    channel_id: int
    date: dt.date
    scheduled_time: str
    action_id: int
    target_group_id: int
    duration: int
    lead_time: int
    templates: list[int]
    promo_code: str
    customers: np.ndarray  # customer index per row
    actions: np.ndarray  # ActionID per row (1 = control group)
    template_pos: np.ndarray  # index into ``templates`` per row
    missing: np.ndarray  # bool per row: attribute data missing (served as "NULL")
    recipients: int
    control: int
    duplicates: int
    cancelled_at: float | None = None  # time.monotonic() of the cancel
    cancelled_wall: str | None = None
    cancelled_rows: np.ndarray | None = None

    @property
    def rows(self) -> int:
        """Number of recipient rows served (recipients plus duplicates)."""
        return int(self.customers.shape[0])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (for ``GET /_sandbox/campaigns``)."""
        return {
            "campaign_id": self.campaign_id,
            "channel_id": self.channel_id,
            "date": self.date.isoformat(),
            "scheduled_time": self.scheduled_time,
            "action_id": self.action_id,
            "templates": list(self.templates),
            "promo_code": self.promo_code,
            "recipients": self.recipients,
            "control": self.control,
            "duplicates": self.duplicates,
            "missing_data": int(self.missing.sum()),
            "rows": self.rows,
            "cancelled": self.cancelled_at is not None,
            "cancelled_at": self.cancelled_wall,
            "cancelled_customers": 0 if self.cancelled_rows is None else int(self.cancelled_rows.shape[0]),
        }


class Dataset:
    """The sandbox tenant's data, deterministic from ``(seed, customers)``; mutable only via change methods."""

    def __init__(self, seed: int = 7, customers: int = 1000, attributes: int | None = None) -> None:
        if customers < 0:
            raise ValueError("customers must be >= 0")
        self.seed = int(seed)
        self.customers = int(customers)
        count = len(_CATALOGUE) if attributes is None else int(attributes)
        if count < 1:
            raise ValueError("attributes must be >= 1")
        specs = list(_CATALOGUE[:count])
        for extra in range(len(_CATALOGUE), count):
            kind = "string" if extra % 2 == 0 else "number"
            specs.append(AttributeSpec(f"Custom{extra + 1}", kind, f"Custom attribute {extra + 1}", 100))
        self.specs: tuple[AttributeSpec, ...] = tuple(specs)
        self._spec_no = {spec.name: no for no, spec in enumerate(self.specs)}
        self._by_lower = {spec.name.lower(): spec.name for spec in self.specs}
        self.initial_last_data_update: dt.date = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        self.base_date: dt.date = self.initial_last_data_update - dt.timedelta(days=30)
        self.lock = threading.RLock()
        self._base_nonempty: dict[str, np.ndarray] = {}
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        # attribute -> customer index -> [(date, value)], sorted by date (stable for equal dates)
        self._history: dict[str, dict[int, list[tuple[dt.date, str | None]]]] = {s.name: {} for s in self.specs}
        # customer index -> attribute -> current value (only customers with changes)
        self._current: dict[int, dict[str, str | None]] = {}
        self._mutations = 0
        self._change_calls = 0
        self._query_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.channels: dict[int, str] = dict(DEFAULT_CHANNELS)
        self.templates: dict[int, dict[int, str]] = {ch: dict(t) for ch, t in _DEFAULT_TEMPLATES.items()}
        self.campaigns: dict[int, Campaign] = {}
        self._seed_campaigns()

    def reset(self) -> None:
        """Back to the seed's state: no attribute changes, the seeded channels, templates and campaigns."""
        with self.lock:
            self._reset_state()

    @property
    def mutations(self) -> int:
        """A counter bumped by every attribute change (for cache keys)."""
        return self._mutations

    # -------------------------------------------------------------- identity
    @property
    def attribute_names(self) -> list[str]:
        """RealFieldNames in catalogue order."""
        return [spec.name for spec in self.specs]

    def attribute_types(self) -> dict[str, str]:
        """``{RealFieldName: "string" | "number" | "boolean" | "date"}``."""
        return {spec.name: spec.type for spec in self.specs}

    def resolve_attribute(self, name: str) -> str | None:
        """The canonical RealFieldName for ``name`` (case-insensitive), or None when unknown."""
        return self._by_lower.get(name.strip().lower())

    def customer_id(self, index: int) -> str:
        """CustomerID of the customer at ``index``."""
        return format_customer_id(index)

    def customer_index(self, customer_id: str) -> int | None:
        """Zero-based index of ``customer_id`` or None when it is not a customer of this dataset."""
        return self.customer_indices([customer_id])[0]

    def netmera_known(self, ext_id: str) -> bool:
        """Whether the customer ``ext_id`` exists as a Netmera user in the seed (~95% of customers do)."""
        index = self.customer_index(ext_id)
        if index is None:
            return False
        return bool(self._netmera_mask(np.array([index], dtype=np.int64))[0])

    def customer_indices(self, customer_ids: Iterable[Any]) -> list[int | None]:
        """The zero-based index of each id, None for one that is not a customer of this dataset: "C" and seven or
        more ASCII digits without a superfluous leading zero (exactly the ids :func:`format_customer_id` writes),
        naming one of the dataset's customers. One pass, no regex: a 1000-extId request asks for 1000."""
        n = self.customers
        out: list[int | None] = []
        for x in customer_ids:
            if isinstance(x, str) and len(x) >= 8 and x[0] == "C" and x.isascii() and x[1:].isdigit():
                index = int(x[1:]) - 1
                out.append(index if 0 <= index < n and (len(x) == 8 or x[1] != "0") else None)
            else:
                out.append(None)
        return out

    def netmera_known_many(self, ext_ids: Iterable[str]) -> list[bool]:
        """:meth:`netmera_known` for many IDs at once."""
        indices = self.customer_indices(ext_ids)
        valid = np.array([i for i in indices if i is not None], dtype=np.int64)
        mask = iter(self._netmera_mask(valid).tolist()) if valid.size else iter(())
        return [False if i is None else bool(next(mask)) for i in indices]

    def netmera_known_indices(self) -> np.ndarray:
        """Indices of every customer known to Netmera in the seed (ascending)."""
        return np.flatnonzero(self._netmera_mask(np.arange(self.customers, dtype=np.int64)))

    def _netmera_mask(self, indices: np.ndarray) -> np.ndarray:
        return (_hash(indices, _salt(self.seed, 0x4E45544D)) % np.uint64(100)) < np.uint64(95)

    # ------------------------------------------------------------- base values
    def _generate(self, attr: str, indices: np.ndarray, version: int = 0, allow_empty: bool = True) -> list[str | None]:
        """Generated values of ``attr`` for ``indices`` at ``version`` (0 = the seed's initial value)."""
        no = self._spec_no[attr]
        spec = self.specs[no]
        h = _hash(indices, _salt(self.seed, no, version))
        values: list[str] = self._values_for(spec, h, indices, version)
        if allow_empty and spec.empty_permille and version == 0:
            empty = ((h >> _S40) % np.uint64(1000)) < np.uint64(spec.empty_permille)
            if empty.any():
                out: list[str | None] = list(values)
                for pos in np.flatnonzero(empty).tolist():
                    out[pos] = None
                return out
        return list(values)

    def _base_draw(self, attr_no: int, indices: np.ndarray) -> np.ndarray:
        return _hash(indices, _salt(self.seed, attr_no, 0))

    def _values_for(self, spec: AttributeSpec, h: np.ndarray, idx: np.ndarray, version: int) -> list[str]:
        name = spec.name
        if name == "FirstName":
            return _pick(_FIRST_NAMES, h)
        if name == "LastName":
            return _pick(_LAST_NAMES, h)
        if name == "Email":
            first = _pick(_FIRST_NAMES, self._base_draw(0, idx))
            last = _pick(_LAST_NAMES, self._base_draw(1, idx))
            domains = ("example.com", "mail.example.org", "example.net")
            dom = _pick(domains, h)
            num = (idx + 1 + version * 7919).tolist()
            return [f"{_ascii(f)}.{_ascii(la)}{n}@{d}" for f, la, n, d in zip(first, last, num, dom, strict=True)]
        if name == "MobilePhone":
            return [f"+905{n:09d}" for n in (h % np.uint64(1_000_000_000)).tolist()]
        if name == "Country":
            return _pick(_COUNTRIES, h)
        if name in ("City", "Language"):
            if version > 0:
                return _pick(_ALL_CITIES if name == "City" else _LANGUAGES, h)
            countries = _pick(_COUNTRIES, self._base_draw(4, idx))
            if name == "City":
                picks = (h >> np.uint64(8)).tolist()
                return [_CITIES[c][p % len(_CITIES[c])] for c, p in zip(countries, picks, strict=True)]
            english = ((h % np.uint64(10)) == 0).tolist()
            return ["en" if e else _COUNTRY_LANGUAGE[c] for c, e in zip(countries, english, strict=True)]
        if name == "Gender":
            return _pick(_GENDERS, h)
        if name == "Segment":
            return _pick(_SEGMENTS, h)
        if name == "FavoriteCategory":
            return _pick(_CATEGORIES, h)
        if name == "Age":
            return _int_range(h, 18, 80).astype(str).tolist()
        if name == "LTV":
            cents = (h % np.uint64(2_500_000)).tolist()
            return [f"{c // 100}.{c % 100:02d}" for c in cents]
        if name == "Score":
            return _int_range(h, 0, 100).astype(str).tolist()
        if name == "TotalOrders":
            return _int_range(h, 0, 250).astype(str).tolist()
        if spec.type == "boolean":
            rate = {"IsVIP": 8, "OptIn": 70, "PushEnabled": 80}.get(name, 50)
            return np.where((h % np.uint64(100)) < np.uint64(rate), "true", "false").tolist()
        if name == "BirthDate":
            return _dates(h, "1950-01-01", "2006-12-31")
        if name == "RegistrationDate":
            return _dates(h, "2015-01-01", "2024-12-31")
        if name == "LastOrderDate":
            return _dates(h, "2023-01-01", "2025-06-30")
        if spec.type == "number":
            return _int_range(h, 0, 10_000).astype(str).tolist()
        return [f"value-{n:06d}" for n in (h % np.uint64(1_000_000)).tolist()]

    def _base_nonempty_mask(self, attr: str) -> np.ndarray:
        mask = self._base_nonempty.get(attr)
        if mask is None:
            spec = self.specs[self._spec_no[attr]]
            if not spec.empty_permille:
                mask = np.ones(self.customers, dtype=bool)
            else:
                h = self._base_draw(self._spec_no[attr], np.arange(self.customers, dtype=np.int64))
                mask = ((h >> _S40) % np.uint64(1000)) >= np.uint64(spec.empty_permille)
            self._base_nonempty[attr] = mask
        return mask

    # ---------------------------------------------------------- current values
    def values(self, indices: np.ndarray | Sequence[int], attrs: Sequence[str]) -> list[list[str | None]]:
        """Current values: one list per attribute in ``attrs`` (canonical names), aligned with ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        with self.lock:
            columns = [self._generate(attr, idx) for attr in attrs]
            if self._current and idx.size:
                current = self._current
                for pos, index in enumerate(idx.tolist()):
                    override = current.get(index)
                    if override:
                        for col, attr in zip(columns, attrs, strict=True):
                            if attr in override:
                                col[pos] = override[attr]
        return columns

    def rows(self, indices: np.ndarray | Sequence[int], attrs: Sequence[str]) -> list[tuple[str | None, ...]]:
        """Current values as one tuple per customer (``attrs`` order)."""
        if not attrs:
            return [() for _ in range(len(indices))]
        return list(zip(*self.values(indices, attrs), strict=True))

    def customer(self, index: int) -> dict[str, str | None]:
        """Every current attribute of one customer."""
        names = self.attribute_names
        return {name: col[0] for name, col in zip(names, self.values([index], names), strict=True)}

    def current_value(self, index: int, attr: str) -> str | None:
        """Current value of one attribute of one customer."""
        return self.values([index], [attr])[0][0]

    def value_as_of(self, index: int, attr: str, day: dt.date) -> str | None:
        """The value as it stood at the end of ``day`` (None before the base date)."""
        entries = self._history[attr].get(index)
        return self._as_of(index, attr, entries, day, inclusive=True)

    def _as_of(
        self,
        index: int,
        attr: str,
        entries: list[tuple[dt.date, str | None]] | None,
        day: dt.date,
        inclusive: bool,
    ) -> str | None:
        if entries:
            keys = [d for d, _ in entries]
            pos = bisect.bisect_right(keys, day) if inclusive else bisect.bisect_left(keys, day)
            if pos:
                return entries[pos - 1][1]
        if day < self.base_date or (not inclusive and day <= self.base_date):
            return None
        return self._generate(attr, np.array([index], dtype=np.int64))[0]

    # ----------------------------------------------------------------- changes
    def apply_changes(self, changes: dict[int, dict[str, str | None]], day: dt.date) -> None:
        """Record ``{customer index: {attribute: new value or None}}`` as changes made on ``day``."""
        with self.lock:
            for index, attrs in changes.items():
                current = self._current.setdefault(index, {})
                for attr, value in attrs.items():
                    entries = self._history[attr].setdefault(index, [])
                    keys = [d for d, _ in entries]
                    entries.insert(bisect.bisect_right(keys, day), (day, value))
                    current[attr] = entries[-1][1]
            self._mutations += 1
            self._query_cache.clear()

    def random_changes(
        self, count: int, empty: int, attributes: Sequence[str] | None
    ) -> tuple[dict[int, dict[str, str | None]], dict[int, list[str]]]:
        """Deterministically pick ``count`` customers and new values (``empty`` of them get one value emptied).

        Without ``attributes`` each picked customer changes 1-3 random attributes. Returns the changes (to pass
        to :meth:`apply_changes`) and ``{index: [emptied attribute]}``. The picks depend on the seed and on how
        many random changes were drawn since the last reset.
        """
        if count < 0 or empty < 0 or empty > count:
            raise ValueError("need 0 <= empty <= count")
        if count > self.customers:
            raise ValueError(f"count {count} exceeds the {self.customers} customers")
        with self.lock:
            self._change_calls += 1
            rng = np.random.default_rng([self.seed, 0xC4A6, self._change_calls])
            picked = rng.choice(self.customers, size=count, replace=False).astype(np.int64)
            if attributes:
                names = list(dict.fromkeys(attributes))
                selected = np.ones((count, len(names)), dtype=bool)
            else:
                names = self.attribute_names
                order = np.argsort(rng.random((count, len(names))), axis=1)
                rank = np.empty_like(order)
                rank[np.arange(count)[:, None], order] = np.arange(len(names))
                selected = rank < rng.integers(1, 4, size=count)[:, None]
            current: list[dict[int, str | None]] = []
            for col, attr in enumerate(names):
                rows = np.flatnonzero(selected[:, col])
                values = self.values(picked[rows], [attr])[0] if rows.size else []
                current.append(dict(zip(rows.tolist(), values, strict=True)))
            emptied_rows: dict[int, int] = {}
            for row in range(empty):
                cols = np.flatnonzero(selected[row]).tolist()
                emptied_rows[row] = next((c for c in cols if current[c][row] is not None), cols[0])
            changes: dict[int, dict[str, str | None]] = {int(i): {} for i in picked.tolist()}
            for col, attr in enumerate(names):
                rows = [r for r in current[col] if emptied_rows.get(r) != col]
                new = self._new_values(attr, picked[rows], [current[col][r] for r in rows]) if rows else []
                for row, value in zip(rows, new, strict=True):
                    changes[int(picked[row])][attr] = value
            emptied: dict[int, list[str]] = {}
            for row, col in emptied_rows.items():
                index = int(picked[row])
                changes[index][names[col]] = None
                emptied[index] = [names[col]]
        return changes, emptied

    def _new_values(self, attr: str, indices: np.ndarray, current: list[str | None]) -> list[str]:
        """Non-empty values of ``attr`` for ``indices`` that differ from ``current`` (deterministic)."""
        if self.specs[self._spec_no[attr]].type == "boolean":
            return ["false" if value == "true" else "true" for value in current]
        out: list[str | None] = [None] * len(current)
        pending = list(range(len(current)))
        for attempt in range(32):
            version = self._change_calls * 64 + attempt + 1
            drawn = self._generate(attr, indices[pending], version, allow_empty=False)
            still = []
            for pos, value in zip(pending, drawn, strict=True):
                if value != current[pos] or attempt == 31:
                    out[pos] = value
                else:
                    still.append(pos)
            pending = still
            if not pending:
                break
        return [value or "" for value in out]

    # ---------------------------------------------------------------- changers
    def changers(self, attr: str, start: dt.date, end: dt.date) -> tuple[np.ndarray, list[str | None] | None]:
        """Customers whose ``attr`` changed within ``[start, end]`` (ascending indices).

        Returns the indices and, when the window does not contain the base date, the initial values aligned
        with them (for a window containing the base date every initial value is None: nothing was set before).
        """
        with self.lock:
            key = ("changers", attr, start, end, self._mutations)
            cached = self._query_cache.get(key)
            if cached is not None:
                self._query_cache.move_to_end(key)
                return cached
            history = self._history[attr]
            result: tuple[np.ndarray, list[str | None] | None]
            if end < self.base_date or start > end:
                result = (np.empty(0, dtype=np.int64), [])
            elif start <= self.base_date:
                mask = self._base_nonempty_mask(attr)
                if history:
                    mask = mask.copy()
                    for index, entries in history.items():
                        if entries[0][0] <= end:  # otherwise the value at ``end`` is the base value
                            mask[index] = self._as_of(index, attr, entries, end, inclusive=True) is not None
                result = (np.flatnonzero(mask), None)
            else:
                picked: list[int] = []
                initial: list[str | None] = []
                for index in sorted(history):
                    entries = history[index]
                    if not any(start <= d <= end for d, _ in entries):
                        continue
                    before = self._as_of(index, attr, entries, start, inclusive=False)
                    after = self._as_of(index, attr, entries, end, inclusive=True)
                    if before != after:
                        picked.append(index)
                        initial.append(before)
                result = (np.array(picked, dtype=np.int64), initial)
            self._query_cache[key] = result
            while len(self._query_cache) > 32:
                self._query_cache.popitem(last=False)
            return result

    def values_as_of(self, indices: np.ndarray, attr: str, day: dt.date) -> list[str | None]:
        """Values of ``attr`` at the end of ``day`` for ``indices``."""
        with self.lock:
            if day < self.base_date:
                return [None] * len(indices)
            out = self._generate(attr, indices)
            history = self._history[attr]
            if history:
                for pos, index in enumerate(indices.tolist()):
                    entries = history.get(index)
                    if entries and entries[0][0] <= day:
                        out[pos] = self._as_of(index, attr, entries, day, inclusive=True)
            return out

    # ------------------------------------------------------------------ export
    def snapshot_overrides(self) -> dict[int, dict[str, str | None]]:
        """A copy of the current-value overrides (so an export can run outside the lock)."""
        with self.lock:
            return {index: dict(attrs) for index, attrs in self._current.items()}

    def iter_chunks(
        self, overrides: dict[int, dict[str, str | None]], chunk: int = 100_000
    ) -> Iterator[tuple[list[str], list[list[str | None]]]]:
        """Yield ``(customer ids, columns)`` over every customer using the given override snapshot."""
        names = self.attribute_names
        for start in range(0, self.customers, chunk):
            idx = np.arange(start, min(start + chunk, self.customers), dtype=np.int64)
            columns = [self._generate(attr, idx) for attr in names]
            for pos, index in enumerate(idx.tolist()):
                override = overrides.get(index)
                if override:
                    for col, attr in zip(columns, names, strict=True):
                        if attr in override:
                            col[pos] = override[attr]
            yield [format_customer_id(i) for i in idx.tolist()], columns

    def export(self, path: str | Path, overrides: dict[int, dict[str, str | None]] | None = None) -> int:
        """Write every customer's current attributes to CSV or Parquet (by suffix); returns the row count."""
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError("path must end with .csv or .parquet")
        snapshot = self.snapshot_overrides() if overrides is None else overrides
        names = ["CustomerID", *self.attribute_names]
        schema = pa.schema([(name, pa.string()) for name in names])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        rows = 0
        writer: Any
        writer = pq.ParquetWriter(tmp, schema) if suffix == ".parquet" else pacsv.CSVWriter(tmp, schema)
        try:
            if self.customers == 0:
                writer.write_table(pa.Table.from_pylist([], schema=schema))
            for ids, columns in self.iter_chunks(snapshot):
                arrays = [pa.array(ids, pa.string())] + [pa.array(col, pa.string()) for col in columns]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                rows += len(ids)
        finally:
            writer.close()
        tmp.replace(target)
        return rows

    # ------------------------------------------------------ channels/templates
    def ensure_channel(self, channel_id: int) -> None:
        """Make ``channel_id`` an execution channel (a tenant-specific one gets a generic name)."""
        if channel_id not in self.channels:
            self.channels[channel_id] = f"Channel {channel_id}"
            self.templates.setdefault(channel_id, {})

    # --------------------------------------------------------------- campaigns
    def _seed_campaigns(self) -> None:
        yday = self.initial_last_data_update
        n = self.customers
        specs = (
            (1001, 506, yday, min(200, n), 0.1, [1, 2], 0, "PUSH10"),
            (1002, 506, yday - dt.timedelta(days=1), min(100, n), 0.1, [3], min(3, n), ""),
            (1003, 505, yday, min(50, n), 0.2, [11], 0, "SMS5"),
        )
        for cid, channel, day, recipients, control, templates, dups, promo in specs:
            self.create_campaign(
                campaign_id=cid,
                channel_id=channel,
                recipients=recipients,
                control_fraction=control,
                templates=templates,
                scheduled_time=f"{day.isoformat()} 10:00:00",
                duplicates=dups,
                missing_data_fraction=0.0,
                day=day,
                promo_code=promo,
            )

    def create_campaign(
        self,
        *,
        campaign_id: int | None,
        channel_id: int,
        recipients: int,
        control_fraction: float,
        templates: list[int] | None,
        scheduled_time: str,
        duplicates: int,
        missing_data_fraction: float,
        day: dt.date,
        promo_code: str = "",
    ) -> Campaign:
        """Create a campaign (deterministic from the seed and its ID); raises ValueError on bad input."""
        with self.lock:
            if campaign_id is None:
                campaign_id = max(self.campaigns, default=1000) + 1
            if campaign_id in self.campaigns:
                raise ValueError(f"campaign_id {campaign_id} already exists")
            if campaign_id < 1 or channel_id < 1:
                raise ValueError("campaign_id and channel_id must be positive integers")
            if not 0 <= recipients <= self.customers:
                raise ValueError(f"recipients must be between 0 and the {self.customers} customers")
            if not 0.0 <= control_fraction <= 1.0 or not 0.0 <= missing_data_fraction <= 1.0:
                raise ValueError("control_fraction and missing_data_fraction must be between 0 and 1")
            if duplicates < 0 or (duplicates and not recipients):
                raise ValueError("duplicates must be >= 0 and needs at least one recipient")
            self.ensure_channel(channel_id)
            channel_templates = self.templates[channel_id]
            if templates is None:
                templates = sorted(channel_templates)[:2] or [1]
            if not templates:
                raise ValueError("templates must not be empty")
            for template_id in templates:
                if template_id not in channel_templates:
                    channel_templates[template_id] = f"Template {template_id}"
            rng = np.random.default_rng([self.seed, 0xCA3A, campaign_id])
            if recipients == self.customers:
                customers = np.arange(self.customers, dtype=np.int64)
            else:
                customers = np.sort(rng.choice(self.customers, size=recipients, replace=False)).astype(np.int64)
            action_id = 2 + campaign_id % 97
            control = round(recipients * control_fraction)
            actions = np.full(recipients, action_id, dtype=np.int32)
            if control:
                actions[rng.choice(recipients, size=control, replace=False)] = 1
            template_pos = rng.integers(0, len(templates), size=recipients).astype(np.int32)
            missing = np.zeros(recipients, dtype=bool)
            n_missing = round(recipients * missing_data_fraction)
            if n_missing:
                missing[rng.choice(recipients, size=n_missing, replace=False)] = True
            if duplicates:
                src = rng.choice(recipients, size=duplicates, replace=duplicates > recipients)
                where = np.sort(rng.integers(0, recipients + 1, size=duplicates))
                customers = np.insert(customers, where, customers[src])
                actions = np.insert(actions, where, actions[src])
                template_pos = np.insert(template_pos, where, template_pos[src])
                missing = np.insert(missing, where, missing[src])
            campaign = Campaign(
                campaign_id=campaign_id,
                channel_id=channel_id,
                date=day,
                scheduled_time=scheduled_time,
                action_id=action_id,
                target_group_id=100 + campaign_id % 50,
                duration=int(1 + campaign_id % 7),
                lead_time=0,
                templates=list(templates),
                promo_code=promo_code,
                customers=customers,
                actions=actions,
                template_pos=template_pos,
                missing=missing,
                recipients=recipients,
                control=control,
                duplicates=duplicates,
            )
            self.campaigns[campaign_id] = campaign
            return campaign

    def cancel_campaign(self, campaign_id: int, customers: int | None, now: float, wall: str) -> Campaign:
        """Cancel a campaign for all its (non-control, distinct) recipients or a deterministic ``customers`` of them."""
        with self.lock:
            campaign = self.campaigns.get(campaign_id)
            if campaign is None:
                raise KeyError(campaign_id)
            test_rows = np.flatnonzero(campaign.actions != 1)
            _, first = np.unique(campaign.customers[test_rows], return_index=True)
            rows = test_rows[np.sort(first)]
            if customers is not None:
                if customers < 0:
                    raise ValueError("customers must be >= 0")
                if customers < rows.shape[0]:
                    rng = np.random.default_rng([self.seed, 0xCA9C, campaign_id, customers])
                    rows = np.sort(rng.choice(rows, size=customers, replace=False))
            campaign.cancelled_at = now
            campaign.cancelled_wall = wall
            campaign.cancelled_rows = rows
            return campaign


def _ascii(text: str) -> str:
    """Lower-case ASCII form of a name for e-mail addresses (``"Çağla"`` -> ``"cagla"``)."""
    text = text.replace("ı", "i").replace("İ", "I").replace(" ", "")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
