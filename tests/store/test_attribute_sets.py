"""Attribute sets as bits (revision 0009): the numbering, the encoding, and the conversion of stored rows."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from optimove_netmera.store import AttributeName, dispose_engines, get_engine
from optimove_netmera.store.attribute_sets import AttributeSets
from optimove_netmera.store.engine import downgrade, migrate

# Nine names: three hex digits' worth of bits, so a set spans digits and has zeros between them.
NAMES = [f"attr{i}" for i in range(9)]
LISTS = {
    "none": [],
    "first": ["attr0"],
    "last": ["attr8"],
    "gap": ["attr1", "attr6"],
    "all": NAMES,
}


def expected_bits(names: list[str]) -> str:
    """The hex of the bits of ``names``, numbered in name order from bit 0 (computed here, not by the code)."""
    return format(sum(2 ** NAMES.index(n) for n in names), "x")


def test_stored_lists_become_bits_and_come_back(db_url: str) -> None:
    """Rows written at 0008 (JSON lists) read the same sets at 0009 (bits), and again as lists after a downgrade."""
    assert migrate(db_url, "0008") == "0008"
    engine = get_engine(db_url)
    with engine.begin() as conn:
        run = conn.execute(sa.text("INSERT INTO sync_runs (dag_id, dag_run_id) VALUES ('d', 'r') RETURNING id"))
        run_id = run.scalar_one()
        for key, names in LISTS.items():
            present = json.dumps(names)
            conn.execute(
                sa.text(
                    "INSERT INTO customer_snapshot (customer_id, ext_id, attr_hash, present_attrs) "
                    "VALUES (:c, :c, 'h', :p)"
                ),
                {"c": key, "p": present},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO sync_changes (sync_run_id, customer_id, ext_id, new_hash, present_attrs) "
                    "VALUES (:r, :c, :c, 'h', :p)"
                ),
                {"r": run_id, "c": key, "p": present},
            )
    dispose_engines()

    assert migrate(db_url) == "0009"
    engine = get_engine(db_url)
    with engine.connect() as conn:
        numbered = conn.execute(sa.select(AttributeName.name).order_by(AttributeName.id)).scalars().all()
        sets = AttributeSets.load(conn)
        for table in ("customer_snapshot", "sync_changes"):
            bits = dict(conn.execute(sa.text(f"SELECT customer_id, present_bits FROM {table}")).tuples().all())
            assert bits == {key: expected_bits(names) for key, names in LISTS.items()}, table
            assert {key: list(sets.decode(b)) for key, b in bits.items()} == LISTS, table
    assert numbered == NAMES
    dispose_engines()

    assert downgrade(db_url, "0008") == "0008"
    with get_engine(db_url).connect() as conn:
        for table in ("customer_snapshot", "sync_changes"):
            rows = conn.execute(sa.text(f"SELECT customer_id, present_attrs FROM {table}")).tuples().all()
            lists = {key: json.loads(p) if isinstance(p, str) else p for key, p in rows}
            assert lists == LISTS, table
    dispose_engines()


def test_a_name_keeps_its_bit_and_only_new_names_are_added(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        first = AttributeSets.load(conn, ["b", "a"])
        assert first.encode(["a"]) == "1" and first.encode(["b"]) == "2"  # new names in name order
    with engine.begin() as conn:
        again = AttributeSets.load(conn, ["c", "a", "b"])
        assert (again.encode(["a"]), again.encode(["b"]), again.encode(["c"])) == ("1", "2", "4")
        assert again.decode("7") == ("a", "b", "c") and again.decode("0") == ()
        # no insert for names that have their bit: PostgreSQL's sequence would skip a value for each
        assert conn.execute(sa.select(sa.func.max(AttributeName.id))).scalar_one() == 3


def test_a_name_without_a_bit_or_a_bit_without_a_name_is_an_error(db_url: str) -> None:
    migrate(db_url)
    with get_engine(db_url).begin() as conn:
        sets = AttributeSets.load(conn, ["a"])
    with pytest.raises(ValueError, match="'z' has no bit yet"):
        sets.encode(["a", "z"])
    with pytest.raises(ValueError, match="bit 1 of '3' names no attribute"):
        sets.decode("3")
