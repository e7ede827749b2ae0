"""Make the Connections list's **Test** button work for the Optimove and Netmera types on Airflow 3.3.2.

Airflow 3.3.2's UI posts ``"port": 0`` (``Number(null)``) to ``POST /api/v2/connections/test`` for a stored connection
without a port, and the route then refuses it with 400 "The host or port to test differs from the stored connection"
(apache/airflow#73298, fixed upstream by treating port 0 as blank). Our two types have no port (the forms hide it),
so every Test click failed. This root middleware of the API server rewrites ``"port": 0`` to ``null`` in that one
request, only for ``conn_type`` ``optimove`` / ``netmera``: exactly the upstream normalisation, scoped to our types.
Any other request passes through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["CONN_TYPES", "TEST_PATH", "PortlessConnectionTestMiddleware", "normalise_test_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TEST_PATH = "/api/v2/connections/test"
CONN_TYPES = frozenset({"optimove", "netmera"})
_MAX_BODY = 1 << 20  # a connection is a few hundred bytes; anything larger is passed on as it came


def normalise_test_body(body: bytes) -> bytes:
    """``body`` with ``"port": 0`` made ``null`` when it tests an Optimove or Netmera connection; else unchanged."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return body
    if not isinstance(data, dict) or data.get("conn_type") not in CONN_TYPES:
        return body
    port = data.get("port")
    if port != 0 or isinstance(port, bool):
        return body
    data["port"] = None
    return json.dumps(data).encode()


class PortlessConnectionTestMiddleware:
    """ASGI middleware applying :func:`normalise_test_body` to ``POST .../api/v2/connections/test``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(TEST_PATH):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see what came, then that
                await self.app(scope, _replay(chunks, message, receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        fixed = normalise_test_body(body) if size <= _MAX_BODY else body
        if fixed is not body:
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(fixed)).encode())]}
        await self.app(scope, _replay([fixed], None, receive), send)


def _replay(bodies: list[bytes], last: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that first hands out ``bodies`` as one request body (then ``last``), then the real one."""
    queue: list[Message] = []
    if bodies or last is None:
        queue.append({"type": "http.request", "body": b"".join(bodies), "more_body": last is not None})
    if last is not None:
        queue.append(last)

    async def replay() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay
