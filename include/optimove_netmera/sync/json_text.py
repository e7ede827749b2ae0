"""Coerced columns as JSON text, built column by column in Arrow instead of a Python dict per customer.

A first sync writes a change row for every customer; building each row's ``set_attrs`` as a dict and encoding it
took over a third of the plan's diff. Here each column becomes the JSON text of its cells at once, and the cells of
a row are joined into its object. The text is byte for byte what the JSON columns' encoder (msgspec) writes for
the dict of the row's non-empty values in column order (``tests/unit/test_json_text.py`` compares the two): the
few cells Arrow cannot write the same way (strings holding a quote, a backslash or a control character; numbers
that are not whole) are encoded by msgspec itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_TEXT = pa.large_string()
_ESCAPED = r'["\\\x00-\x1f]'  # what msgspec writes escaped in a string; the rest (UTF-8 too) goes as it is
_ESCAPED_BYTES = np.zeros(256, dtype=bool)
_ESCAPED_BYTES[[*range(0x20), ord('"'), ord("\\")]] = True
_INT64_LIMIT = 2.0**63  # whole floats below it in magnitude are written through int64
_NO_NULLS = pc.JoinOptions(null_handling="replace", null_replacement="")
_QUOTE, _OPEN, _CLOSE, _NOTHING = (pa.scalar(c, _TEXT) for c in ('"', "{", "}", ""))


def _encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _replace(texts: pa.Array, mask: np.ndarray, replacements: list[str]) -> pa.Array:
    """``texts`` with the cells where ``mask`` is set replaced, in order, by ``replacements``."""
    if not replacements:
        return texts
    return pc.replace_with_mask(texts, pa.array(mask), pa.array(replacements, _TEXT))


def _float_texts(column: pd.Series) -> pa.Array:
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    empty = np.isnan(values)
    with np.errstate(invalid="ignore"):
        small = np.isfinite(values) & (np.mod(values, 1) == 0) & (np.abs(values) < _INT64_LIMIT)
    whole = np.where(small, values, 0).astype(np.int64)
    texts = pc.cast(pa.array(whole, mask=~small), _TEXT)  # a whole number is written as an integer
    rest = ~small & ~empty
    cells = values[rest].tolist()
    # the others as msgspec writes them: one array of floats, split at its commas (no float's text holds one);
    # a whole number too large for int64 as the exact integer
    encoded = msgspec.json.encode([int(v) if v.is_integer() else v for v in cells]).decode()[1:-1]
    return _replace(texts, rest, encoded.split(",") if cells else [])


def _string_texts(values: pa.Array | pa.ChunkedArray, head: str) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(_TEXT)
    texts = pc.binary_join_element_wise(pa.scalar(head + '"', _TEXT), values, _QUOTE, _NOTHING)
    data = values.buffers()[2]
    if data is None or not _ESCAPED_BYTES[np.frombuffer(data, np.uint8)].any():
        return texts  # no byte of the column needs escaping (a sliced array's buffer may hold more: then looked at)
    special = pc.fill_null(pc.match_substring_regex(values, _ESCAPED), False).to_numpy(zero_copy_only=False)
    cells = values.filter(pa.array(special)).to_pylist()
    return _replace(texts, special, [head + _encode(c) for c in cells])


def _texts(column: pd.Series, head: str) -> pa.Array:
    """``head`` and the JSON text of each cell of a coerced column (a large string array); null where empty."""
    dtype = column.dtype
    if pd.api.types.is_string_dtype(dtype) and hasattr(column.array, "__arrow_array__"):
        return _string_texts(pa.array(column.array), head)
    if pd.api.types.is_float_dtype(dtype):
        texts = _float_texts(column)
    elif pd.api.types.is_bool_dtype(dtype):
        texts = pc.if_else(pa.array(column.array, pa.bool_()), "true", "false").cast(_TEXT)
    elif pd.api.types.is_integer_dtype(dtype):
        texts = pc.cast(pa.array(column.array, pa.int64()), _TEXT)
    else:
        cells = column.astype(object).where(column.notna(), None).tolist()
        texts = pa.array([None if c is None else _encode(c) for c in cells], _TEXT)
    return pc.binary_join_element_wise(pa.scalar(head, _TEXT), texts, _NOTHING) if head else texts


def cell_texts(column: pd.Series) -> pa.Array:
    """The JSON text of each cell of a coerced column (a large string array), null where the cell is empty."""
    return _texts(column, "")


def object_texts(values: pd.DataFrame) -> list[str]:
    """Each row's non-empty cells as one JSON object, keyed by column name in column order (``{}`` for none)."""
    if values.empty:
        return ["{}"] * len(values)
    parts = []
    for name in values.columns:
        # each part starts with its own comma: Arrow's null-skipping join drops rows with no cell (pyarrow 26)
        parts.append(_texts(values[name], "," + _encode(str(name)) + ":"))
    joined = pc.binary_join_element_wise(*parts, _NOTHING, options=_NO_NULLS)
    objects = pc.binary_join_element_wise(_OPEN, pc.utf8_slice_codeunits(joined, 1), _CLOSE, _NOTHING)
    return objects.to_pylist()


def json_array(values: pa.Array) -> bytes:
    """The JSON text of a string array's values as one array: what msgspec writes for their list. A null has no
    text here (it would drop out of the array silently): refused."""
    if values.null_count:
        raise ValueError(f"json_array: {values.null_count} null value(s); every value must be a string")
    if not len(values):
        return b"[]"
    texts = _string_texts(values, ",")  # each cell ',"…"': the cells' data, end to end, is the array's body
    offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset : texts.offset + len(texts) + 1]
    body = memoryview(texts.buffers()[2])[int(offsets[0]) + 1 : int(offsets[-1])]  # without the first comma
    return b"".join((b"[", body, b"]"))


def presence(filled: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """The set of non-empty columns of each row of ``filled`` (rows x columns, True where a cell has a value).

    Returns a code per row and, per code, the names of those columns in column order: rows share a code exactly
    when the same columns are filled (a table has few such sets)."""
    rows, width = filled.shape
    if width <= 64:
        keys = np.zeros(rows, dtype=np.uint64)
        for j in range(width):
            keys |= filled[:, j].astype(np.uint64) << np.uint64(j)
        distinct, codes = np.unique(keys, return_inverse=True)
        sets = [tuple(n for j, n in enumerate(names) if int(k) >> j & 1) for k in distinct.tolist()]
    else:
        patterns, codes = np.unique(filled, axis=0, return_inverse=True)
        sets = [tuple(n for n, f in zip(names, p.tolist(), strict=True) if f) for p in patterns]
    return codes.reshape(-1), sets
