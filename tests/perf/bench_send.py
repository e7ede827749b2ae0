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

import datetime as dt
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
from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.recipients import _insert_ledger_rows, plan_chunks
from optimove_netmera.campaigns.send import send_chunks
from optimove_netmera.netmera import NetmeraClient
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


def main() -> int:
    a = step_arguments(__doc__, "recipients", 100_000)
    concurrency = load_settings().campaigns.requests_in_flight
    home = Path(tempfile.mkdtemp(prefix="onm-bench-send-"))
    made = iter(range(1_000_000))

    def prepare(client: NetmeraClient) -> Callable[[], int]:
        """A fresh campaign of ``a.recipients``, staged and chunked (a new campaign id in a fresh or given state
        DB); its send."""
        n = next(made)
        campaign = time.time_ns() // 1000 + n
        engine, chunks = seed(a.state_db or f"sqlite:///{home}/state-{n}.db", campaign, a.recipients)
        return lambda: send_chunks(engine, client, campaign, CHANNEL, chunks, requests_in_flight=concurrency).sent

    def users(sandbox: Any) -> None:
        """Every recipient a known Netmera user."""
        for start in range(0, a.recipients, 50_000):
            sandbox.admin.netmera.add_users([ext_id(i) for i in range(start, min(a.recipients, start + 50_000))])

    title = f"campaign send alone: {a.recipients:,} recipients, 2 templates, {concurrency} requests in flight"
    floor = lambda client: floor_of(client, concurrency)  # noqa: E731
    against_peers(title, home, a.rounds, concurrency, floor, prepare, a.recipients, "recipients", users)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
