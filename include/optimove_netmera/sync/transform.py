"""Transform staged Optimove values into Netmera profile values, vectorised with pandas.

Coercion per target type (``string``, ``number``, ``boolean``, ``date``); values that cannot be coerced are
dropped and counted by reason (``invalid_number``, ``invalid_boolean``, ``invalid_date``). Empty values
(``None``, ``""``, Optimove's ``"NULL"``) are *empty*: an attribute that was delivered before and is empty now is
unset, never written as null. Dates go to Netmera the way its profiles hold them: epoch milliseconds (UTC).

Each customer gets a stable fingerprint of its mapped values (:func:`fingerprints`), compared with the snapshot
of what was last delivered to decide who changed; and a fingerprint of its raw values (:func:`raw_fingerprints`),
stored beside it, so that a customer whose raw values are the ones delivered last time is known unchanged without
being coerced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from optimove_netmera.settings import AttributeMapping

# Optimove's empty value is "NULL" (any case) or blank; "None"/"nan" are real strings (a first name "Nan").
# Missing cells stay missing through ``astype("str")`` (pandas 3), so no stringified null needs catching.
EMPTY_STRINGS = frozenset({"", "null"})
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_TRUE_ARROW = pa.array(sorted(_TRUE), pa.large_string())
_FALSE_ARROW = pa.array(sorted(_FALSE), pa.large_string())
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# A date is YYYY-MM-DD, optionally followed by a time (Optimove's "YYYY-MM-DD HH:MM[:SS]", ISO 8601 with "T",
# fractions and a zone); the day is the one written. Anything else ("2024-1-5", "2024-01-05xyz") is invalid_date.
_DATE = r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
INVALID = "\x00invalid"
HASH_VERSION = "h1"
# The raw fingerprint's version: part of its seed, so bumping it makes every customer's raw values look new once.
# Bump it whenever what a raw value coerces to changes (``coerce_column`` and the constants above): equal raw values
# must mean equal coerced values. ``tests/unit/test_transform.py`` pins the coercion code to this version.
RAW_VERSION = "r1"


@dataclass
class Transformed:
    """Coerced values (one column per Netmera attribute, NaN/None = empty) plus invalid masks and counts."""

    values: pd.DataFrame
    invalid: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)


def coerce_column(raw: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """Coerce one column; returns (values with None for empty/invalid, mask of invalid non-empty cells)."""
    text = raw.astype("str").str.strip()  # Arrow-backed strings: vectorised, compact
    empty = (text.isna() | text.str.lower().isin(EMPTY_STRINGS)).to_numpy(dtype=bool)
    empty = pd.Series(empty, index=raw.index)
    if kind == "string":
        return text.where(~empty, pd.NA), pd.Series(False, index=raw.index)
    if kind == "number":
        num = pd.Series(_to_float(text, empty), index=raw.index)
        invalid = ~empty & ~np.isfinite(num)
        return num.where(~invalid), invalid
    if kind == "boolean":
        lower = pc.utf8_lower(pa.array(text, type=pa.large_string()))
        true = pc.fill_null(pc.is_in(lower, value_set=_TRUE_ARROW), False).to_numpy(zero_copy_only=False)
        false = pc.fill_null(pc.is_in(lower, value_set=_FALSE_ARROW), False).to_numpy(zero_copy_only=False)
        values = pd.Series(pd.arrays.BooleanArray(true, ~(true | false)), index=raw.index)
        invalid = ~empty & values.isna()
        return values, invalid
    if kind == "date":
        arr = pa.array(text.where(~empty), type=pa.large_string())
        shaped = pc.fill_null(pc.match_substring_regex(arr, _DATE), False).to_numpy(zero_copy_only=False)
        day = pd.to_datetime(text.where(~empty & shaped).str.slice(0, 10), format="%Y-%m-%d", errors="coerce", utc=True)
        invalid = ~empty & day.isna()
        millis = pd.Series(day.dt.as_unit("ms").astype("int64"), index=raw.index).astype("Int64")
        return millis.where(day.notna(), pd.NA), invalid
    raise ValueError(f"unknown attribute type {kind!r}")


def _to_float(text: pd.Series, empty: pd.Series) -> np.ndarray:
    """Decimal strings to float64 (NaN for empty or not a number), in Arrow: 5x faster than ``pd.to_numeric``.

    Only plain decimal and exponent forms are numbers (as for ``pd.to_numeric``); should Arrow still refuse a
    value, the column is parsed by pandas instead.
    """
    present = text.where(~empty)
    arr = pa.array(present, type=pa.large_string())
    numeric = pc.fill_null(pc.match_substring_regex(arr, _NUMBER), False)
    try:
        parsed = pc.cast(pc.if_else(numeric, arr, pa.scalar(None, pa.large_string())), pa.float64())
    except pa.ArrowInvalid:
        return pd.to_numeric(present, errors="coerce").astype("float64").to_numpy()
    return parsed.to_numpy(zero_copy_only=False)


def transform(raw: pd.DataFrame, mapping: Sequence[AttributeMapping]) -> Transformed:
    """Coerce every mapped column of ``raw`` (columns named by the Optimove attribute, index = customer id)."""
    values: dict[str, pd.Series] = {}
    invalid: dict[str, pd.Series] = {}
    dropped: dict[str, int] = {}
    positions = pd.RangeIndex(len(raw))  # coerced by position: aligning on a string index is slow
    for attr in mapping:
        if attr.optimove in raw:
            column = raw[attr.optimove].set_axis(positions)
        else:
            column = pd.Series(None, index=positions, dtype=object)
        coerced, bad = coerce_column(column, attr.type)
        values[attr.netmera] = coerced
        invalid[attr.netmera] = bad
        n_bad = int(bad.sum())
        if n_bad:
            reason = f"invalid_{attr.type}"
            dropped[reason] = dropped.get(reason, 0) + n_bad
    index = raw.index
    return Transformed(pd.DataFrame(values).set_axis(index), pd.DataFrame(invalid).set_axis(index), dropped)


_EMPTY_INT = np.iinfo(np.int64).min
_INVALID_HASH = np.uint64(0x9E3779B97F4A7C15)


def _column_hash(col: pd.Series) -> np.ndarray:
    """uint64 hash per cell, with empty cells hashing to one fixed value per dtype family."""
    if pd.api.types.is_float_dtype(col.dtype):
        return pd.util.hash_array(np.nan_to_num(col.to_numpy(dtype="float64"), nan=np.inf))
    if isinstance(col.dtype, pd.BooleanDtype | pd.Int64Dtype):
        return pd.util.hash_array(col.astype("Int64").fillna(_EMPTY_INT).to_numpy(dtype="int64"))
    # Strings: hash each distinct value once (factorize is Arrow-native), then spread the hashes by code.
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    hashed = pd.util.hash_array(np.append(np.asarray(uniques, dtype=object), ""), categorize=False)
    return hashed[np.where(codes < 0, len(uniques), codes)]


def fingerprint_values(t: Transformed) -> np.ndarray:
    """A stable 64-bit fingerprint per customer of its coerced mapped values (invalid cells marked)."""
    combined = np.full(len(t.values), np.uint64(0x345678), dtype=np.uint64)
    mult = np.uint64(1000003)
    with np.errstate(over="ignore"):
        for i, name in enumerate(t.values.columns):
            h = np.where(t.invalid[name].to_numpy(dtype=bool), _INVALID_HASH, _column_hash(t.values[name]))
            combined = (combined ^ h) * mult
            mult += np.uint64(82520 + 2 * (len(t.values.columns) - i))
    return combined


def format_fingerprint(value: int) -> str:
    """The stored form of a fingerprint, e.g. ``h1:09af...`` (the prefix names the hash version)."""
    return f"{HASH_VERSION}:{value:016x}"


def parse_fingerprints(stored: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stored fingerprints back to uint64, with a mask of those of this hash version (others never match).

    A raw fingerprint stored after it (see :func:`format_fingerprints`) is ignored here. Vectorised: the valid ones'
    hex digits are joined and read as big-endian 64-bit words in one pass."""
    if not len(stored):
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
    arr = pa.array(stored, type=pa.large_string())
    pattern = rf"^{HASH_VERSION}:[0-9a-fA-F]{{16}}(?::{RAW_VERSION}:[0-9a-fA-F]{{16}})?$"
    ok = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
    values = np.zeros(len(stored), dtype=np.uint64)
    start = len(HASH_VERSION) + 1
    digits = pc.utf8_slice_codeunits(pc.filter(arr, ok), start, start + 16)
    if len(digits):
        words = np.frombuffer(bytes.fromhex("".join(digits.to_pylist())), dtype=">u8")
        values[ok.to_numpy(zero_copy_only=False)] = words
    return values, ok.to_numpy(zero_copy_only=False)


_RAW_SEPARATOR = pa.scalar("\x1f", pa.large_string())
_RAW_JOIN = pc.JoinOptions(null_handling="replace", null_replacement="")
_LENGTH_MULT = np.uint64(0x9E3779B97F4A7C15)


def raw_seed(mapping: Sequence[AttributeMapping]) -> int:
    """The raw fingerprints' seed: the versions and the mapping (a changed mapping makes every customer look new)."""
    signature = json.dumps([HASH_VERSION, RAW_VERSION, [[a.optimove, a.netmera, a.type] for a in mapping]])
    return int.from_bytes(hashlib.blake2b(signature.encode(), digest_size=8).digest(), "big")


def raw_fingerprints(raw: pd.DataFrame, mapping: Sequence[AttributeMapping]) -> np.ndarray:
    """A 64-bit fingerprint per customer of its raw mapped values, as read (before any coercion).

    Equal raw values (and an equal mapping, see :func:`raw_seed`) give equal coerced values, so a customer whose raw
    fingerprint is the one stored with its snapshot is unchanged. Computed in Arrow: the row's values joined, each
    value's length (-1: missing) mixed in, so neither a separator inside a value nor a missing value against an
    empty one can make two different rows look alike.
    """
    n = len(raw)
    columns, layout = [], np.zeros(n, dtype=np.uint64)
    mult = np.uint64(1)
    with np.errstate(over="ignore"):
        for attr in mapping:
            if attr.optimove in raw:
                column = raw[attr.optimove]
                if not isinstance(column.dtype, pd.StringDtype):
                    column = column.astype("str")
                # the column's array, not the Series: pyarrow probing a Series builds its 1M-id index's hash table
                arr = pa.array(column.array, type=pa.large_string(), from_pandas=True)
            else:
                arr = pa.nulls(n, pa.large_string())
            columns.append(arr)
            lengths = pc.fill_null(pc.binary_length(arr), -1).to_numpy(zero_copy_only=False).astype(np.int64)
            mult = mult * _LENGTH_MULT
            layout += (lengths + 1).astype(np.uint64) * mult
        joined = pc.binary_join_element_wise(*columns, _RAW_SEPARATOR, options=_RAW_JOIN)
        # as bytes objects: the same hashes as the strings (their UTF-8), without decoding them (3x faster)
        text = pd.util.hash_array(joined.cast(pa.large_binary()).to_numpy(zero_copy_only=False), categorize=False)
        return (text ^ pd.util.hash_array(layout)) * np.uint64(1000003) ^ np.uint64(raw_seed(mapping))


def _hex_digits(values: np.ndarray) -> pa.Array:
    """Each uint64 as 16 lower-case hex digits (a string array), written by one ``bytes.hex`` of the array."""
    digits = np.asarray(values, dtype=">u8").tobytes().hex().encode()
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(digits)])
    return fixed.cast(pa.binary()).cast(pa.string())


def format_fingerprints(coerced: np.ndarray, raw: np.ndarray) -> list[str]:
    """The stored form of each customer's two fingerprints, e.g. ``h1:09af...:r1:77c0...``."""
    if len(coerced) != len(raw):
        raise ValueError(f"{len(coerced)} coerced fingerprints for {len(raw)} raw ones")
    if not len(coerced):
        return []
    text = pa.large_string()
    head, nothing = pa.scalar(f"{HASH_VERSION}:", text), pa.scalar("", text)
    # the raw part as the snapshot comparison writes it (:func:`raw_parts`): the two must match byte for byte
    return pc.binary_join_element_wise(head, _hex_digits(coerced).cast(text), raw_parts(raw), nothing).to_pylist()


def raw_parts(values: np.ndarray) -> pa.Array:
    """:func:`format_raw` of each raw fingerprint in ``values`` (a large string array), written in Arrow."""
    text = pa.large_string()
    head, nothing = pa.scalar(f":{RAW_VERSION}:", text), pa.scalar("", text)
    return pc.binary_join_element_wise(head, _hex_digits(values).cast(text), nothing)


def raw_part(stored: str) -> str:
    """The raw fingerprint's part of a stored fingerprint (compare with :func:`format_raw`)."""
    return stored[-RAW_PART_LENGTH:]


def format_raw(value: int) -> str:
    """The part of a stored fingerprint that holds the raw fingerprint ``value``: ``:r1:`` and 16 hex digits."""
    return f":{RAW_VERSION}:{value:016x}"


RAW_PART_LENGTH = len(format_raw(0))  # a stored fingerprint ends with its raw part: ":r1:" and 16 hex digits


def fingerprints(t: Transformed) -> pd.Series:
    """:func:`fingerprint_values` in their stored form, by customer."""
    return pd.Series(
        [format_fingerprint(h) for h in fingerprint_values(t).tolist()], index=t.values.index, dtype=object
    )


def json_value(value: object) -> object:
    """A coerced cell as the JSON value Netmera receives (ints stay ints; NaN/NA is None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else float(value)
    return value
