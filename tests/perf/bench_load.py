"""Benchmark of the sync's load step alone (not part of the test run).

    python tests/perf/bench_load.py [--customers 300000] [--rounds 2] [--state-db URL]

``bench_sync.py`` times the load inside a DAG run against the sandbox, which on a shared machine takes much of the
CPU itself (it parses and stores every profile). This isolates what the project's own bookkeeping costs: a run's
plan (N customers x 20 attributes, ~1 KB change rows in batches of 1000) is written straight into a fresh state
DB, then :func:`optimove_netmera.sync.load.load_batches` delivers it at ``sync.load_concurrency`` requests in
flight, as the load task does, against

1. a bare local HTTP peer (``tests/perf/floor.py``: reads each request, answers 200), and
2. the sandbox's Netmera,

each beside its floor: a ``NetmeraClient`` sending the same 1000-profile requests to the same peer with no
bookkeeping. Prints profiles/s, the ratio to each floor, the process's CPU seconds, and the machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from floor import (  # tests/perf/floor.py (the script's own folder is on sys.path)
    against_peers,
    peer_rate,
    step_arguments,
)
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import load_settings
from optimove_netmera.store.attribute_sets import AttributeSets
from optimove_netmera.store.engine import create_state_engine, migrate
from optimove_netmera.store.models import SyncBatch, SyncChange, SyncRun
from optimove_netmera.store.queries import refresh_statistics
from optimove_netmera.sync.load import load_batches

BATCH = 1000
NAMES = [f"Attribute{j:02d}" for j in range(20)]
INSERT = sa.text(  # new_customer as the plan sets it: no snapshot row (a first sync), or one (a later sync)
    "INSERT INTO sync_changes (sync_run_id, customer_id, ext_id, new_hash, set_attrs, unset_attrs, present_bits,"
    " set_batch_no, status, new_customer) SELECT :run, :cid, :cid, :hash, :attrs, '[]', :present, :batch,"
    " 'pending', NOT EXISTS (SELECT 1 FROM customer_snapshot WHERE customer_id = :cid)"
)


def profile(i: int) -> dict[str, Any]:
    """Customer ``i``'s 20 attributes: text and numbers, ~700 bytes of JSON."""
    return {n: (f"value {j} of customer {i:07d}" if j % 2 else i * 1000.5 + j) for j, n in enumerate(NAMES)}


def seed(url: str, customers: int) -> tuple[Any, int, list[int]]:
    """A fresh run's plan in the state DB at ``url``: its engine, run id and batch ids."""
    migrate(url)
    engine = create_state_engine(url)
    with engine.begin() as conn:
        present = AttributeSets.load(conn, NAMES).encode(NAMES)  # as the plan stores the 20 names: bits
        run_id = conn.execute(
            sa.insert(SyncRun).values(dag_id="bench", dag_run_id=f"load-{time.time_ns()}").returning(SyncRun.id)
        ).scalar_one()
        for start in range(0, customers, 50_000):
            rows = [
                {
                    "run": run_id,
                    "cid": f"C{i:08d}",
                    "hash": f"h2:{i:016x}",
                    "attrs": json.dumps(profile(i)),
                    "present": present,
                    "batch": i // BATCH,
                }
                for i in range(start, min(customers, start + 50_000))
            ]
            conn.execute(INSERT, rows)
        batches = [
            {"sync_run_id": run_id, "kind": "set", "batch_no": b, "size": min(BATCH, customers - b * BATCH)}
            for b in range(-(-customers // BATCH))
        ]
        ids = conn.execute(sa.insert(SyncBatch).returning(SyncBatch.id), batches).scalars().all()
    refresh_statistics(engine, SyncChange, SyncBatch)  # as a stored plan leaves them (PostgreSQL)
    return engine, run_id, list(ids)


def floor_of(client: NetmeraClient, concurrency: int) -> float:
    """Profiles/s the client sends to its peer with no bookkeeping (1000 profiles a request)."""
    batch = [{"extId": f"C{i:08d}", "profile": profile(i)} for i in range(BATCH)]
    return peer_rate(lambda: client.set_profile_attributes(batch), 200, concurrency)


def main() -> int:
    a = step_arguments(__doc__, "customers", 300_000)
    concurrency = load_settings().sync.load_concurrency
    home = Path(tempfile.mkdtemp(prefix="onm-bench-load-"))
    made = iter(range(1_000_000))

    def prepare(client: NetmeraClient) -> Callable[[], int]:
        """A fresh plan of ``a.customers`` in a state DB; its delivery."""
        engine, run_id, ids = seed(a.state_db or f"sqlite:///{home}/state-{next(made)}.db", a.customers)
        return lambda: load_batches(engine, run_id, ids, client, concurrency=concurrency)["delivered"]

    title = f"sync load alone: {a.customers:,} customers x 20 attributes, {concurrency} requests in flight"
    floor = lambda client: floor_of(client, concurrency)  # noqa: E731
    against_peers(title, home, a.rounds, concurrency, floor, prepare, a.customers, "profiles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
