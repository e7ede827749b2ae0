"""Reproducible fault injection for the sandbox servers.

A :class:`FaultInjector` holds rules (per endpoint glob) and a seeded RNG, so the same rules and the same
request sequence give the same faults. :class:`FaultMiddleware` is a plain ASGI middleware that applies them to
every real endpoint of an app (never to ``/_sandbox/...``), and :func:`fault_admin_router` exposes
``GET/POST/DELETE /_sandbox/faults`` to change them at run time.

Rules may let the first ``after`` matching requests through and stop after ``count`` faults.
Faults: random 5xx (``error_rate``/``error_status``), random 429 (``rate_429``), a 429 storm (``storm_429``: the
next N matching requests), ``Retry-After`` on injected 429s (``retry_after``), added latency (``latency_ms``),
and connection resets (``reset_rate``: the TCP connection is aborted with RST before any response byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatchcase
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Service = Literal["optimove", "netmera"]
ADMIN_PREFIX = "/_sandbox/"

_OPTIMOVE_429 = {
    "status": 429,
    "error": "Too Many Requests",
    "message": "You have exceeded the rate limit for this API group. Please retry later.",
}


@dataclass
class FaultRule:
    """One fault rule; ``endpoint`` is a glob over the request path (``*`` matches every endpoint)."""

    endpoint: str = "*"
    error_rate: float = 0.0
    error_status: int = 503
    rate_429: float = 0.0
    storm_429: int = 0
    retry_after: float | None = None
    latency_ms: float = 0.0
    reset_rate: float = 0.0
    count: int | None = None
    after: int = 0
    injected: int = field(default=0)
    seen: int = field(default=0)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FaultRule:
        """Validate a rule given as JSON; raises ValueError naming the bad key or value."""
        if not isinstance(raw, dict):
            raise ValueError("each fault rule must be a JSON object")
        known = {f.name for f in fields(cls)} - {"injected", "seen"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown fault rule key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        rule = cls(**raw)
        for name in ("error_rate", "rate_429", "reset_rate"):
            value = getattr(rule, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        if not isinstance(rule.error_status, int) or not 500 <= rule.error_status <= 599:
            raise ValueError(f"error_status must be a 5xx status, got {rule.error_status!r}")
        if not isinstance(rule.storm_429, int) or rule.storm_429 < 0:
            raise ValueError(f"storm_429 must be a non-negative integer, got {rule.storm_429!r}")
        if not isinstance(rule.latency_ms, int | float) or rule.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {rule.latency_ms!r}")
        if rule.retry_after is not None and (not isinstance(rule.retry_after, int | float) or rule.retry_after < 0):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {rule.retry_after!r}")
        if not isinstance(rule.after, int) or rule.after < 0:
            raise ValueError(f"after must be a non-negative integer, got {rule.after!r}")
        if rule.count is not None and (not isinstance(rule.count, int) or rule.count < 1):
            raise ValueError(f"count must be a positive integer, got {rule.count!r}")
        if not isinstance(rule.endpoint, str) or not rule.endpoint:
            raise ValueError("endpoint must be a non-empty path glob such as /rest/3.0/* or *")
        return rule


@dataclass
class Decision:
    """What to do with one request."""

    latency_s: float = 0.0
    action: Literal["pass", "error", "429", "reset"] = "pass"
    status: int = 200
    retry_after: float | None = None


class FaultInjector:
    """Thread-safe, seeded set of fault rules."""

    def __init__(self, seed: int = 7) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self._counts: dict[str, int] = {}

    def set_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace all rules (validated first: on error nothing changes) and re-seed the RNG."""
        parsed = [FaultRule.from_dict(r) for r in rules]
        with self._lock:
            self._rules = parsed
            self._rng = random.Random(self._seed)

    def clear(self) -> None:
        """Remove every rule and zero the injected counters."""
        with self._lock:
            self._rules = []
            self._counts = {}
            self._rng = random.Random(self._seed)

    def snapshot(self) -> dict[str, Any]:
        """Rules (with how many faults each injected) and injected counts per kind."""
        with self._lock:
            return {"rules": [asdict(r) for r in self._rules], "injected": dict(self._counts)}

    def decide(self, path: str) -> Decision:
        """Draw the fate of one request to ``path``."""
        decision = Decision()
        with self._lock:
            for rule in self._rules:
                if not fnmatchcase(path, rule.endpoint):
                    continue
                decision.latency_s += rule.latency_ms / 1000.0
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if decision.action != "pass" or (rule.count is not None and rule.injected >= rule.count):
                    continue
                if rule.storm_429 > 0:
                    rule.storm_429 -= 1
                    decision.action, decision.status, decision.retry_after = "429", 429, rule.retry_after
                elif rule.reset_rate and self._rng.random() < rule.reset_rate:
                    decision.action, decision.status = "reset", 0
                elif rule.rate_429 and self._rng.random() < rule.rate_429:
                    decision.action, decision.status, decision.retry_after = "429", 429, rule.retry_after
                elif rule.error_rate and self._rng.random() < rule.error_rate:
                    decision.action, decision.status = "error", rule.error_status
                if decision.action != "pass":
                    rule.injected += 1
                    self._counts[decision.action] = self._counts.get(decision.action, 0) + 1
        return decision


def _fault_body(service: Service, action: str, status: int) -> tuple[bytes, bytes]:
    """Body and content type of an injected error, in the service's own format."""
    if service == "optimove":
        if action == "429":
            return json.dumps(_OPTIMOVE_429).encode(), b"application/json"
        return b"Internal Server Error", b"text/plain; charset=utf-8"
    if action == "429":
        return json.dumps({"code": 429, "error": "Too Many Requests"}).encode(), b"application/json"
    return json.dumps({"code": 2001, "error": "Internal server error"}).encode(), b"application/json"


def _abort_connection(send: Send) -> bool:
    """Abort the TCP connection under uvicorn with an RST; False when the transport is not reachable."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


class FaultMiddleware:
    """ASGI middleware applying a :class:`FaultInjector` to every non-admin HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        injector: FaultInjector,
        service: Service,
        recorder: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.app = app
        self.injector = injector
        self.service = service
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        decision = self.injector.decide(path)
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.action == "pass":
            await self.app(scope, receive, send)
            return
        if self.recorder is not None:
            self.recorder(
                scope.get("method", ""), path, "reset" if decision.action == "reset" else str(decision.status)
            )
        if decision.action == "reset" and _abort_connection(send):
            return
        status = decision.status or 500
        body, content_type = _fault_body(self.service, decision.action, status)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if decision.retry_after is not None:
            headers.append((b"retry-after", str(round(decision.retry_after)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class FaultInjectingApp(FastAPI):
    """FastAPI whose fault middleware wraps the *whole* built stack, outside Starlette's ServerErrorMiddleware.

    ``FaultMiddleware`` aborts a connection through uvicorn's own ``send``; ServerErrorMiddleware (always the
    outermost layer of a Starlette stack) wraps ``send``, so with ``add_middleware`` an injected reset would
    degrade into a 500. Call :meth:`inject_faults` once while building the app.
    """

    fault_middleware: Callable[[ASGIApp], ASGIApp] | None = None

    def inject_faults(
        self, injector: FaultInjector, service: Service, recorder: Callable[[str, str, str], None] | None = None
    ) -> None:
        """Apply ``injector`` to every real endpoint; injected faults are reported to ``recorder``."""
        self.fault_middleware = functools.partial(
            FaultMiddleware, injector=injector, service=service, recorder=recorder
        )
        self.include_router(fault_admin_router(injector))

    def build_middleware_stack(self) -> ASGIApp:  # type: ignore[override]
        stack = super().build_middleware_stack()
        return stack if self.fault_middleware is None else self.fault_middleware(stack)


def fault_admin_router(injector: FaultInjector) -> APIRouter:
    """``GET`` (show), ``POST`` (replace rules: a list, or ``{"rules": [...]}``) and ``DELETE`` (clear) faults."""
    router = APIRouter()

    @router.get("/_sandbox/faults")
    async def get_faults() -> dict[str, Any]:
        return injector.snapshot()

    @router.post("/_sandbox/faults")
    async def set_faults(request: Request) -> dict[str, Any]:
        try:
            raw = json.loads(await request.body() or b"null")
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not JSON: {exc.msg}") from exc
        rules = raw.get("rules") if isinstance(raw, dict) else raw
        if not isinstance(rules, list):
            raise HTTPException(400, 'body must be a list of rules or {"rules": [...]}')
        try:
            injector.set_rules(rules)
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc
        return injector.snapshot()

    @router.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, Any]:
        injector.clear()
        return injector.snapshot()

    return router
