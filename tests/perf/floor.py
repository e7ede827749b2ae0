"""The floor a benchmark rates its Netmera traffic against: a bare local HTTP peer.

The peer is a subprocess (a ``ThreadingHTTPServer`` with ``TCP_NODELAY`` that reads each request body and answers
``200 {}``), so what is left is the client's own cost: building and encoding the body, HTTP over loopback. A
benchmark sends it the same requests its product code sends, in the same run, and prints each rate as a fraction
of this one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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
