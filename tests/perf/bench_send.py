"""Benchmark of the campaign send alone (not part of the test run).

    python tests/perf/bench_send.py [--recipients 100000] [--rounds 2] [--state-db URL]

``bench_campaign.py`` times the send inside a ``dag.test()`` run against the sandbox: its mapped send tasks run one
after another, each with Airflow's own start-up, and the sandbox checks every request object on the same cores.
This isolates what the project's own bookkeeping costs: a campaign's ledger (two templates, their recipients
interleaved as Optimove serves them, two params each) is staged straight into a fresh state DB and chunked, then
:func:`optimove_netmera.campaigns.send.send_chunks` sends every chunk at ``campaigns.requests_in_flight``, as one
send task does (claim, last look at the cancel, request, outcome per chunk), against

1. a bare local HTTP peer (``tests/perf/floor.py``: reads each request, answers 200), and
2. the sandbox's Netmera (every recipient a known user),

each beside its floor: a ``NetmeraClient`` sending the same 1000-object requests to the same peer with no
bookkeeping, one at a time and at the send's concurrency (the higher rate is the floor). Prints recipients/s, the
ratio to each floor, the process's CPU per recipient, and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from floor import bare_peer, peer_rate  # tests/perf/floor.py (the script's own folder is on sys.path)
from machine import machine_line
from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.recipients import _insert_ledger_rows, plan_chunks
from optimove_netmera.campaigns.send import send_chunks
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.sandbox.process import start_sandbox
from optimove_netmera.settings import load_settings
from optimove_netmera.store import Campaign
from optimove_netmera.store.engine import create_state_engine, migrate

CHUNK = 1000
CHANNEL = 506
KEYS = ("101", "102")  # two templates the sandbox knows
SCHEDULED = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)


def ext_id(i: int) -> str:
    return f"C{i:08d}"


def params(i: int) -> dict[str, Any]:
    return {"firstName": f"Name {i}", "promoCode": f"P{i:07d}"}


def seed(url: str, campaign: int, recipients: int) -> tuple[Any, list[int]]:
    """Campaign ``campaign`` of ``recipients``, staged in the state DB at ``url`` and chunked: the engine and the
    chunk numbers."""
    migrate(url)
    engine = create_state_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign).values(campaign_id=campaign, channel_id=CHANNEL, state="staged"))
    for start in range(0, recipients, 50_000):
        rows = [
            {
                "customer_id": ext_id(i),
                "template_id": 1 + i % len(KEYS),
                "ext_id": ext_id(i),
                "scheduled_time": SCHEDULED,
                "notification_key": KEYS[i % len(KEYS)],
                "params": params(i),
                "promo_code": params(i)["promoCode"],
                "status": "pending",
                "reason": None,
            }
            for i in range(start, min(recipients, start + 50_000))
        ]
        _insert_ledger_rows(engine, campaign, CHANNEL, rows)
    batches, _ = plan_chunks(engine, campaign, CHANNEL, CHUNK, include_unknown=False)
    return engine, [c for b in batches for c in b.chunks]


def floor_of(client: NetmeraClient, concurrency: int) -> float:
    """Recipients/s the client sends to its peer with no bookkeeping (1000 request objects a request): the higher
    of one request at a time and ``concurrency`` at once."""
    body = [personalise.request_object(KEYS[0], ext_id(i), params(i)) for i in range(CHUNK)]
    return max(peer_rate(lambda: client.send_notification(body), 200, c) for c in {1, concurrency})


def measure(
    label: str,
    url: str,
    key: str,
    state_db: Callable[[], tuple[str, int]],
    recipients: int,
    concurrency: int,
    bare: float,
) -> None:
    """Send a fresh campaign of ``recipients`` to the peer at ``url`` and print the figures (``bare``: the bare
    peer's floor; for the bare peer itself, also its own)."""
    client = NetmeraClient(url, key, pool_size=max(8, concurrency))
    floor = bare if label == "bare" else floor_of(client, concurrency)
    db, campaign = state_db()
    engine, chunks = seed(db, campaign, recipients)
    started, cpu = time.monotonic(), time.process_time()
    out = send_chunks(engine, client, campaign, CHANNEL, chunks, requests_in_flight=concurrency)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    engine.dispose()
    if out.sent != recipients:
        raise SystemExit(f"{label}: sent {out.sent} of {recipients}: {out.as_dict()}")
    rate = recipients / wall
    print(
        f"{label:>8} {recipients:>10,} {out.requests:>8} {wall:>7.2f} {rate:>13,.0f} {floor:>11,.0f}"
        f" {rate / floor:>9.0%} {rate / bare:>12.0%} {cpu / recipients * 1e6:>13.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--state-db", help="a state DB URL (default: a fresh SQLite file per measurement)")
    a = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # each measurement migrates a fresh state DB
    logging.getLogger("optimove_netmera").setLevel(logging.WARNING)  # a line per chunk otherwise
    concurrency = load_settings().campaigns.requests_in_flight
    home = Path(tempfile.mkdtemp(prefix="onm-bench-send-"))
    made = iter(range(1_000_000))

    def state_db() -> tuple[str, int]:
        """A state DB and a campaign id new to it."""
        n = next(made)
        return (a.state_db or f"sqlite:///{home}/state-{n}.db"), time.time_ns() // 1000 + n

    print(f"# campaign send alone: {a.recipients:,} recipients, 2 templates, {concurrency} requests in flight")
    print(f"# machine: {machine_line()}")
    print(f"{'peer':>8} {'recipients':>10} {'requests':>8} {'wall s':>7} {'recipients/s':>13} {'its floor':>11}"
          f" {'of floor':>9} {'of bare peer':>12} {'CPU µs/rcpt':>13}")  # fmt: skip
    box = start_sandbox(customers=1000, log_path=home / "sandbox.log")
    try:
        for start in range(0, a.recipients, 50_000):
            box.admin.netmera.add_users([ext_id(i) for i in range(start, min(a.recipients, start + 50_000))])
        with bare_peer() as peer:
            for _ in range(a.rounds):
                bare = floor_of(NetmeraClient(peer, "bench", pool_size=max(8, concurrency)), concurrency)
                measure("bare", peer, "bench", state_db, a.recipients, concurrency, bare)
                measure("sandbox", box.netmera_url, box.netmera_api_key, state_db, a.recipients, concurrency, bare)
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
