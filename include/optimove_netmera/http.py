"""Shared HTTP machinery for the pure API clients (no Airflow imports).

- :class:`RateLimiter`: a thread-safe sliding-window log limiter, plus a process-wide registry
  (:func:`get_rate_limiter`) so every client and thread talking to the same account shares one window.
- :class:`RetryPolicy`: capped exponential backoff with full jitter; honours ``Retry-After``.
- :class:`ApiError` and subclasses: structured, secret-free errors.
- :class:`CallStats`: counters every client exposes as ``client.stats``.
- :class:`BaseHttpClient`: one ``requests.Session`` per client and the request loop (pacing, retries,
  re-authentication hook, error mapping, logging without bodies or secrets).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

__all__ = [
    "ApiError",
    "AuthError",
    "BaseHttpClient",
    "CallStats",
    "ClientError",
    "Permit",
    "RateLimitedError",
    "RateLimiter",
    "Redactor",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "body_text",
    "chunked",
    "get_rate_limiter",
    "parse_retry_after",
    "response_json",
]

log = logging.getLogger("optimove_netmera.http")

T = TypeVar("T")
Timeout = float | tuple[float, float]

# --------------------------------------------------------------------------------------------------
# Rate limiting


def default_margin(period: float) -> float:
    """Safety margin added to every window: 0.5% of the period, at least 25 ms (timer granularity, clocks)."""
    return max(0.025, 0.005 * period)


class _Slot:
    __slots__ = ("end", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.end: float | None = None

    @property
    def time(self) -> float:
        """The latest moment the server can have counted this request (its response, or its start)."""
        return self.start if self.end is None else self.end


class Permit:
    """One granted slot. Call :meth:`release` when the response (headers) arrived or the attempt failed."""

    __slots__ = ("_limiter", "_slot", "waited")

    def __init__(self, limiter: RateLimiter, slot: _Slot, waited: float) -> None:
        self._limiter = limiter
        self._slot = slot
        self.waited = waited

    def release(self, at: float | None = None) -> None:
        """Mark the request answered at ``at`` (the limiter's clock; default now)."""
        self._limiter._release(self._slot, at)


class RateLimiter:
    """Sliding-window log limiter: at most ``calls`` requests counted by the server in any ``period``.

    The server stamps a request somewhere between the moment it leaves this process and the moment its
    response comes back, so each grant is logged from its start and, once released, from its response.
    Request *k* may start no earlier than ``period + margin`` after the latest logged time of any request
    up to *k - calls*: any two requests that are ``calls`` apart in grant order are then more than one
    period apart at the server, whatever its queueing, so no window there holds more than ``calls``.
    The cost is one response time per window (small next to the period). Reservation is FIFO across
    threads and callers sleep outside the lock. An unreleased grant counts from its start.
    """

    def __init__(
        self,
        calls: int,
        period: float,
        *,
        margin: float | None = None,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls, self._period, self._margin = self._validate(calls, period, margin)
        self._log: deque[_Slot] = deque()
        self._floor = float("-inf")  # the latest time among grants that left the log

    @staticmethod
    def _validate(calls: int, period: float, margin: float | None) -> tuple[int, float, float]:
        if int(calls) != calls or calls < 1:
            raise ValueError(f"rate limit calls must be a positive integer, got {calls!r}")
        if not period > 0:
            raise ValueError(f"rate limit period must be > 0 seconds, got {period!r}")
        margin = default_margin(float(period)) if margin is None else float(margin)
        if margin < 0:
            raise ValueError(f"rate limit margin must be >= 0, got {margin!r}")
        return int(calls), float(period), margin

    @property
    def calls(self) -> int:
        """Maximum requests per window."""
        return self._calls

    @property
    def period(self) -> float:
        """Window length in seconds."""
        return self._period

    @property
    def margin(self) -> float:
        """Extra seconds added to every window."""
        return self._margin

    def configure(self, calls: int, period: float, margin: float | None = None) -> None:
        """Change the limits in place (the grants already logged keep counting)."""
        calls, period, margin = self._validate(calls, period, margin)
        with self._lock:
            self._calls, self._period, self._margin = calls, period, margin
            while len(self._log) > calls:
                self._floor = max(self._floor, self._log.popleft().time)

    def _reserve(self) -> _Slot:
        with self._lock:
            now = self._clock()
            start = now
            if len(self._log) >= self._calls:
                oldest = self._log.popleft()
                self._floor = max(self._floor, oldest.time)
                start = max(now, self._floor + self._period + self._margin)
            slot = _Slot(start)
            self._log.append(slot)
            return slot

    def _release(self, slot: _Slot, at: float | None) -> None:
        with self._lock:
            end = self._clock() if at is None else at
            slot.end = max(slot.start, end)
            if slot not in self._log:  # already left the log: later grants must still respect it
                self._floor = max(self._floor, slot.end)

    def reserve(self) -> float:
        """Reserve the next slot (never released) and return its start on this limiter's clock."""
        return self._reserve().start

    def acquire(self) -> Permit:
        """Block until a slot is free; the returned :class:`Permit` says how long it waited."""
        slot = self._reserve()
        delay = slot.start - self._clock()
        if delay > 0:
            self._sleep(delay)
        return Permit(self, slot, max(0.0, delay))

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, calls={self._calls}, period={self._period}, margin={self._margin})"


_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


def get_rate_limiter(name: str, calls: int, period: float, *, margin: float | None = None) -> RateLimiter:
    """Return the process-wide limiter called ``name``, creating it on first use.

    Every client of one account should pass the same name so they share a window. If the limiter
    exists with other limits, it is reconfigured in place (the latest configuration wins) rather than
    replaced, so clients that already hold it keep sharing it.
    """
    with _registry_lock:
        limiter = _registry.get(name)
        if limiter is None:
            limiter = RateLimiter(calls, period, margin=margin, name=name)
            _registry[name] = limiter
            return limiter
    wanted_margin = default_margin(float(period)) if margin is None else float(margin)
    if (limiter.calls, limiter.period, limiter.margin) != (calls, float(period), wanted_margin):
        log.info("rate limiter %s reconfigured to %s calls / %ss", name, calls, period)
        limiter.configure(calls, period, margin)
    return limiter


# --------------------------------------------------------------------------------------------------
# Retry policy


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay-seconds or HTTP-date) into seconds, or None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN check
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter.

    Retried: HTTP 429, any 5xx, timeouts and connection errors. Never retried: other 4xx.
    ``max_attempts`` counts every attempt, including the first. A ``Retry-After`` header is honoured
    (up to ``max_retry_after`` seconds) instead of the computed backoff.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: bool = True
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    @staticmethod
    def is_retryable_status(status: int) -> bool:
        """True for 429 and 5xx."""
        return status == 429 or 500 <= status <= 599

    def backoff(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Delay after the ``failed_attempt``-th attempt (1-based): uniform in [0, cap] with full jitter."""
        exponent = max(0, failed_attempt - 1)
        cap = min(self.max_delay, self.base_delay * self.multiplier**exponent)
        if not self.jitter:
            return cap
        return (rng or random).uniform(0.0, cap)

    def delay(self, failed_attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """The wait before the next attempt: ``Retry-After`` when given, else :meth:`backoff`."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        return self.backoff(failed_attempt, rng)


# --------------------------------------------------------------------------------------------------
# Redaction

REDACTED = "***"

_SECRET_PATTERNS = [
    # header-style "X-API-KEY: value", "Authorization-Token=value", "X-netmera-api-key: value"
    re.compile(
        r"(?i)((?:x-api-key|x-netmera-api-key|authorization-token|authorization|api[_-]?key|password|passwd"
        r"|token)\"?\s*[:=]\s*\"?)((?:bearer\s+|basic\s+)?[^\s\",;&}]+)"
    ),
]


class Redactor:
    """Replaces known secrets (and anything that looks like a credential assignment) with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register a secret; its JSON-escaped and URL-encoded spellings are covered too."""
        if not secret or len(secret) < 3:
            return
        from urllib.parse import quote, quote_plus

        forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
        with self._lock:
            self._secrets.update(f for f in forms if len(f) >= 3)

    def __call__(self, text: str | None) -> str:
        if not text:
            return text or ""
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


# --------------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An API call failed. Never carries credentials: every text field is redacted on construction.

    Attributes: ``service`` ("optimove"/"netmera"), ``method``, ``path`` (no query string),
    ``endpoint`` ("METHOD /path"), ``status`` (HTTP status or None), ``code`` (the API's own error
    code), ``api_message`` (the API's own message), ``attempts``, ``retry_after`` (seconds, when the
    server said so), ``ambiguous`` (True when the request may have been processed by the server: a
    5xx, a read timeout or a connection dropped after sending; False when it was certainly rejected
    or never sent).
    """

    retryable = False

    def __init__(
        self,
        message: str | None = None,
        *,
        service: str = "",
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: Any = None,
        api_message: str | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
        ambiguous: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        redact = redactor or Redactor()
        self.service = service
        self.method = method.upper()
        self.path = path.split("?", 1)[0]
        self.status = status
        self.code = redact(str(code)) if isinstance(code, str) else code
        self.api_message = _truncate(redact(api_message)) if api_message else None
        self.attempts = attempts
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.detail = _truncate(redact(message)) if message else None
        super().__init__(self._render())

    @property
    def endpoint(self) -> str:
        """``"METHOD /path"`` (never a query string)."""
        return f"{self.method} {self.path}".strip()

    def _render(self) -> str:
        parts = [f"{self.service or 'api'} {self.endpoint}".strip() + " failed"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"code {self.code}")
        text = ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
        if self.api_message:
            text += f": {self.api_message}"
        if self.detail:
            text += f" ({self.detail})"
        if self.attempts > 1:
            text += f" [after {self.attempts} attempts]"
        return text

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), dict(self.__dict__)))


def _rebuild_error(cls: type[ApiError], state: dict[str, Any]) -> ApiError:
    err = cls.__new__(cls)
    Exception.__init__(err)
    err.__dict__.update(state)
    err.args = (err._render(),)
    return err


class ClientError(ApiError):
    """A 4xx other than 429: the request is wrong and would fail again. Not retried."""


PAYLOAD_REJECTED = frozenset({400, 413, 422})


def is_payload_rejection(exc: BaseException) -> bool:
    """The API refused the data itself (400/413/422, certainly not processed): retrying the same data won't help,
    so it belongs in a dead letter. 401/403/404 and the like are configuration faults: fix them and resume."""
    return isinstance(exc, ClientError) and not exc.ambiguous and exc.status in PAYLOAD_REJECTED


class AuthError(ClientError):
    """Authentication or authorisation failed (bad API key, bad credentials, forbidden)."""


class RateLimitedError(ApiError):
    """HTTP 429 still returned after all retries."""

    retryable = True


class ServerError(ApiError):
    """HTTP 5xx still returned after all retries (or not retried because the request was not idempotent)."""

    retryable = True


class TransportError(ApiError):
    """Timeout or connection failure (no HTTP response)."""

    retryable = True


class ResponseFormatError(ApiError):
    """A 2xx response whose body does not have the documented shape."""


def _truncate(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Stats


@dataclass
class CallStats:
    """Thread-safe counters of one client's traffic.

    ``requests``: logical requests made; ``calls``: HTTP attempts sent (requests + retries + re-sends
    after re-authentication); ``retries``: attempts that were retries after a failure;
    ``rate_limited``: 429 responses seen; ``errors``: failed attempts per HTTP status (or
    ``"transport"``); ``reauths``: token refreshes after an expiry; ``throttled``: attempts that had to wait for the
    rate limiter, ``throttle_seconds``: the time they waited; ``backoff_seconds``: time spent sleeping between retries.
    """

    requests: int = 0
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    reauths: int = 0
    throttled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    throttle_seconds: float = 0.0
    backoff_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments: float) -> None:
        """Increment counters by name."""
        with self._lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def error(self, key: str | int) -> None:
        """Count one failed attempt under ``key`` (an HTTP status or ``"transport"``)."""
        with self._lock:
            self.errors[str(key)] += 1

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy (JSON-serialisable)."""
        with self._lock:
            return {
                "requests": self.requests,
                "calls": self.calls,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
                "reauths": self.reauths,
                "errors": dict(self.errors),
                "throttled": self.throttled,
                "throttle_seconds": round(self.throttle_seconds, 3),
                "backoff_seconds": round(self.backoff_seconds, 3),
            }

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.requests = self.calls = self.retries = self.rate_limited = self.reauths = self.throttled = 0
            self.errors = Counter()
            self.throttle_seconds = self.backoff_seconds = 0.0


# --------------------------------------------------------------------------------------------------
# Helpers


def chunked(items: Sequence[T] | Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield successive lists of at most ``size`` items."""
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_UTF8_BOM = b"\xef\xbb\xbf"


def response_json(response: requests.Response, decode: Callable[[bytes], Any] | None = None) -> Any:
    """Decode a JSON body with msgspec (the values ``json.loads`` gives, and faster).

    An empty (or whitespace-only) body is None; a UTF-8 byte-order mark is ignored. ``decode`` may be a typed
    ``msgspec.json.Decoder(...).decode``; invalid JSON raises ``ValueError`` either way.
    """
    content = response.content.removeprefix(_UTF8_BOM)
    if not content or not content.strip():
        return None
    return (decode or msgspec.json.decode)(content)


def _read_body(response: requests.Response) -> None:
    """Read a streamed response's whole body now, as the ``content`` it would have had unstreamed.

    Unstreamed, ``requests`` reads a body in 10 KiB pieces. Each piece's socket read gives up the interpreter lock
    and then waits to take it back behind any busy thread, for up to the 5 ms switch interval. Through this client
    a 1.5 MB recipient page took 226 ms (median) that way beside one busy thread, and 39 ms read at once
    (``chunk_size=None``: as much as each socket read returns). A body cut short raises here, inside the attempt,
    and is retried like any transport error.
    """
    response._content = b"".join(response.iter_content(chunk_size=None))  # what ``content`` sets, read at once


def _connect_failure(exc: BaseException) -> bool:
    """True when the request certainly never reached the server (connection could not be made)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(current, urllib3.exceptions.MaxRetryError):
            stack.append(current.reason)
        if isinstance(current, BaseException):
            stack.extend(a for a in current.args if isinstance(a, BaseException))
            stack.append(current.__cause__)
            stack.append(current.__context__)
    return False


def _transport_reason(exc: BaseException) -> str:
    """A short description of a transport failure without URLs (query strings stay out of errors)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "read timeout"
    if _connect_failure(exc):
        return "connection failed"
    text = str(exc).lower()
    if "reset" in text:
        return "connection reset"
    if "aborted" in text or "remote end closed" in text or "remotedisconnected" in text:
        return "connection closed by the server"
    return type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Base client

_CALLER_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
)


# msgspec writes NaN and infinities as null; a null in the encoded body sends the slow path looking for them (a
# substring test: the regex it replaced took ~4 ms of a 1000-profile body).
_NULL = b"null"


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a float NaN or infinity anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


class BaseHttpClient:
    """One pooled ``requests.Session`` plus the request loop shared by the API clients.

    Subclasses set ``service``, provide auth headers via :meth:`_auth_headers`, map error bodies via
    :meth:`_parse_error`, and may re-authenticate via :meth:`_handle_auth_failure`.
    """

    service = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: Timeout,
        retry: RetryPolicy,
        limiter: RateLimiter | None,
        pool_size: int,
        redactor: Redactor,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url or not base_url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{self.service} base_url must start with http:// or https://")
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.limiter = limiter
        self.stats = CallStats()
        self._redact = redactor
        self._sleep = sleep
        self._rng = random.Random()
        self._pool_size = pool_size
        self.session = self._new_session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "optimove-netmera/0.1"})
        if headers:
            self.session.headers.update(headers)
        # requests does not promise a Session is thread-safe (its cookie jar is iterated unlocked while another
        # thread's response may add to it; the maintainers' advice is one Session per thread, psf/requests#2766):
        # the thread that built the client uses ``session``, any other thread its own (see _thread_session).
        self._local = threading.local()
        self._local.session = self.session
        self._sessions_lock = threading.Lock()
        # weak: a thread that ends without close_thread_session() drops its Session (and its sockets) with it
        self._thread_sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self._pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _thread_session(self) -> requests.Session:
        """The calling thread's Session: ``session`` in the thread that built the client, else one of its own
        (same adapter settings, a copy of ``session``'s headers at its creation), kept until
        :meth:`close_thread_session` or :meth:`close`."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._new_session()
            session.headers = CaseInsensitiveDict(self.session.headers)
            with self._sessions_lock:
                self._thread_sessions.add(session)
            self._local.session = session
        return session

    # --- lifecycle ---------------------------------------------------------------------------------
    def close_thread_session(self) -> None:
        """Close the calling thread's own Session (a worker thread about to end); no-op in the building thread."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None or session is self.session:
            return
        self._local.session = None
        with self._sessions_lock:
            self._thread_sessions.discard(session)
        session.close()

    def close(self) -> None:
        """Close the pooled connections (every thread's)."""
        with self._sessions_lock:
            sessions = list(self._thread_sessions)
            self._thread_sessions.clear()
        for session in sessions:
            session.close()
        self.session.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- hooks -------------------------------------------------------------------------------------
    def _auth_headers(self) -> dict[str, str]:
        return {}

    def _handle_auth_failure(self, response: requests.Response, sent_headers: Mapping[str, str]) -> bool:
        """Return True when credentials were refreshed and the request should be sent once more."""
        return False

    def _parse_error(self, response: requests.Response) -> tuple[Any, str | None]:
        """Return (code, message) from an error response."""
        return None, body_text(response)

    def _error_class(self, status: int, code: Any) -> type[ApiError]:
        if status in (401, 403):
            return AuthError
        if status == 429:
            return RateLimitedError
        if 500 <= status <= 599:
            return ServerError
        return ClientError

    # --- request loop ------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return self.base_url + path

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        encoded_body: bytes | None = None,
        idempotent: bool = True,
        authenticated: bool = True,
        limiter: RateLimiter | bool | None = True,
    ) -> requests.Response:
        """Send a request with pacing and retries; return the 2xx response or raise :class:`ApiError`.

        ``idempotent=False`` retries only failures where the server certainly did not process the
        request (429, connection never established); 5xx, read timeouts and dropped connections then
        raise with ``ambiguous=True``. ``limiter=True`` uses the client's limiter, ``False``/None none,
        or pass a specific limiter. ``encoded_body``: a JSON body encoded already, sent as it is instead of
        ``json_body`` (a 1 MB profile body is not copied once more).
        """
        method = method.upper()
        pacer = self.limiter if limiter is True else (limiter or None)
        url = self._url(path)
        endpoint = f"{method} {path}"
        policy = self.retry
        attempt = 0
        reauthed = False
        if json_body is not None and encoded_body is not None:
            raise ValueError(f"{self.service} {endpoint}: pass json_body or encoded_body, not both")
        body = encoded_body if json_body is None else self._encode_body(json_body, endpoint)
        self.stats.add(requests=1)
        while True:
            attempt += 1
            headers = self._auth_headers() if authenticated else {}
            permit = None
            if pacer is not None:
                permit = pacer.acquire()
                if permit.waited:
                    self.stats.add(throttled=1, throttle_seconds=permit.waited)
            self.stats.add(calls=1)
            try:
                response = self._send_once(method, url, params, body, headers, permit)
            except _CALLER_ERRORS as exc:
                # a malformed URL, header or body: nothing was sent and a retry cannot help
                raise ValueError(
                    self._redact(f"{self.service} {endpoint}: invalid request ({type(exc).__name__}: {exc})")
                ) from None
            except requests.RequestException as exc:
                self.stats.error("transport")
                if isinstance(exc, requests.exceptions.SSLError):
                    raise TransportError(
                        "TLS error",
                        service=self.service,
                        method=method,
                        path=path,
                        attempts=attempt,
                        redactor=self._redact,
                    ) from exc
                ambiguous = not _connect_failure(exc)
                reason = _transport_reason(exc)
                if attempt < policy.max_attempts and (idempotent or not ambiguous):
                    self._backoff(endpoint, reason, attempt, None)
                    continue
                raise TransportError(
                    reason,
                    service=self.service,
                    method=method,
                    path=path,
                    attempts=attempt,
                    ambiguous=ambiguous,
                    redactor=self._redact,
                ) from exc
            status = response.status_code
            log.debug("%s %s -> %s in %.0f ms", self.service, endpoint, status, 1000 * response.elapsed.total_seconds())
            if 200 <= status < 300:
                return response
            self.stats.error(status)
            if status == 429:
                self.stats.add(rate_limited=1)
            if authenticated and not reauthed and status in (401, 403) and self._handle_auth_failure(response, headers):
                reauthed = True
                self.stats.add(reauths=1)
                attempt -= 1  # a re-send after re-authentication does not use up the retry budget
                log.info("%s %s: credentials refreshed, sending again", self.service, endpoint)
                continue
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            ambiguous = status >= 500
            if policy.is_retryable_status(status) and attempt < policy.max_attempts and (idempotent or not ambiguous):
                self._backoff(endpoint, f"HTTP {status}", attempt, retry_after)
                continue
            code, message = self._parse_error(response)
            raise self._error_class(status, code)(
                service=self.service,
                method=method,
                path=path,
                status=status,
                code=code,
                api_message=message,
                attempts=attempt,
                retry_after=retry_after,
                ambiguous=ambiguous,
                redactor=self._redact,
            )

    def _send_once(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        permit: Permit | None,
    ) -> requests.Response:
        """One HTTP attempt (``body``: JSON, encoded already); releases the rate-limit permit when the response
        headers (or the error) came."""
        started = time.monotonic()
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            response = self._thread_session().request(
                method, url, params=params, data=body, headers=headers, timeout=self.timeout, stream=True
            )
            _read_body(response)
        except BaseException:
            if permit is not None:
                permit.release()
            raise
        if permit is not None:
            # the server counted the request at the latest when it sent the response headers
            permit.release(started + response.elapsed.total_seconds())
        return response

    def _encode_body(self, value: Any, endpoint: str) -> bytes:
        """The request body as JSON, encoded once for every attempt (msgspec: a 1000-profile body in a fraction of
        ``json.dumps``'s time). NaN and infinities are refused, as ``requests`` refuses them: JSON has no such
        numbers and Netmera would read them as null."""
        try:
            body = msgspec.json.encode(value)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise ValueError(f"{self.service} {endpoint}: invalid request (the body is not JSON: {exc})") from None
        # a body encoded already (e.g. built by the state database from stored JSON) goes as ``encoded_body`` and is
        # not scanned: looking for "null" in it took 0.36 ms a 750 KB profile body
        if _NULL in body and _has_non_finite(value):
            raise ValueError(f"{self.service} {endpoint}: invalid request (the body holds NaN or an infinity)")
        return body

    def _backoff(self, endpoint: str, reason: str, attempt: int, retry_after: float | None) -> None:
        delay = self.retry.delay(attempt, retry_after, self._rng)
        log.info(
            "%s %s: %s on attempt %d/%d, retrying in %.2fs%s",
            self.service,
            endpoint,
            reason,
            attempt,
            self.retry.max_attempts,
            delay,
            " (Retry-After)" if retry_after is not None else "",
        )
        self.stats.add(retries=1, backoff_seconds=delay)
        if delay > 0:
            self._sleep(delay)

    def _decode(
        self, response: requests.Response, method: str, path: str, decode: Callable[[bytes], Any] | None = None
    ) -> Any:
        """Decode a 2xx body as JSON (empty body -> None); malformed JSON -> :class:`ResponseFormatError`.

        ``decode`` replaces the generic decoder (a typed one for a hot page format); it must raise ``ValueError``
        only for a body that is not JSON at all.
        """
        try:
            return response_json(response, decode)
        except ValueError:
            raise ResponseFormatError(
                "response body is not valid JSON",
                service=self.service,
                method=method,
                path=path,
                status=response.status_code,
                redactor=self._redact,
            ) from None


def body_text(response: requests.Response) -> str | None:
    """The body as text; a JSON string body (``"abc"``, quotes included) is unquoted."""
    try:
        text = response.text
    except Exception:  # pragma: no cover - undecodable bytes
        return None
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            text = decoded
    return text or None
