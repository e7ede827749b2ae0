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

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from floor import bare_peer, peer_rate  # tests/perf/floor.py (the script's own folder is on sys.path)
from machine import machine_line
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.sandbox.process import start_sandbox
from optimove_netmera.settings import load_settings
from optimove_netmera.store.engine import create_state_engine, migrate
from optimove_netmera.store.models import SyncBatch, SyncRun
from optimove_netmera.sync.load import load_batches

BATCH = 1000
NAMES = [f"Attribute{j:02d}" for j in range(20)]
INSERT = sa.text(
    "INSERT INTO sync_changes (sync_run_id, customer_id, ext_id, new_hash, set_attrs, unset_attrs, present_attrs,"
    " set_batch_no, status) VALUES (:run, :cid, :cid, :hash, :attrs, '[]', :present, :batch, 'pending')"
)


def profile(i: int) -> dict[str, Any]:
    """Customer ``i``'s 20 attributes: text and numbers, ~700 bytes of JSON."""
    return {n: (f"value {j} of customer {i:07d}" if j % 2 else i * 1000.5 + j) for j, n in enumerate(NAMES)}


def seed(url: str, customers: int) -> tuple[Any, int, list[int]]:
    """A fresh run's plan in the state DB at ``url``: its engine, run id and batch ids."""
    migrate(url)
    engine = create_state_engine(url)
    present = json.dumps(NAMES)
    with engine.begin() as conn:
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
    return engine, run_id, list(ids)


def floor_of(client: NetmeraClient, concurrency: int) -> float:
    """Profiles/s the client sends to its peer with no bookkeeping (1000 profiles a request)."""
    batch = [{"extId": f"C{i:08d}", "profile": profile(i)} for i in range(BATCH)]
    return peer_rate(lambda: client.set_profile_attributes(batch), 200, concurrency)


def measure(
    label: str, url: str, key: str, state_db: Callable[[], str], customers: int, concurrency: int, bare: float
) -> None:
    """Deliver a fresh plan of ``customers`` to the peer at ``url`` and print the figures (``bare``: the bare
    peer's floor; for the bare peer itself, also its own)."""
    client = NetmeraClient(url, key, pool_size=max(8, concurrency))
    floor = bare if label == "bare" else floor_of(client, concurrency)
    engine, run_id, ids = seed(state_db(), customers)
    started, cpu = time.monotonic(), time.process_time()
    counts = load_batches(engine, run_id, ids, client, concurrency=concurrency)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    engine.dispose()
    if counts["delivered"] != customers:
        raise SystemExit(f"{label}: delivered {counts['delivered']} of {customers}: {counts}")
    rate = customers / wall
    print(
        f"{label:>8} {customers:>10,} {wall:>7.2f} {rate:>12,.0f} {floor:>11,.0f} {rate / floor:>9.0%}"
        f" {rate / bare:>12.0%} {cpu / customers * 1e6:>13.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--state-db", help="a state DB URL (default: a fresh SQLite file per measurement)")
    a = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # each measurement migrates a fresh state DB
    concurrency = load_settings().sync.load_concurrency
    home = Path(tempfile.mkdtemp(prefix="onm-bench-load-"))
    made = iter(range(1_000_000))

    def state_db() -> str:
        return a.state_db or f"sqlite:///{home}/state-{next(made)}.db"

    print(f"# sync load alone: {a.customers:,} customers x 20 attributes, {concurrency} requests in flight")
    print(f"# machine: {machine_line()}")
    print(f"{'peer':>8} {'customers':>10} {'wall s':>7} {'profiles/s':>12} {'its floor':>11} {'of floor':>9}"
          f" {'of bare peer':>12} {'CPU µs/prof':>13}")  # fmt: skip
    box = start_sandbox(customers=1000, log_path=home / "sandbox.log")
    try:
        with bare_peer() as peer:
            for _ in range(a.rounds):
                bare = floor_of(NetmeraClient(peer, "bench", pool_size=max(8, concurrency)), concurrency)
                measure("bare", peer, "bench", state_db, a.customers, concurrency, bare)
                measure("sandbox", box.netmera_url, box.netmera_api_key, state_db, a.customers, concurrency, bare)
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
