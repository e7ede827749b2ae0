"""Unit tests of the shared HTTP machinery: limiter, retry policy, redaction, errors, the request loop.

The request-loop tests talk to a real local HTTP server (stdlib ``http.server`` in a thread) that plays
a script of responses per path, so retries, resets and timeouts happen on real sockets.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from optimove_netmera.http import (
    ApiError,
    AuthError,
    BaseHttpClient,
    CallStats,
    ClientError,
    RateLimitedError,
    RateLimiter,
    Redactor,
    RetryPolicy,
    ServerError,
    TransportError,
    chunked,
    get_rate_limiter,
    parse_retry_after,
)
from optimove_netmera.sandbox.process import free_port

SECRET = "s3cr3t-api-key-0123456789"

# --------------------------------------------------------------------------------------------------
# a scripted local server


class Script:
    """Per-path queues of responses; each is (status, headers, body) or "reset" or ("sleep", s)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, list[Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.arrivals: list[float] = []  # time.monotonic() as each request arrived (compared with each other only)
        self.peers: list[tuple[str, int]] = []  # the client's address of each request (its connection)

    def set(self, path: str, *responses: Any) -> None:
        with self.lock:
            self.queues[path] = list(responses)

    def next(self, path: str) -> Any:
        with self.lock:
            queue = self.queues.get(path) or []
            if len(queue) > 1:
                return queue.pop(0)
            return queue[0] if queue else (200, {}, b"")

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _m, p, _h in self.seen if p.split("?", 1)[0] == path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        with self.script.lock:
            self.script.seen.append((self.command, self.path, dict(self.headers)))
            self.script.arrivals.append(time.monotonic())
            self.script.peers.append(self.client_address)
        action = self.script.next(path)
        if isinstance(action, tuple) and action[0] == "truncate":  # promises the whole body, sends half, closes
            body = action[1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if isinstance(action, tuple) and action[0] == "sleep":
            time.sleep(action[1])
            action = (200, {}, b"{}")
        status, headers, body = action
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("BoundHandler", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


class Probe(BaseHttpClient):
    """A minimal client over the base class; sleeps are recorded, and only slept with ``real_sleep=True``."""

    service = "probe"

    def __init__(self, base_url: str, *, retry: RetryPolicy | None = None, real_sleep: bool = False, **kw: Any):
        self.sleeps: list[float] = []
        super().__init__(
            base_url,
            timeout=kw.pop("timeout", (2, 5)),
            retry=retry or RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05),
            limiter=kw.pop("limiter", None),
            pool_size=2,
            redactor=Redactor([SECRET]),
            headers={"X-API-KEY": SECRET},
            sleep=self._record_and_sleep if real_sleep else self.sleeps.append,
        )

    def _record_and_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)

    def call(self, method: str = "GET", path: str = "/x", **kw: Any) -> Any:
        response = self._request(method, path, **kw)
        return self._decode(response, method, path)


# --------------------------------------------------------------------------------------------------
# RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_limiter_reserves_sliding_window_slots() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 1.0, margin=0.1, clock=clock, sleep=clock.sleep)
    slots = [limiter.reserve() for _ in range(7)]
    assert slots[:3] == [100.0, 100.0, 100.0]
    assert slots[3:6] == pytest.approx([101.1, 101.1, 101.1])
    assert slots[6] == pytest.approx(102.2)


def test_limiter_acquire_sleeps_until_slot_and_frees_with_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, margin=0.0, clock=clock, sleep=clock.sleep)
    assert limiter.acquire().waited == 0.0
    assert limiter.acquire().waited == 0.0
    assert limiter.acquire().waited == pytest.approx(1.0)
    assert clock.now == pytest.approx(101.0)
    clock.now += 5  # idle: the window is empty again
    assert limiter.acquire().waited == 0.0
    assert limiter.acquire().waited == 0.0


def test_limiter_counts_a_released_request_from_its_response() -> None:
    # the server stamps a request somewhere between its start and its response: the window
    # of a released request starts at its response
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, margin=0.0, clock=clock, sleep=clock.sleep)
    first = limiter.acquire()
    second = limiter.acquire()
    first.release(at=100.4)  # answered after 400 ms
    second.release(at=100.1)
    assert limiter.reserve() == pytest.approx(101.4)  # one period after the first *response*
    # a grant that leaves the log before its release still pushes later grants back
    clock.now = 200.0
    slow = limiter.acquire()
    limiter.acquire()
    assert limiter.reserve() == pytest.approx(201.0)  # evicts slow (unreleased: counted from 200.0)
    slow.release(at=200.9)
    assert limiter.reserve() == pytest.approx(201.9)  # the later release is respected


def test_limiter_release_defaults_to_now() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, margin=0.0, clock=clock, sleep=clock.sleep)
    permit = limiter.acquire()
    clock.now += 0.3
    permit.release()
    assert limiter.reserve() == pytest.approx(101.3)


def test_limiter_default_margin_and_validation() -> None:
    assert RateLimiter(50, 10.0).margin == pytest.approx(0.05)
    assert RateLimiter(20, 2.0).margin == pytest.approx(0.025)
    for bad in [(0, 1.0), (1, 0.0), (1.5, 1.0)]:
        with pytest.raises(ValueError):
            RateLimiter(*bad)  # type: ignore[arg-type]


def test_limiter_is_thread_safe_and_never_exceeds_window() -> None:
    """8 threads, 40 grants: the limiter's own log of grant starts never holds more than ``calls`` in a period."""
    calls, period = 10, 0.5
    limiter = RateLimiter(calls, period)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            permit = limiter.acquire()
            with lock:
                starts.append(permit._slot.start)  # the start the limiter granted, on its clock
            time.sleep(0.01)  # "the request"
            permit.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts.sort()
    assert len(starts) == 40
    # any calls+1 consecutive grants span more than one period: at most `calls` in any window
    for i in range(len(starts) - calls):
        assert starts[i + calls] - starts[i] > period
    assert starts[-1] - starts[0] > 3 * period  # 40 grants at 10 per period need 3 full windows


def test_registry_shares_and_reconfigures_in_place() -> None:
    a = get_rate_limiter("test-registry-account", 5, 1.0)
    b = get_rate_limiter("test-registry-account", 5, 1.0)
    assert a is b
    c = get_rate_limiter("test-registry-account", 7, 2.0)
    assert c is a and (a.calls, a.period) == (7, 2.0)
    assert get_rate_limiter("test-registry-other", 5, 1.0) is not a


# --------------------------------------------------------------------------------------------------
# RetryPolicy and Retry-After


def test_backoff_full_jitter_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, multiplier=2.0, max_delay=4.0)
    fixed = RetryPolicy(base_delay=0.5, multiplier=2.0, max_delay=4.0, jitter=False)
    assert [fixed.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for n in range(1, 7):
        for _ in range(50):
            assert 0.0 <= policy.backoff(n) <= fixed.backoff(n)
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert RetryPolicy(max_retry_after=5.0).delay(1, retry_after=60.0) == 5.0


def test_retryable_statuses() -> None:
    assert RetryPolicy.is_retryable_status(429)
    assert all(RetryPolicy.is_retryable_status(s) for s in (500, 502, 503, 504, 599))
    assert not any(RetryPolicy.is_retryable_status(s) for s in (400, 401, 403, 404, 409, 422))


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None


# --------------------------------------------------------------------------------------------------
# Redaction and errors


def test_redactor_hides_secrets_in_every_spelling() -> None:
    redact = Redactor(["p@ss word/1", SECRET, None, ""])
    text = (
        f"key {SECRET} url p%40ss%20word%2F1 form p%40ss+word%2F1 raw p@ss word/1 "
        'X-API-KEY: other-key {"Password": "hunter22"} Authorization-Token=abc.def token: Bearer xyz'
    )
    out = redact(text)
    for leaked in (SECRET, "p%40ss", "p@ss word", "other-key", "hunter22", "abc.def", "xyz"):
        assert leaked not in out
    assert out.count("***") >= 8


def test_api_error_text_names_endpoint_status_code_message_without_secrets_or_query() -> None:
    err = ClientError(
        service="netmera",
        method="post",
        path="/rest/3.0/sendNotification?apiKey=" + SECRET,
        status=400,
        code=2004,
        api_message=f"Field 'notificationKey' should be a text (key {SECRET})",
        redactor=Redactor([SECRET]),
    )
    text = str(err)
    assert "netmera POST /rest/3.0/sendNotification" in text
    assert "HTTP 400" in text and "code 2004" in text and "should be a text" in text
    assert SECRET not in text and "apiKey" not in text
    assert err.endpoint == "POST /rest/3.0/sendNotification"
    assert (err.status, err.code, err.service) == (400, 2004, "netmera")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is ClientError and str(clone) == text and clone.code == 2004


def test_error_hierarchy() -> None:
    assert issubclass(AuthError, ClientError) and issubclass(ClientError, ApiError)
    assert RateLimitedError.retryable and ServerError.retryable and TransportError.retryable
    assert not ClientError.retryable


def test_chunked() -> None:
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_call_stats_snapshot_and_reset() -> None:
    stats = CallStats()
    stats.add(calls=2, retries=1, throttle_seconds=0.25)
    stats.error(503)
    stats.error("transport")
    snap = stats.snapshot()
    assert snap["calls"] == 2 and snap["retries"] == 1 and snap["errors"] == {"503": 1, "transport": 1}
    json.dumps(snap)
    stats.reset()
    assert stats.snapshot()["calls"] == 0 and stats.snapshot()["errors"] == {}


# --------------------------------------------------------------------------------------------------
# The request loop against a real local server


def test_5xx_then_success(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", (503, {}, b"busy"), (502, {}, b""), (200, {}, {"ok": True}))
    probe = Probe(url)
    assert probe.call() == {"ok": True}
    assert script.count("/x") == 3
    snap = probe.stats.snapshot()
    assert snap["calls"] == 3 and snap["retries"] == 2 and snap["requests"] == 1
    assert snap["errors"] == {"503": 1, "502": 1}
    assert len(probe.sleeps) == 2
    assert script.seen[0][2]["X-API-KEY"] == SECRET


def test_a_body_is_json_or_encoded_not_both(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", (200, {}, {"ok": True}))
    probe = Probe(url)
    with pytest.raises(ValueError, match="json_body or encoded_body, not both"):
        probe.call("POST", json_body={"a": 1}, encoded_body=b'{"a":2}')
    assert script.count("/x") == 0 and probe.stats.calls == 0
    assert probe.call("POST", encoded_body=b'{"a":2}') == {"ok": True}


def test_400_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", (400, {"Content-Type": "text/plain"}, b"bad parameter"))
    probe = Probe(url)
    with pytest.raises(ClientError) as info:
        probe.call(params={"q": "1"})
    assert script.count("/x") == 1
    assert info.value.status == 400 and info.value.api_message == "bad parameter"
    assert probe.sleeps == [] and probe.stats.retries == 0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_not_retried(server: tuple[str, Script], status: int) -> None:
    url, script = server
    script.set("/x", (status, {}, b"nope"))
    with pytest.raises(AuthError):
        Probe(url).call()
    assert script.count("/x") == 1


def test_429_honours_retry_after_seconds_and_date(server: tuple[str, Script]) -> None:
    url, script = server
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    script.set(
        "/x",
        (429, {"Retry-After": "3"}, b"{}"),
        (429, {"Retry-After": later}, b"{}"),
        (200, {}, b"[]"),
    )
    probe = Probe(url)
    assert probe.call() == []
    assert probe.sleeps[0] == 3.0
    assert 17.0 <= probe.sleeps[1] <= 20.0
    assert probe.stats.rate_limited == 2


def test_429_real_retry_after_wait(server: tuple[str, Script]) -> None:
    """Retry-After: 1 with a real sleep: the client asked for 1 s and the server saw the retry >= 1 s later."""
    url, script = server
    script.set("/x", (429, {"Retry-After": "1"}, b"{}"), (200, {}, b"{}"))
    probe = Probe(url, real_sleep=True)
    probe.call()
    assert probe.sleeps == [1.0]
    assert script.count("/x") == 2
    assert script.arrivals[1] - script.arrivals[0] >= 1.0


def test_429_exhausts_into_rate_limited_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", (429, {}, b'{"message": "slow down"}'))
    with pytest.raises(RateLimitedError) as info:
        Probe(url).call()
    assert script.count("/x") == 4 and info.value.attempts == 4
    assert "after 4 attempts" in str(info.value)


def test_connection_reset_is_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", "reset", "reset", (200, {}, b'{"n": 1}'))
    probe = Probe(url)
    assert probe.call() == {"n": 1}
    assert script.count("/x") == 3
    assert probe.stats.errors["transport"] == 2


def test_large_bodies_arrive_whole_over_one_connection(server: tuple[str, Script]) -> None:
    url, script = server
    rows = [{"CustomerID": f"C{i:07d}", "Attributes": ["x" * 40, i]} for i in range(40_000)]  # ~2.6 MB
    script.set("/page", (200, {}, json.dumps(rows).encode()))
    probe = Probe(url)
    for _ in range(3):
        assert probe.call(path="/page") == rows
    assert len(set(script.peers)) == 1, "each body was read to its end and the connection went back to the pool"


def test_body_cut_short_is_a_transport_error_and_retried(server: tuple[str, Script]) -> None:
    url, script = server
    body = json.dumps({"rows": list(range(50_000))}).encode()
    script.set("/x", ("truncate", body), (200, {}, body))
    probe = Probe(url)
    assert probe.call() == {"rows": list(range(50_000))}
    assert script.count("/x") == 2
    assert probe.stats.errors["transport"] == 1


def test_read_timeout_is_retried_then_transport_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/x", ("sleep", 1.0))
    probe = Probe(url, timeout=(1, 0.2), retry=RetryPolicy(max_attempts=2, base_delay=0.0))
    with pytest.raises(TransportError) as info:
        probe.call()
    assert script.count("/x") == 2
    assert info.value.ambiguous and "read timeout" in str(info.value)


def test_non_idempotent_request_is_not_retried_after_ambiguous_failure(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/send", (503, {}, b""), (200, {}, b"{}"))
    probe = Probe(url)
    with pytest.raises(ServerError) as info:
        probe.call("POST", "/send", json_body={"a": 1}, idempotent=False)
    assert info.value.ambiguous
    assert script.count("/send") == 1
    script.set("/send", "reset", (200, {}, b"{}"))
    with pytest.raises(TransportError) as info2:
        probe.call("POST", "/send", json_body={"a": 1}, idempotent=False)
    assert info2.value.ambiguous
    # a 429 means "not processed": safe to retry even when not idempotent
    script.set("/send", (429, {}, b""), (200, {}, b"{}"))
    assert probe.call("POST", "/send", json_body={"a": 1}, idempotent=False) == {}


def test_connect_failure_is_unambiguous_and_retried_even_when_not_idempotent() -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    probe = Probe(nothing_listens, retry=RetryPolicy(max_attempts=3, base_delay=0.0))
    with pytest.raises(TransportError) as info:
        probe.call("POST", "/send", json_body={}, idempotent=False)
    assert not info.value.ambiguous and info.value.attempts == 3
    assert "connection failed" in str(info.value)


def test_limiter_paces_requests(server: tuple[str, Script]) -> None:
    """12 requests through a 5 per 0.5 s limiter: the server never sees 6 inside one 0.5 s window."""
    url, script = server
    calls, period = 5, 0.5
    probe = Probe(url, limiter=RateLimiter(calls, period))
    for _ in range(12):
        probe.call()
    arrivals = script.arrivals
    assert len(arrivals) == 12
    for i in range(len(arrivals) - calls):
        assert arrivals[i + calls] - arrivals[i] > period
    assert probe.stats.throttled > 0  # the client waited for the limiter, not the server


def test_secret_echoed_by_server_never_reaches_error_or_logs(
    server: tuple[str, Script], caplog: pytest.LogCaptureFixture
) -> None:
    url, script = server
    script.set("/x", (503, {}, b"x"), (418, {}, json.dumps({"message": f"your key {SECRET} is odd"}).encode()))
    caplog.set_level(logging.DEBUG, logger="optimove_netmera.http")
    with pytest.raises(ClientError) as info:
        Probe(url).call(params={"CampaignID": 7})
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert "***" in str(info.value)
    assert "GET /x" in str(info.value) and "CampaignID" not in str(info.value)
    assert caplog.records, "retries are logged"
    assert any("HTTP 503" in r.getMessage() and "GET /x" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_empty_and_malformed_bodies(server: tuple[str, Script]) -> None:
    url, script = server
    script.set("/empty", (200, {}, b""))
    script.set("/blank", (200, {}, b"  \n"))
    script.set("/bad", (200, {}, b"{not json"))
    probe = Probe(url)
    assert probe.call(path="/empty") is None
    assert probe.call(path="/blank") is None
    with pytest.raises(ApiError, match="not valid JSON"):
        probe.call(path="/bad")


# --------------------------------------------------------------------------------------------------
# one requests.Session per thread


def test_each_thread_uses_its_own_session() -> None:
    """requests does not promise a shared Session is thread-safe: the building thread uses ``client.session``,
    every other thread a Session of its own with the same headers, closed by close_thread_session()."""
    from optimove_netmera.netmera import NetmeraClient

    client = NetmeraClient("http://127.0.0.1:9", SECRET)
    assert client._thread_session() is client.session
    seen: list[Any] = []
    closed: list[bool] = []

    def worker() -> None:
        own = client._thread_session()
        assert own is client._thread_session()  # kept for the thread's later requests
        seen.append(own)
        client.close_thread_session()
        closed.append(client._thread_session() is not own)  # a new one after closing

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len({id(s) for s in seen}) == 3 and all(s is not client.session for s in seen)
    assert all(s.headers["X-netmera-api-key"] == SECRET for s in seen) and closed == [True] * 3
    client.close_thread_session()  # the building thread's session stays
    assert client._thread_session() is client.session
    client.close()
