"""Change rows' JSON built column by column (``sync.json_text``): the text msgspec writes for each row's dict."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from optimove_netmera.sync.json_text import cell_texts, json_array, object_texts, presence

STRINGS = ['say "hi"', "back\\slash", "tab\there\nnewline", "bell\x07\x1f", "é ü 日本", "\u2028\x7f", "", "plain"]


def expected(frame: pd.DataFrame) -> list[str]:
    """Each row's non-empty cells as a dict (whole numbers as ints), encoded by msgspec: computed cell by cell."""
    out = []
    for _, row in frame.astype(object).iterrows():
        values = {}
        for name, cell in row.items():
            if cell is None or cell is pd.NA or (isinstance(cell, float) and math.isnan(cell)):
                continue
            if isinstance(cell, float) and cell.is_integer():
                cell = int(cell)
            elif isinstance(cell, np.integer | np.bool_):
                cell = cell.item()
            values[name] = cell
        out.append(msgspec.json.encode(values).decode())
    return out


def mixed_frame() -> pd.DataFrame:
    n = len(STRINGS)
    return pd.DataFrame(
        {
            "name": pd.array(STRINGS, dtype="str"),
            "ltv": [1.0, 1.5, -0.0, 1e20, float("nan"), 1e-7, 123456789.123, -2.5e-300],
            "vip": pd.array([True, False, None, True, None, False, True, None], dtype="boolean"),
            "dob": pd.array([0, None, -86_400_000, 2**62, None, 1, 7, None], dtype="Int64"),
            "note": pd.Series([None, {"x": 1}, "z", None, None, None, 3, None], dtype=object),
            "plain": pd.array(["a", None, "b", None, None, "c", None, None], dtype="str"),
        },
        index=[f"c{i}" for i in range(n)],
    )


def test_objects_are_what_msgspec_writes_for_each_rows_dict() -> None:
    frame = mixed_frame()
    frame.iloc[4] = None  # a row with no value at all, between others: "{}" and every row still in its place
    texts = object_texts(frame)
    assert texts == expected(frame)
    assert texts[4] == "{}"
    assert [msgspec.json.decode(t).get("name") for t in texts] == [*STRINGS[:4], None, *STRINGS[5:]]


def test_a_whole_number_beyond_int64_is_its_exact_integer() -> None:
    texts = object_texts(pd.DataFrame({"n": [1e20, -(2.0**63), 2.0**63, 9.5]}))
    assert texts == [
        '{"n":100000000000000000000}',
        '{"n":-9223372036854775808}',
        '{"n":9223372036854775808}',
        '{"n":9.5}',
    ]


@pytest.mark.parametrize("size", [1, 50_000])
def test_large_columns_escape_only_where_needed(size: int) -> None:
    rng = np.random.default_rng(7)
    words = np.array(["Ada", "Grace", "O'Neil", "Zoë", "日本"], dtype=object)[rng.integers(0, 5, size)]
    words[rng.integers(0, size, max(1, size // 1000))] = 'quote " inside'
    frame = pd.DataFrame(
        {
            "name": pd.array(words, dtype="str"),
            "score": np.where(rng.random(size) < 0.3, np.nan, rng.integers(0, 100, size) / 4),
            "opt": pd.array(rng.random(size) < 0.5, dtype="boolean"),
        }
    )
    assert object_texts(frame) == expected(frame)


def test_cells_and_empty_frames() -> None:
    assert cell_texts(pd.Series([True, None, False], dtype="boolean")).to_pylist() == ["true", None, "false"]
    assert cell_texts(pd.Series(["a\u0000b", None], dtype="str")).to_pylist() == ['"a\\u0000b"', None]
    for special in ("\n", "\t", "\x1f", '"', "\\"):  # each alone in its column: found without the others' help
        text = f"a{special}b"
        written = cell_texts(pd.Series([text, "c"], dtype="str")).to_pylist()
        assert written == [msgspec.json.encode(text).decode(), '"c"']
    assert object_texts(pd.DataFrame({"a": pd.Series([], dtype="float64")})) == []
    assert object_texts(pd.DataFrame(index=range(2))) == ["{}", "{}"]


def test_presence_groups_rows_by_the_columns_filled() -> None:
    filled = np.array([[True, False, True], [False, False, False], [True, False, True], [False, True, False]])
    codes, sets = presence(filled, ["a", "b", "c"])
    assert [sets[c] for c in codes.tolist()] == [("a", "c"), (), ("a", "c"), ("b",)]
    assert len(sets) == 3
    wide = np.zeros((2, 70), dtype=bool)  # more columns than a 64-bit key holds
    wide[0, [0, 69]] = True
    names = [f"n{j}" for j in range(70)]
    codes, sets = presence(wide, names)
    assert [sets[c] for c in codes.tolist()] == [("n0", "n69"), ()]


def test_a_json_array_is_what_msgspec_writes_for_the_list() -> None:
    rng = np.random.default_rng(11)
    many = ["".join(chr(c) for c in rng.integers(0, 0x3000, rng.integers(0, 4))) for _ in range(5000)]
    for values in ([], [""], ["plain"], STRINGS, *([f"a{c}b"] for c in ("\n", "\x00", "\x1f", '"', "\\")), many):
        expected_text = msgspec.json.encode(values)
        assert json_array(pa.array(values, pa.large_string())) == expected_text
        assert json_array(pa.array(values, pa.string())) == expected_text
        assert json_array(pa.array(["skipped", *values], pa.large_string()).slice(1)) == expected_text
    with pytest.raises(ValueError, match="null"):  # it would drop out of the array, shifting the rest
        json_array(pa.array(["a", None, "b"], pa.large_string()))
