"""The user-sync oracle (``sync_oracle``) against literal values, and the code under test against the oracle."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from optimove_netmera.settings import ExtIdTransform
from optimove_netmera.sync.transform import coerce_column, json_value
from sync_oracle import ABSENT, ext_id, netmera_value

# (type, raw Optimove value, the Netmera value by hand; ABSENT = not in the profile)
LITERAL: list[tuple[str, str | None, Any]] = [
    ("string", "Ada", "Ada"),
    ("string", " Ada ", "Ada"),
    ("string", "0", "0"),
    ("string", "None", "None"),  # a real value, not Optimove's empty marker
    ("string", "nan", "nan"),
    ("string", "Nan", "Nan"),  # a first name
    ("string", "NULL", ABSENT),
    ("string", "null", ABSENT),
    ("string", "", ABSENT),
    ("string", None, ABSENT),
    ("number", "12", 12),
    ("number", "12.50", 12.5),
    ("number", "-3", -3),
    ("number", "+4", 4),
    ("number", ".5", 0.5),
    ("number", "1e3", 1000),
    ("number", " 7 ", 7),
    ("number", "NULL", ABSENT),
    ("number", "x", ABSENT),
    ("number", "twelve", ABSENT),
    ("number", "12,5", ABSENT),
    ("number", "1_000", ABSENT),
    ("number", "0x10", ABSENT),
    ("number", "nan", ABSENT),
    ("number", "inf", ABSENT),
    ("number", "1e400", ABSENT),
    ("boolean", "true", True),
    ("boolean", "TRUE", True),
    ("boolean", "yes", True),
    ("boolean", "Y", True),
    ("boolean", "t", True),
    ("boolean", "1", True),
    ("boolean", "false", False),
    ("boolean", "no", False),
    ("boolean", "N", False),
    ("boolean", "f", False),
    ("boolean", "0", False),
    ("boolean", "maybe", ABSENT),
    ("boolean", "2", ABSENT),
    ("boolean", "NULL", ABSENT),
    ("date", "1970-01-01", 0),
    ("date", "1973-05-10", 105840000000),
    ("date", "2024-01-05", 1704412800000),
    ("date", "2024-01-05 13:45:00", 1704412800000),
    ("date", "1969-12-31", -86400000),
    ("date", "2024-02-30", ABSENT),
    ("date", "20240105", ABSENT),
    ("date", "05/01/2024", ABSENT),
    ("date", "2024-01-05T13:45:00Z", 1704412800000),
    ("date", "2024-01-05T13:45:00.123+02:00", 1704412800000),
    ("date", "2024-01-05 13:45", 1704412800000),
    ("date", "2024-01-05xyz", ABSENT),  # a day followed by anything but a time is not a date
    ("date", "2024-1-5", ABSENT),  # YYYY-MM-DD: two-digit month and day
    ("date", "2024-01-05 1:2", ABSENT),
    ("date", "NULL", ABSENT),
]


def _code(kind: str, raw: str | None) -> Any:
    """What ``transform.coerce_column`` makes of one value, as Netmera receives it (ABSENT for None)."""
    values, _ = coerce_column(pd.Series([raw], dtype="str" if raw is not None else object), kind)
    value = json_value(values.iloc[0])
    return ABSENT if value is None else value


@pytest.mark.parametrize(("kind", "raw", "want"), LITERAL)
def test_oracle_matches_hand_converted_values(kind: str, raw: str | None, want: Any) -> None:
    got = netmera_value(raw, kind)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("kind", "raw", "want"), LITERAL)
def test_transform_agrees_with_the_oracle(kind: str, raw: str | None, want: Any) -> None:
    got = _code(kind, raw)
    assert got == netmera_value(raw, kind) and type(got) is type(want)


@pytest.mark.parametrize(
    ("settings", "customer_id", "want"),
    [
        ({}, "C0000001", "C0000001"),
        ({"prefix": "opt-", "suffix": "@x", "case": "lower"}, "C0000001", "opt-c0000001@x"),
        ({"case": "upper"}, " ab12 ", "AB12"),
        ({"prefix": "P"}, "c1", "Pc1"),
    ],
)
def test_ext_id_oracle_and_settings_agree(settings: dict[str, str], customer_id: str, want: str) -> None:
    assert ext_id(customer_id, **settings) == want
    assert ExtIdTransform(**settings).apply(customer_id) == want
