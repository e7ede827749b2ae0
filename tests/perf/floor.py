"""The floor a benchmark rates its Netmera traffic against: a bare local HTTP peer.

The peer is a subprocess (a ``ThreadingHTTPServer`` with ``TCP_NODELAY`` that reads each request body and answers
``200 {}``), so what is left is the client's own cost: building and encoding the body, HTTP over loopback. A
benchmark sends it the same requests its product code sends, in the same run, and prints each rate as a fraction
of this one.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from machine import machine_line  # tests/perf/machine.py
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.sandbox.process import start_sandbox

PEER = r"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Peer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the headers and the body are two writes; with Nagle's algorithm the body waited for the
    # client's delayed ACK (~40 ms a request), which made the floor a sixth of what a bare peer answers.
    disable_nagle_algorithm = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
print(server.server_port, flush=True)
server.serve_forever()
"""


@contextmanager
def bare_peer() -> Iterator[str]:
    """A bare local HTTP peer in a subprocess; yields its base URL (``http://127.0.0.1:<port>``)."""
    proc = subprocess.Popen([sys.executable, "-c", PEER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def peer_rate(send: Callable[[], int], requests: int, concurrency: int = 1) -> float:
    """Items per second: ``send()`` (one request; returns the items it carried) ``requests`` times at ``concurrency``.

    One request goes out first, untimed, to open the connection.
    """
    send()
    started = time.monotonic()
    if concurrency <= 1:
        items = sum(send() for _ in range(requests))
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            items = sum(pool.map(lambda _: send(), range(requests)))
    return items / (time.monotonic() - started)


def step_arguments(doc: str, size: str, default: int) -> argparse.Namespace:
    """The command line of a benchmark of one step alone: ``--<size>`` (default ``default``), ``--rounds``,
    ``--state-db``. Quiets the package's and alembic's logging: each measurement migrates a fresh state DB."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{size}", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--state-db", help="a state DB URL (default: a fresh SQLite file per measurement)")
    for name in ("alembic", "optimove_netmera"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return parser.parse_args()


def against_peers(
    title: str,
    home: Path,
    rounds: int,
    concurrency: int,
    floor_of: Callable[[NetmeraClient], float],
    prepare: Callable[[NetmeraClient], Callable[[], int]],
    items: int,
    unit: str,
    setup: Callable[[Any], None] = lambda sandbox: None,
) -> None:
    """A benchmark's rounds, after ``title`` and the machine: each sends a fresh workload of ``items`` to a bare peer
    (:func:`bare_peer`), then to a sandbox's Netmera (started here, ``setup(sandbox)`` first), and prints a row for
    each beside its floor (``floor_of(client)``: the same requests with no bookkeeping) and the bare peer's.

    ``prepare(client)`` sets the workload up, untimed, and returns the timed part, which sends and returns
    how many items it sent (fewer than ``items`` ends the benchmark). A row: items, wall time, items/s, its floor,
    the ratio to it and to the bare peer's, and this process's CPU per item.
    """
    print(f"# {title}")
    print(f"# machine: {machine_line()}")
    print(f"{'peer':>8} {unit:>10} {'wall s':>7} {unit + '/s':>13} {'its floor':>11} {'of floor':>9}"
          f" {'of bare peer':>12} {'CPU µs/item':>13}")  # fmt: skip
    sandbox = start_sandbox(customers=1000, log_path=home / "sandbox.log")
    try:
        setup(sandbox)
        with bare_peer() as peer:
            for _ in range(rounds):
                bare = 0.0
                for label, url, key in (
                    ("bare", peer, "bench"),
                    ("sandbox", sandbox.netmera_url, sandbox.netmera_api_key),
                ):
                    client = NetmeraClient(url, key, pool_size=max(8, concurrency))
                    floor = floor_of(client)
                    bare = bare or floor
                    work = prepare(client)
                    started, cpu = time.monotonic(), time.process_time()
                    sent = work()
                    wall, cpu = time.monotonic() - started, time.process_time() - cpu
                    if sent != items:
                        raise SystemExit(f"{label}: {sent:,} of {items:,} {unit} sent")
                    rate = items / wall
                    print(
                        f"{label:>8} {items:>10,} {wall:>7.2f} {rate:>13,.0f} {floor:>11,.0f} {rate / floor:>9.0%}"
                        f" {rate / bare:>12.0%} {cpu / items * 1e6:>13.1f}",
                        flush=True,
                    )
    finally:
        sandbox.stop()
