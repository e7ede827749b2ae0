"""The diff coerces only the customers whose raw values changed since their last delivery (SQLite and PostgreSQL).

Every snapshot row stores two fingerprints: of the coerced values (what Netmera holds) and of the raw values they came
from. A customer whose raw values are the ones delivered is unchanged without being coerced; one whose raw values
changed is coerced and compared by its coerced values, so a cosmetic change ("5" to " 5") sends nothing and stores the
new raw fingerprint. The expected counts are computed here from the generated data; ``transform`` is wrapped to
count the customers it coerces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from optimove_netmera.settings import Settings, load_settings
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.store.models import CustomerSnapshot, SyncChange, SyncRun
from optimove_netmera.sync import plan
from optimove_netmera.sync.transform import format_raw, raw_fingerprints, raw_parts
from sqlalchemy.engine import Connection, Engine
from sync_plan_helpers import deliver

N = 300


def settings(**overlay: Any) -> Settings:
    return load_settings(overlay={"sync": {"memory_budget_mb": 8, "batch_size": 100}, **overlay})


def customers(s: Settings) -> pd.DataFrame:
    """``N`` customers with every mapped attribute set (numbers as plain integers)."""
    kinds = {"string": lambda i: f"v-{i}", "number": str, "boolean": lambda i: "true", "date": lambda i: "2020-01-02"}
    rows: dict[str, list[str]] = {"CustomerID": [f"C{i:05d}" for i in range(N)]}
    for a in s.attributes:
        rows[a.optimove] = [kinds[a.type](i) for i in range(N)]
    return pd.DataFrame(rows)


class Counted:
    """Wraps ``plan.transform``: how many customers it coerced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows, real = 0, plan.transform

        def transform(raw: pd.DataFrame, mapping: Any) -> Any:
            self.rows += len(raw)
            return real(raw, mapping)

        monkeypatch.setattr(plan, "transform", transform)

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows


def run(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return conn.execute(
            sa.insert(SyncRun).values(dag_id="d", dag_run_id=name, status="running").returning(SyncRun.id)
        ).scalar_one()


def first_sync(db_url: str, tmp_path: Path, s: Settings) -> tuple[Engine, Path, pd.DataFrame]:
    path = tmp_path / "customers.parquet"
    frame = customers(s)
    frame.to_parquet(path)
    migrate(db_url)
    engine = get_engine(db_url)
    first = run(engine, "first")
    assert plan.build_plan(engine, first, s, 1.0, False, None, str(path)).changed == N
    deliver(engine, first)
    return engine, path, frame


def number_column(s: Settings) -> str:
    return next(a.optimove for a in s.attributes if a.type == "number")


def snapshot_hashes(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(CustomerSnapshot.customer_id, CustomerSnapshot.attr_hash)).all())


def test_only_raw_changes_are_coerced_and_a_cosmetic_one_stores_its_new_fingerprint(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings()
    engine, path, frame = first_sync(db_url, tmp_path, s)
    counted = Counted(monkeypatch)
    number = number_column(s)
    real = [7, 70, 170]  # a first name changed: sent
    cosmetic = [3, 30, 130, 230]  # the number written with spaces and a trailing ".0": the same number
    frame.loc[real, "FirstName"] = "changed"
    frame.loc[cosmetic, number] = [f" {i}.0 " for i in cosmetic]
    frame.to_parquet(path)

    dry = plan.build_plan(engine, run(engine, "dry"), s, 1.0, True, None, str(path))
    assert (dry.changed, dry.unchanged, counted.take()) == (len(real), N - len(real), len(real) + len(cosmetic))
    before = snapshot_hashes(engine)

    second = run(engine, "second")
    p = plan.build_plan(engine, second, s, 1.0, False, None, str(path))
    assert (p.changed, p.unchanged, counted.take()) == (len(real), N - len(real), len(real) + len(cosmetic))
    after = snapshot_hashes(engine)
    cosmetic_ids = {f"C{i:05d}" for i in cosmetic}
    # the plan stored the cosmetic customers' new raw fingerprints, and only theirs (the dry run stored none)
    assert {c for c in after if after[c] != before[c]} == cosmetic_ids
    assert all(after[c][:19] == before[c][:19] for c in cosmetic_ids)  # "h1:" and the coerced fingerprint: kept
    deliver(engine, second)

    third = plan.build_plan(engine, run(engine, "third"), s, 1.0, True, None, str(path))
    assert (third.changed, counted.take()) == (0, 0)  # every raw value is the one delivered (or stored) now


def test_a_snapshot_without_raw_fingerprints_is_diffed_by_coerced_values(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot written before raw fingerprints (``h1:`` and 16 hex digits) sends nothing and is completed."""
    s = settings()
    engine, path, _ = first_sync(db_url, tmp_path, s)
    with engine.begin() as conn:
        conn.execute(sa.update(CustomerSnapshot).values(attr_hash=sa.func.substr(CustomerSnapshot.attr_hash, 1, 19)))
    assert all(len(h) == 19 for h in snapshot_hashes(engine).values())
    counted = Counted(monkeypatch)
    p = plan.build_plan(engine, run(engine, "upgraded"), s, 1.0, False, None, str(path))
    assert (p.changed, p.unchanged, counted.take()) == (0, N, N)
    again = plan.build_plan(engine, run(engine, "again"), s, 1.0, True, None, str(path))
    assert (again.changed, counted.take()) == (0, 0)


def test_a_changed_mapping_diffs_every_customer_again(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same raw values under another attribute type coerce to other values: every customer is sent again."""
    s = settings()
    engine, path, _ = first_sync(db_url, tmp_path, s)
    number = number_column(s)
    retyped = [m.model_dump() | ({"type": "string"} if m.optimove == number else {}) for m in s.attributes]
    s2 = settings(attributes=retyped)
    counted = Counted(monkeypatch)
    p = plan.build_plan(engine, run(engine, "retyped"), s2, 1.0, True, None, str(path))
    assert (p.changed, counted.take()) == (N, N)


def test_raw_fingerprints_tell_apart_what_joined_text_would_not() -> None:
    s = settings()
    name, city = s.attributes[0].optimove, s.attributes[1].optimove

    def fp(rows: list[dict[str, Any]]) -> list[int]:
        return raw_fingerprints(pd.DataFrame(rows).astype("str"), s.attributes).tolist()

    pairs = [
        ({name: "a\x1fb", city: "c"}, {name: "a", city: "b\x1fc"}),  # the separator inside a value
        ({name: "", city: "x"}, {name: None, city: "x"}),  # empty against missing
        ({name: "x", city: None}, {name: None, city: "x"}),  # the same text in another attribute
        ({name: "A", city: "x"}, {name: "a", city: "x"}),
    ]
    for left, right in pairs:
        a, b = fp([left, right])
        assert a != b, (left, right)
    assert fp([{name: "a", city: "b"}]) == fp([{name: "a", city: "b"}])


def test_ids_holding_a_nul_are_compared_and_stored_whole_on_sqlite(tmp_path: Path) -> None:
    """``json_each`` would cut an id at a NUL: "C\\x00X" would read and write customer "C"'s row."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    engine = get_engine(url)
    snapshot = [("C", "h1:0000000000000001:r1:0000000000000001"), ("C\x00X", "h1:0000000000000002:r1:0000000000000002")]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(CustomerSnapshot),
            [{"customer_id": c, "ext_id": c, "attr_hash": h, "present_bits": "0"} for c, h in snapshot],
        )
    with engine.connect() as conn:
        pos, stored, present = plan._snapshot_differing(conn, ["C\x00X", "D"], np.array([2, 5], dtype=np.uint64))
    assert (pos.tolist(), stored, present) == ([1], [None], [None])  # "C\x00X" holds raw fingerprint 2; "D" is new
    with engine.begin() as conn:
        plan._refresh_raw(conn, [("C\x00X", "h1:0000000000000002:r1:0000000000000009")])
    assert snapshot_hashes(engine) == dict(snapshot)  # left for the next run, and "C" untouched


def test_raw_parts_are_each_fingerprints_stored_form() -> None:
    values = np.array([0, 1, 2**63, 2**64 - 1, *np.random.default_rng(3).integers(0, 2**63, 100)], dtype=np.uint64)
    assert raw_parts(values).to_pylist() == [format_raw(v) for v in values.tolist()]


def test_ids_json_escapes_are_compared_whole_on_sqlite(tmp_path: Path) -> None:
    """The chunk goes to SQLite as one JSON document: an id holding a quote, a backslash, a control character or
    non-ASCII text is still compared with its own snapshot row."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    engine = get_engine(url)
    ids = ['say "hi"', "back\\slash", "tab\there", "\x1f", "é 日本", "\u2028", "plain"]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(CustomerSnapshot),
            [
                {"customer_id": c, "ext_id": c, "attr_hash": f"h1:{i:016x}{format_raw(i)}", "present_bits": f"{2**i:x}"}
                for i, c in enumerate(ids)
            ],
        )
    raw = np.arange(len(ids), dtype=np.uint64)
    raw[[1, 4]] = 99  # their raw values changed
    with engine.connect() as conn:
        pos, stored, present = plan._snapshot_differing(conn, [*ids, 'new "one"'], np.append(raw, 7))
    assert pos.tolist() == [1, 4, 7]
    assert stored == [f"h1:{1:016x}{format_raw(1)}", f"h1:{4:016x}{format_raw(4)}", None]
    assert present == ["2", "10", None]  # the rows' own sets


class _Backwards:
    """A result whose rows come back in reverse order (SQLite's: the rows as one JSON array)."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def all(self) -> list[Any]:
        return self.result.all()[::-1]

    def scalar_one(self) -> str:
        return json.dumps(json.loads(self.result.scalar_one())[::-1])


def test_each_customer_gets_its_own_values_whatever_order_the_database_answers_in(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL answers the snapshot comparison in its join's order. Every customer's raw values changed (half of
    them only cosmetically), answered backwards: each must still be planned with its own values and compared with its
    own stored fingerprint (one customer's values once went to another)."""
    s = settings()
    engine, path, frame = first_sync(db_url, tmp_path, s)
    number = number_column(s)
    renamed, cosmetic = list(range(0, N, 2)), list(range(1, N, 2))
    frame.loc[renamed, "FirstName"] = [f"new-{i}" for i in renamed]
    frame.loc[cosmetic, number] = [f" {i}.0 " for i in cosmetic]  # the same number: compared, not sent
    frame.to_parquet(path)
    real = Connection.exec_driver_sql

    def exec_driver_sql(self: Connection, statement: str, *args: Any, **kwargs: Any) -> Any:
        result = real(self, statement, *args, **kwargs)
        return _Backwards(result) if "AS s ON s.customer_id" in statement else result

    monkeypatch.setattr(Connection, "exec_driver_sql", exec_driver_sql)
    second = run(engine, "second")
    assert plan.build_plan(engine, second, s, 1.0, False, None, str(path)).changed == len(renamed)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncChange.customer_id, SyncChange.set_attrs).where(SyncChange.sync_run_id == second)
        ).all()
    assert {cid: attrs["name"] for cid, attrs in rows} == {f"C{i:05d}": f"new-{i}" for i in renamed}
