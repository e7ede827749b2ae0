"""A profile request's body, built by the state database: every entry of the batch once, its extId quoted as JSON, its
stored profile text as it is, in extId order, on both databases."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.store import get_engine
from optimove_netmera.store.models import SyncBatch, SyncChange
from optimove_netmera.sync.load import load_batches
from sync_plan_helpers import open_run

# a quote and a backslash must come out escaped; each punctuation mark follows the same prefix, so a collation that
# compares letters and digits first (en_US) orders them as the code points do (Python's sorted, C.UTF-8)
EXT_IDS = [f"E{i:03d}" for i in range(40)] + ['E039"q', "E039\\s", "A-first", "z-last"]
INSERTED = random.Random(7).sample(EXT_IDS, len(EXT_IDS))  # the rows' insertion order; row i sets {"n": i}


class _Capturing:
    """Takes every profile write and keeps its body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes, int]] = []

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        self.bodies.append((call, body, count))
        return count


def _plan(db_url: str, values: dict[str, Any] | None = None) -> tuple[Any, int]:
    """A run with one set batch and one unset batch over EXT_IDS, its rows inserted in a shuffled order; row i
    sets ``{"n": i}`` and ``values``."""
    engine, run_id = open_run(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SyncBatch),
            [{"sync_run_id": run_id, "kind": kind, "batch_no": 0, "size": len(EXT_IDS)} for kind in ("set", "unset")],
        )
        conn.execute(
            sa.insert(SyncChange),
            [
                {
                    "sync_run_id": run_id,
                    "customer_id": f"c-{ext_id}",
                    "ext_id": ext_id,
                    "new_hash": "h",
                    "set_attrs": {"n": i, **(values or {})},
                    "unset_attrs": ["gone"],
                    "present_bits": "1",
                    "set_batch_no": 0,
                    "unset_batch_no": 0,
                }
                for i, ext_id in enumerate(INSERTED)
            ],
        )
    return engine, run_id


def test_a_body_lists_the_batch_in_ext_id_order(db_url: str) -> None:
    engine, run_id = _plan(db_url)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id)).scalars().all()
    client = _Capturing()
    assert load_batches(engine, run_id, ids, client)["batches_sent"] == 2  # type: ignore[arg-type]
    assert all(isinstance(body, bytes) for _, body, _ in client.bodies)
    calls = {call: (json.loads(body), count) for call, body, count in client.bodies}
    assert set(calls) == {"setProfileAttributes", "unsetProfileAttributes"}
    for call, (entries, count) in calls.items():
        assert count == len(entries) == len(EXT_IDS)
        assert [e["extId"] for e in entries] == sorted(EXT_IDS), call
    profiles = {e["extId"]: e["profile"] for e in calls["setProfileAttributes"][0]}
    assert profiles == {ext_id: {"n": INSERTED.index(ext_id)} for ext_id in EXT_IDS}
    assert all(e["profile"] == ["gone"] for e in calls["unsetProfileAttributes"][0])


# outside ASCII: two bytes and three bytes in UTF-8, and a character outside the Basic Multilingual Plane
UNICODE = {"name": "Zoë Ångström", "city": "İstanbul", "mark": "✓", "emoji": "🎉"}
LATIN1 = {"name": "Zoë Ångström", "city": "Besançon"}  # each character has a code in LATIN1


def _sent_profiles(engine: Any, run_id: int) -> dict[str, Any]:
    """Load the run's set batch; the profiles its request carried, by extId, read from the body as UTF-8."""
    with engine.connect() as conn:
        ids = (
            conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id, SyncBatch.kind == "set"))
            .scalars()
            .all()
        )
    client = _Capturing()
    load_batches(engine, run_id, ids, client)  # type: ignore[arg-type]
    [(call, body, _)] = client.bodies
    assert call == "setProfileAttributes" and isinstance(body, bytes)
    return {e["extId"]: e["profile"] for e in json.loads(body.decode("utf-8"))}


def test_a_body_is_utf8_whatever_the_values(db_url: str) -> None:
    engine, run_id = _plan(db_url, UNICODE)
    assert _sent_profiles(engine, run_id) == {e: {"n": INSERTED.index(e), **UNICODE} for e in EXT_IDS}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_body_is_utf8_on_a_connection_in_another_encoding(db_url: str) -> None:
    """psycopg2 hands a UTF-8 connection's text over as bytes; on a LATIN1 connection those bytes would be LATIN1
    (not JSON), so the body is decoded and encoded as UTF-8 there."""
    _, run_id = _plan(db_url, LATIN1)
    latin1 = get_engine(f"{db_url}?client_encoding=LATIN1")
    with latin1.connect() as conn:
        assert conn.connection.dbapi_connection.encoding == "LATIN1"  # type: ignore[union-attr]
    assert _sent_profiles(latin1, run_id) == {e: {"n": INSERTED.index(e), **LATIN1} for e in EXT_IDS}
