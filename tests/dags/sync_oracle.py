"""A reference implementation of the user sync's value mapping: the tests' expected Netmera state.

Written from the README ("Configuration": types ``string``, ``number``, ``boolean``, ``date``; dates as epoch
milliseconds; values that cannot be coerced, and empty ones, are absent, never null; Optimove serves ``"NULL"``
for an empty value and its timestamps are UTC) and ``config/optimove_netmera.yaml`` (``ext_id``: prefix, suffix,
case). It deliberately shares no code with ``optimove_netmera.sync.transform``: plain Python, one value at a time.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

ABSENT = object()  # the attribute is not in the Netmera profile (empty or invalid)
# Booleans: the usual spellings of a yes/no flag, any case. (The README names none; these are the ones
# Optimove's own API serves, "true"/"false", plus the yes/no, y/n, t/f and 1/0 forms found in exports.)
TRUE_SPELLINGS = ("true", "t", "yes", "y", "1")
FALSE_SPELLINGS = ("false", "f", "no", "n", "0")
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# YYYY-MM-DD, optionally with a time ("YYYY-MM-DD HH:MM[:SS]" as Optimove writes it, or ISO 8601 with a zone)
DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def is_empty(raw: str | None) -> bool:
    """Optimove's empty value: missing, blank, or its ``"NULL"`` marker."""
    return raw is None or raw.strip() == "" or raw.strip().upper() == "NULL"


def netmera_value(raw: str | None, kind: str) -> object:
    """The value Netmera should hold for one raw Optimove value of a mapped ``kind``, or :data:`ABSENT`."""
    if is_empty(raw):
        return ABSENT
    assert raw is not None
    text = raw.strip()
    if kind == "string":
        return text
    if kind == "number":
        if not NUMBER.fullmatch(text):
            return ABSENT
        number = float(text)
        if not math.isfinite(number):
            return ABSENT
        return int(number) if number.is_integer() else number
    if kind == "boolean":
        if text.lower() in TRUE_SPELLINGS:
            return True
        if text.lower() in FALSE_SPELLINGS:
            return False
        return ABSENT
    if kind == "date":
        match = DATE.fullmatch(text)
        if not match:
            return ABSENT
        try:
            day = dt.datetime(*map(int, match.groups()), tzinfo=dt.UTC)
        except ValueError:  # 2024-02-30 and the like
            return ABSENT
        return (day - EPOCH) // dt.timedelta(milliseconds=1)
    raise ValueError(f"unknown attribute type {kind!r}")


def profile(raw: Mapping[str, str | None], mapping: Iterable[tuple[str, str, str]]) -> dict[str, object]:
    """A customer's expected Netmera profile: ``mapping`` holds (optimove name, netmera name, type)."""
    out = {}
    for optimove, netmera, kind in mapping:
        value = netmera_value(raw.get(optimove), kind)
        if value is not ABSENT:
            out[netmera] = value
    return out


def ext_id(customer_id: str, prefix: str = "", suffix: str = "", case: str = "preserve") -> str:
    """Optimove CustomerID -> Netmera extId (the ``ext_id`` settings)."""
    body = customer_id.strip()
    body = {"preserve": body, "lower": body.lower(), "upper": body.upper()}[case]
    return prefix + body + suffix


def read_csv_export(path: Path) -> dict[str, dict[str, str]]:
    """A customer export (CSV, ``CustomerID`` column) as ``{customer id: {attribute: raw value}}``."""
    with path.open(newline="", encoding="utf-8") as fh:
        return {row.pop("CustomerID"): row for row in csv.DictReader(fh)}
