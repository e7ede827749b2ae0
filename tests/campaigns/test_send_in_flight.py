"""Several ``sendNotification`` requests in flight per send task (``campaigns.requests_in_flight``), observed with
requests held in flight (sandbox over HTTP, SQLite and PostgreSQL state DBs).

Each test was checked by deleting the safeguard it names and seeing it fail (see scripts/safeguards.py): a worker
claims nothing once another saw a failure; the pending rows are cancelled once, after the requests in flight
finished; a cancel is narrowed by one worker at a time; the last look also catches a cancel that another worker
narrowed meanwhile, and rows put back re-get the cancel. Expected outcomes come from Optimove's answers, the
sandbox's request log and literal values, never from the code under test. The holds are events and barriers
released by the test once a condition holds (generous deadlines, no timing assertions).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import recipients, state
from optimove_netmera.campaigns import send as send_module
from optimove_netmera.campaigns.send import SendOutcome, send_chunks
from optimove_netmera.http import ServerError
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.store import Campaign, get_engine
from sends_helpers import (
    CHANNEL,
    configure,
    deliveries,
    expected_recipients,
    ledger,
    send_requests,
    statuses,
    task_states,
    utcnow,
)
from sends_helpers import send_campaign as send
from waiting import wait_for

CHUNK = 50
IN_FLIGHT = 4
DEADLINE = 120.0

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sandbox (reset), the test's state DB, chunks of 50, no task retries."""
    configure(sandbox_reset, db_url, monkeypatch, chunk_size=CHUNK)
    return sandbox_reset


def staged(box: Any, db_url: str, recipients_n: int) -> tuple[int, list[int]]:
    """A campaign staged and chunked by a real run whose send tasks are skipped: (campaign id, chunk numbers)."""
    cid = box.admin.optimove.create_campaign(recipients=recipients_n, control_fraction=0.0, templates=[1])[
        "campaign_id"
    ]
    dr = send(cid, mark_success_pattern="send")
    assert send_requests(box) == 0, task_states(dr)
    chunks = sorted({r["chunk_no"] for r in ledger(db_url, cid) if r["chunk_no"] is not None})
    return cid, chunks


class HoldingNetmera(NetmeraClient):
    """The real client. Its first ``hold`` requests wait for each other and for ``go`` before going out (so that
    many are in flight at once), and, when they succeed, for ``finish`` before returning. Thread-safe counts."""

    def __init__(self, box: Any, hold: int) -> None:
        super().__init__(box.netmera_url, box.netmera_api_key)
        self.hold = hold
        self.lock = threading.Lock()
        self.go = threading.Event()
        self.finish = threading.Event()
        self.started = 0
        self.started_after_cancel = 0
        self.cancelled = False
        self.held_ext_ids: set[str] = set()
        self.workers_ended = 0

    def send_encoded_notifications(self, body: bytes, count: int, **kwargs: Any) -> Any:
        with self.lock:
            self.started += 1
            n = self.started
            self.started_after_cancel += self.cancelled
            if n <= self.hold:
                self.held_ext_ids.update(b["target"]["extId"] for b in json.loads(body))
        if n <= self.hold:
            assert self.go.wait(DEADLINE), "the test never released the held requests"
        result = super().send_encoded_notifications(body, count, **kwargs)
        if n <= self.hold:
            assert self.finish.wait(DEADLINE), "the test never let the held requests finish"
        return result

    def mark_cancelled(self) -> None:
        with self.lock:
            self.cancelled = True

    def close_thread_session(self) -> None:
        super().close_thread_session()  # the last thing a send worker does
        with self.lock:
            self.workers_ended += 1


def in_background(call: Callable[[], SendOutcome]) -> Callable[[], SendOutcome]:
    """Run ``call`` in a thread; the returned function joins it and returns its result (or raises its error)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> SendOutcome:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "send_chunks did not return"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


def all_in_flight(netmera: HoldingNetmera) -> None:
    wait_for(f"{netmera.hold} requests in flight", lambda: netmera.started >= netmera.hold, DEADLINE, 0.05)


def exactly_once(box: Any) -> Counter[str]:
    got = Counter(d["extId"] for d in deliveries(box))
    assert not got or max(got.values()) == 1, "a recipient got the push twice"
    return got


# --------------------------------------------------------------------------------------------------


def test_several_in_flight_send_everyone_once_with_exact_counts(env: Any, db_url: str) -> None:
    """10 chunks, 4 requests in flight (held until all 4 are out): everyone sent once, the outcome adds up."""
    box = env
    cid, chunks = staged(box, db_url, 10 * CHUNK)
    expected = expected_recipients(box, cid)
    netmera = HoldingNetmera(box, hold=IN_FLIGHT)
    netmera.go.set()
    netmera.finish.set()
    out = send_chunks(get_engine(db_url), netmera, cid, CHANNEL, chunks, requests_in_flight=IN_FLIGHT)
    assert (out.requests, out.chunks, out.sent, out.failed, out.unknown) == (10, 10, 10 * CHUNK, 0, 0)
    assert not out.cancelled and netmera.started == 10 and send_requests(box) == 10
    assert set(exactly_once(box)) == set(expected["sendable"])
    assert statuses(ledger(db_url, cid)) == Counter({"sent": 10 * CHUNK})


def test_cancel_while_requests_are_in_flight_stops_every_worker(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel committed (campaign row only: the pending rows stay pending) while 4 requests are in flight: those
    4 finish and are recorded sent, no request starts after it, the pending rows are cancelled once, by _stop."""
    box = env
    cid, chunks = staged(box, db_url, 10 * CHUNK)
    engine = get_engine(db_url)
    netmera = HoldingNetmera(box, hold=IN_FLIGHT)
    stops: list[int] = []
    real_stop = send_module._stop

    def counting_stop(*args: Any, **kwargs: Any) -> SendOutcome:
        stops.append(1)
        return real_stop(*args, **kwargs)

    monkeypatch.setattr(send_module, "_stop", counting_stop)
    result = in_background(
        lambda: send_chunks(engine, netmera, cid, CHANNEL, chunks, optimove=lambda: None, requests_in_flight=IN_FLIGHT)
    )
    all_in_flight(netmera)
    assert statuses(ledger(db_url, cid))["in_flight"] == IN_FLIGHT * CHUNK
    with engine.begin() as conn:  # a cancel on the campaign row only (the pending rows stay pending)
        conn.execute(
            sa.update(Campaign.__table__)
            .where(Campaign.campaign_id == cid, Campaign.channel_id == CHANNEL)
            .values(state="cancelled", cancelled_at=utcnow(), cancel_scope="all", cancel_fetched_at=None)
        )
    netmera.mark_cancelled()
    netmera.go.set()
    netmera.finish.set()
    out = result()
    assert netmera.started_after_cancel == 0, "a Netmera request started after the cancel was committed"
    assert out.cancelled and out.cancel_scope == "all" and stops == [1]
    assert (out.requests, out.sent, out.cancelled_recipients) == (IN_FLIGHT, IN_FLIGHT * CHUNK, 6 * CHUNK)
    assert statuses(ledger(db_url, cid)) == Counter({"sent": IN_FLIGHT * CHUNK, "cancelled": 6 * CHUNK})
    assert send_requests(box) == IN_FLIGHT and len(exactly_once(box)) == IN_FLIGHT * CHUNK


def test_failure_in_one_request_stops_claiming_and_raises_after_the_others_finish(env: Any, db_url: str) -> None:
    """4 requests in flight, the first to reach Netmera gets a 503 (ambiguous): its rows become unknown, its worker
    ends; the 3 others, let finish only then, are recorded sent; nothing more is claimed; the 503 is raised."""
    box = env
    cid, chunks = staged(box, db_url, 10 * CHUNK)
    box.admin.netmera.set_faults(
        [{"endpoint": "/rest/3.0/sendNotification", "error_rate": 1.0, "error_status": 503, "count": 1}]
    )
    netmera = HoldingNetmera(box, hold=IN_FLIGHT)
    result = in_background(
        lambda: send_chunks(get_engine(db_url), netmera, cid, CHANNEL, chunks, requests_in_flight=IN_FLIGHT)
    )
    all_in_flight(netmera)
    netmera.go.set()
    wait_for("the failed request's worker to end", lambda: netmera.workers_ended >= 1, DEADLINE, 0.05)
    netmera.finish.set()
    with pytest.raises(ServerError) as err:
        result()
    assert err.value.status == 503 and err.value.ambiguous
    assert netmera.started == IN_FLIGHT, "a chunk was claimed and sent after a request had failed"
    counts = statuses(ledger(db_url, cid))
    assert counts == Counter({"sent": 3 * CHUNK, "unknown": CHUNK, "pending": 6 * CHUNK}), counts
    assert send_requests(box) == 3 and send_requests(box, "503") == 1
    exactly_once(box)


class NarrowingOptimove(OptimoveClient):
    """The real client; a ``GetCanceledCampaignCustomers`` call waits a while for a second, concurrent one."""

    def __init__(self, box: Any) -> None:
        super().__init__(box.optimove_url, api_key=box.optimove_api_key)
        self.lock = threading.Lock()
        self.calls = 0
        self.second = threading.Event()

    def get_canceled_campaign_customers(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.calls += 1
            if self.calls > 1:
                self.second.set()
        self.second.wait(3.0)  # without the narrowing lock, the other workers' calls arrive meanwhile
        return super().get_canceled_campaign_customers(*args, **kwargs)


def test_partial_cancel_seen_by_several_workers_is_narrowed_once(env: Any, db_url: str) -> None:
    """Optimove cancelled 40 customers; event 4 lands while 4 requests are in flight. All 4 workers then see the
    cancel; one asks Optimove (once), the send goes on without the listed customers not already in flight."""
    box = env
    cid, chunks = staged(box, db_url, 10 * CHUNK)
    expected = expected_recipients(box, cid)
    box.admin.optimove.cancel_campaign(cid, customers=40)
    optimove = NarrowingOptimove(box)
    listed = {
        c.customer_id
        for c in OptimoveClient(box.optimove_url, api_key=box.optimove_api_key).get_canceled_campaign_customers(cid)
    }
    assert len(listed) == 40
    engine = get_engine(db_url)
    netmera = HoldingNetmera(box, hold=IN_FLIGHT)
    result = in_background(
        lambda: send_chunks(
            engine, netmera, cid, CHANNEL, chunks, optimove=lambda: optimove, requests_in_flight=IN_FLIGHT
        )
    )
    all_in_flight(netmera)
    state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")
    netmera.go.set()
    netmera.finish.set()
    out = result()
    assert optimove.calls == 1, "the cancel was narrowed by more than one worker"
    assert not out.cancelled and out.cancel_scope == "partial"
    withheld = listed - netmera.held_ext_ids
    assert withheld, "some listed customers were still to be sent when the cancel arrived"
    assert set(exactly_once(box)) == set(expected["sendable"]) - withheld
    rows = {r["customer_id"]: r["status"] for r in ledger(db_url, cid)}
    assert {c for c, s in rows.items() if s == "cancelled"} == withheld
    assert out.sent == 10 * CHUNK - len(withheld)


@pytest.mark.parametrize("narrowed", ["before_the_last_look", "before_the_rows_go_back"])
def test_cancel_narrowed_by_another_worker_around_the_last_look(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, narrowed: str
) -> None:
    """Chunk 1 is claimed; then a cancel arrives and another worker narrows it to partial (Optimove lists 100
    customers), either before this worker's last look (which then reads "not cancelled", but a newer cancel) or
    between its last look and putting its rows back. Either way chunk 1's listed customers are not sent."""
    box = env
    cid, chunks = staged(box, db_url, 4 * CHUNK)
    expected = expected_recipients(box, cid)
    box.admin.optimove.cancel_campaign(cid, customers=100)
    optimove = OptimoveClient(box.optimove_url, api_key=box.optimove_api_key)
    listed = {c.customer_id for c in optimove.get_canceled_campaign_customers(cid)}
    rows = ledger(db_url, cid)
    first = {r["customer_id"] for r in rows if r["chunk_no"] == chunks[0]}
    second = {r["customer_id"] for r in rows if r["chunk_no"] == chunks[1]}
    assert listed & second, "the sandbox's seed lists some of chunk 1's customers"
    engine = get_engine(db_url)

    def cancel_and_narrow() -> None:
        state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")
        assert send_module.narrow_cancel(engine, optimove, cid, CHANNEL) == "partial"  # what the other worker does

    real_claim, real_finish = recipients.claim_chunk, recipients.finish_request
    done: list[str] = []

    def claim(eng: Any, c: int, ch: int, chunk: int, *rest: Any) -> list[Any]:
        got = real_claim(eng, c, ch, chunk, *rest)
        if chunk == chunks[1] and got and narrowed == "before_the_last_look" and not done:
            done.append(narrowed)
            cancel_and_narrow()
        elif chunk == chunks[1] and got and narrowed == "before_the_rows_go_back" and not done:
            done.append("cancelled")
            state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")  # the last look sees it
        return got

    def finish(eng: Any, c: int, ch: int, chunk: int, request_id: str, to_status: str, *rest: Any, **kw: Any) -> int:
        if done == ["cancelled"] and to_status == "pending":
            done.append(narrowed)
            assert send_module.narrow_cancel(engine, optimove, cid, CHANNEL) == "partial"
        return real_finish(eng, c, ch, chunk, request_id, to_status, *rest, **kw)

    monkeypatch.setattr(recipients, "claim_chunk", claim)
    monkeypatch.setattr(recipients, "finish_request", finish)
    out = send_chunks(engine, NetmeraClient(box.netmera_url, box.netmera_api_key), cid, CHANNEL, chunks)
    assert done[-1] == narrowed
    assert not out.cancelled and out.cancel_scope is None
    withheld = listed - first
    got = exactly_once(box)
    assert not (set(got) & withheld), "a customer of a partial cancel was sent after it had been narrowed"
    assert set(got) == set(expected["sendable"]) - withheld
