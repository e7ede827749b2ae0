"""Coercion, fingerprints and JSON values of the user-sync transform."""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
import pandas as pd
from optimove_netmera.settings import AttributeMapping
from optimove_netmera.sync import transform as transform_module
from optimove_netmera.sync.transform import (
    RAW_VERSION,
    coerce_column,
    fingerprint_values,
    fingerprints,
    format_fingerprint,
    format_fingerprints,
    format_raw,
    json_value,
    parse_fingerprints,
    raw_fingerprints,
    raw_part,
    transform,
)

MAPPING = [
    AttributeMapping(optimove="FirstName", netmera="name", type="string"),
    AttributeMapping(optimove="Age", netmera="age", type="number"),
    AttributeMapping(optimove="IsVIP", netmera="vip", type="boolean"),
    AttributeMapping(optimove="BirthDate", netmera="dob", type="date"),
]


def frame(**cols: list[object]) -> pd.DataFrame:
    return pd.DataFrame(cols, index=[f"c{i}" for i in range(len(next(iter(cols.values()))))])


def test_coercion_and_reasons() -> None:
    raw = frame(
        FirstName=["Ann", "NULL", "", None],
        Age=["34", "x", "NULL", "3.5"],
        IsVIP=["true", "0", "maybe", None],
        BirthDate=["1990-01-02", "bad", "NULL", "2000-02-29 10:00:00"],
    )
    t = transform(raw, MAPPING)
    rows = [[json_value(v) for v in t.values.loc[c]] for c in raw.index]
    assert rows[0] == ["Ann", 34, True, 631238400000]
    assert rows[1] == [None, None, False, None]
    assert rows[3] == [None, 3.5, None, 951782400000]
    assert t.dropped == {"invalid_number": 1, "invalid_boolean": 1, "invalid_date": 1}
    assert t.invalid.loc["c1", "age"] and t.invalid.loc["c2", "vip"] and not t.invalid.loc["c2", "age"]


def test_fingerprints_are_stable_and_sensitive() -> None:
    base = frame(FirstName=["Ann", "Bob"], Age=["34", ""], IsVIP=["true", "false"], BirthDate=["1990-01-02", ""])
    fp = fingerprints(transform(base, MAPPING))
    assert fp.tolist() == fingerprints(transform(base.copy(), MAPPING)).tolist()
    # Empty spellings are the same value; a real change is not; an invalid value differs from empty.
    same = base.copy()
    same.loc["c1", "Age"] = "NULL"
    assert fingerprints(transform(same, MAPPING)).tolist() == fp.tolist()
    changed = base.copy()
    changed.loc["c0", "Age"] = "35"
    assert fingerprints(transform(changed, MAPPING))["c0"] != fp["c0"]
    invalid = base.copy()
    invalid.loc["c1", "Age"] = "abc"
    assert fingerprints(transform(invalid, MAPPING))["c1"] != fp["c1"]
    assert all(h.startswith("h1:") and len(h) == 19 for h in fp)


def test_missing_column_is_empty() -> None:
    t = transform(frame(FirstName=["Ann"]), MAPPING)
    assert [json_value(v) for v in t.values.iloc[0]] == ["Ann", None, None, None]


def test_stored_fingerprints_parse_back() -> None:
    raw = frame(FirstName=["Ann", "Bob", ""], Age=["1", "2", "3"], IsVIP=["y", "n", ""], BirthDate=["", "", ""])
    t = transform(raw, MAPPING)
    values = fingerprint_values(t)
    stored = [format_fingerprint(v) for v in values.tolist()]
    parsed, ok = parse_fingerprints([*stored, "h0:0123456789abcdef", "h1:not-a-hex-value", "h1:00"])
    assert ok.tolist() == [True, True, True, False, False, False]
    assert parsed[:3].tolist() == values.tolist()
    assert parse_fingerprints([])[0].size == 0
    raw = np.array([1, 2**64 - 1, 3], dtype=np.uint64)
    both = format_fingerprints(values, raw)  # with the raw fingerprint after it: the same coerced values
    assert both[1] == f"{stored[1]}:r1:ffffffffffffffff"
    parsed, ok = parse_fingerprints([*both, f"{stored[0]}:r1:0", f"{stored[0]}:r2:0000000000000001"])
    assert ok.tolist() == [True, True, True, False, False] and parsed[:3].tolist() == values.tolist()
    assert [raw_part(b) for b in both] == [format_raw(r) for r in raw.tolist()]
    assert raw_part(stored[0]) != format_raw(0)  # a fingerprint stored without a raw part matches no raw one


def test_raw_version_is_pinned_to_the_coercion_rules() -> None:
    """Equal raw values must coerce to equal values, or the diff would skip a customer whose coerced values changed:
    a change to the coercion rules needs a new RAW_VERSION (every customer is coerced once again)."""
    m = transform_module
    code = (m.coerce_column, m._to_float, m.transform, m._column_hash, m.fingerprint_values)
    rules = [inspect.getsource(f) for f in code]
    rules += [sorted(m.EMPTY_STRINGS), sorted(m._TRUE), sorted(m._FALSE), m._NUMBER, m._DATE, m.HASH_VERSION]
    digest = hashlib.sha256(repr(rules).encode()).hexdigest()[:16]
    assert (RAW_VERSION, digest) == ("r1", "2f70d2629bbdad9b"), (
        "the coercion rules changed: bump RAW_VERSION in sync/transform.py and record the new digest here"
    )


def test_number_and_boolean_edge_spellings() -> None:
    texts = [" 12 ", "-3.5", "+4", "5.", ".5", "1E+05", "1e400", "inf", "1_000", "0x1A", "12abc", "١٢", "1" * 30, ""]
    num, bad = coerce_column(pd.Series(texts, dtype="str"), "number")
    assert num.tolist()[:6] == [12.0, -3.5, 4.0, 5.0, 0.5, 100000.0]
    assert num.tolist()[12] == float("1" * 30)
    assert bad.tolist() == [False] * 6 + [True] * 6 + [False, False], "overflow, inf and non-decimal forms are invalid"
    flags = [" yes", "TRUE", "f", "N", "0", "1", "maybe", "NULL", None]
    values, bad = coerce_column(pd.Series(flags, dtype="str"), "boolean")
    assert str(values.dtype) == "boolean"
    assert values.tolist()[:6] == [True, True, False, False, False, True]
    assert values.isna().tolist()[6:] == [True, True, True] and bad.tolist() == [False] * 6 + [True, False, False]


def test_raw_fingerprints_are_stable_across_releases() -> None:
    """Stored with every snapshot row: another value for the same raw values (a changed hash, join or seed) would
    make every customer look changed once, coerced again and its fingerprint rewritten."""
    mapping = MAPPING[:2]
    raw = pd.DataFrame({"FirstName": ["Ann", "日本", None], "Age": ["1", "", None]}).astype("str")
    assert [f"{v:016x}" for v in raw_fingerprints(raw, mapping).tolist()] == [
        "badb6dbe7df60581",
        "b973934327223c44",
        "6005cb2527e09247",
    ]
