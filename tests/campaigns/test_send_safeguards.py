"""Each safeguard of the campaign send path, observed directly (sandbox over HTTP, SQLite and PostgreSQL).

Every test here was checked by deleting the safeguard it names and seeing it fail: the deferral until the
scheduled time, each cancellation check of the send loop, narrowing a partial cancel that arrives mid-send, a
Netmera 400 (dead letter + failed), the hook's default Optimove rate limit, the extId transform on the campaign
path, the runtime Variable override, staging's duplicate drop across pages (by the ledger's key) and its page
prefetch stopping on a failure either side. Expected outcomes come from Optimove's own answers and literal values,
never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import recipients, state
from optimove_netmera.campaigns.send import SendOutcome, send_chunks
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import load_settings
from optimove_netmera.store import Campaign, DeadLetter, Recipient, get_engine
from sends_helpers import (
    CHANNEL,
    configure,
    deliveries,
    expected_recipients,
    ledger,
    optimove_client,
    send_requests,
    statuses,
    task_states,
    utcnow,
    xcom,
)
from sends_helpers import (
    send_campaign as send,
)

DAG_ID = "optimove_campaign_send"
CHUNK = 50

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sandbox (reset), the test's state DB, chunks of 50, no task retries."""
    configure(sandbox_reset, db_url, monkeypatch, chunk_size=CHUNK)
    return sandbox_reset


def staged(box: Any, db_url: str, recipients_n: int, **campaign: Any) -> tuple[int, list[int]]:
    """A campaign staged and chunked by a real run whose send tasks are skipped: (campaign id, chunk numbers)."""
    cid = box.admin.optimove.create_campaign(recipients=recipients_n, control_fraction=0.0, templates=[1], **campaign)[
        "campaign_id"
    ]
    dr = send(cid, mark_success_pattern="send")
    assert send_requests(box) == 0, task_states(dr)
    chunks = sorted({r["chunk_no"] for r in ledger(db_url, cid) if r["chunk_no"] is not None})
    return cid, chunks


class RecordingNetmera(NetmeraClient):
    """The real client; counts the requests it started, and runs ``after_request`` once a request returned."""

    def __init__(self, box: Any, after_request: Callable[[int], None] = lambda n: None) -> None:
        super().__init__(box.netmera_url, box.netmera_api_key)
        self.started = 0
        self.after_request = after_request
        self.started_after_cancel = 0
        self.cancelled = False

    def send_encoded_notifications(self, *args: Any, **kwargs: Any) -> Any:
        self.started += 1
        if self.cancelled:
            self.started_after_cancel += 1
        try:
            return super().send_encoded_notifications(*args, **kwargs)
        finally:
            self.after_request(self.started)


def cancel_campaign_row_only(engine: Any, cid: int) -> None:
    """Commit a cancel on the campaign row only, leaving its pending rows pending.

    That is the state a competing sender leaves when its last look put its claimed rows back to pending after a
    cancel: the campaign is cancelled and rows are pending, so only the claim's own condition keeps them.
    """
    table = Campaign.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(table.c.campaign_id == cid, table.c.channel_id == CHANNEL)
            .values(state="cancelled", cancelled_at=utcnow(), cancel_scope="all", cancel_fetched_at=None)
        )


def assert_stopped_after(db_url: str, cid: int, out: SendOutcome, netmera: RecordingNetmera, sent_chunks: int) -> None:
    """The send stopped at the cancel: no request after it, the chunks before it sent, everyone else cancelled."""
    assert netmera.started_after_cancel == 0, "a Netmera request started after the cancel was committed"
    assert out.cancelled and out.cancel_scope == "all"
    counts = statuses(ledger(db_url, cid))
    assert counts == Counter({"sent": sent_chunks * CHUNK, "cancelled": (3 - sent_chunks) * CHUNK}), counts
    assert out.requests == sent_chunks and out.sent == sent_chunks * CHUNK


# --------------------------------------------------------------------------------------------------
# the deferral until Optimove's ScheduleTime


def test_send_task_defers_until_the_scheduled_time(env: Any, db_url: str) -> None:
    """A batch scheduled an hour ahead: the operator defers on a DateTimeTrigger at exactly that moment, sends
    nothing and marks the campaign waiting; resumed, it sends the batch."""
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import TaskDeferred
    from optimove_netmera.campaigns.tasks import CampaignSendOperator

    box = env
    when = (utcnow() + dt.timedelta(hours=1)).replace(microsecond=0)
    cid = box.admin.optimove.create_campaign(
        recipients=60, control_fraction=0.0, templates=[1], scheduled_time=when.strftime("%Y-%m-%d %H:%M:%S")
    )["campaign_id"]
    dr = send(cid, mark_success_pattern="send")
    batches = xcom(dr, "plan")["batches"]
    assert len(batches) == 1 and dt.datetime.fromisoformat(batches[0]["scheduled_time"]) == when

    op = CampaignSendOperator(task_id="send_probe", batch=batches[0])
    context: dict[str, Any] = {"params": {}}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger) and trigger.moment == when
    assert deferred.value.method_name == "execute_complete"
    assert send_requests(box) == 0 and not deliveries(box)
    with get_engine(db_url).connect() as conn:
        assert conn.scalar(sa.select(Campaign.state).where(Campaign.campaign_id == cid)) == "waiting"

    result = op.execute_complete(context)  # type: ignore[arg-type]  # the trigger fired
    assert result["sent"] == 60 and send_requests(box) == 2


# --------------------------------------------------------------------------------------------------
# the cancellation checks of the send loop


def test_cancel_seen_at_the_top_of_the_loop(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel committed right after chunk 0's request: the loop's first read stops it before any claim."""
    box = env
    cid, chunks = staged(box, db_url, 3 * CHUNK)
    engine = get_engine(db_url)
    netmera = RecordingNetmera(box)

    def cancel_after_first(n: int) -> None:
        if n == 1:
            state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")
            netmera.cancelled = True

    netmera.after_request = cancel_after_first
    real_claim = recipients.claim_chunk

    def claim(*args: Any, **kwargs: Any) -> list[Any]:
        if netmera.cancelled:
            raise AssertionError("a chunk was claimed after the cancel was committed")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(recipients, "claim_chunk", claim)
    out = send_chunks(engine, netmera, cid, CHANNEL, chunks)
    assert_stopped_after(db_url, cid, out, netmera, sent_chunks=1)


def test_cancel_committed_between_the_check_and_the_claim(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that lands after the loop's read, before the last chunk's claim: the claim takes nobody (its
    condition), and the empty claim is re-checked, so the send still ends cancelled."""
    box = env
    cid, chunks = staged(box, db_url, 3 * CHUNK)
    engine = get_engine(db_url)
    netmera = RecordingNetmera(box)
    real_claim = recipients.claim_chunk
    claimed_after_cancel: list[int] = []

    def claim(eng: Any, c: int, ch: int, chunk: int, *rest: Any) -> list[Any]:
        if chunk == chunks[-1] and not netmera.cancelled:
            cancel_campaign_row_only(engine, cid)
            netmera.cancelled = True
        rows = real_claim(eng, c, ch, chunk, *rest)
        if netmera.cancelled:
            claimed_after_cancel.append(len(rows))
        return rows

    monkeypatch.setattr(recipients, "claim_chunk", claim)
    out = send_chunks(engine, netmera, cid, CHANNEL, chunks)
    assert claimed_after_cancel and not any(claimed_after_cancel), "the claim took rows of a cancelled campaign"
    assert_stopped_after(db_url, cid, out, netmera, sent_chunks=2)


def test_cancel_committed_between_the_claim_and_the_request(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that lands after chunk 1 was claimed: the last look puts the rows back and nothing is sent."""
    box = env
    cid, chunks = staged(box, db_url, 3 * CHUNK)
    engine = get_engine(db_url)
    netmera = RecordingNetmera(box)
    real_claim = recipients.claim_chunk

    def claim(eng: Any, c: int, ch: int, chunk: int, *rest: Any) -> list[Any]:
        rows = real_claim(eng, c, ch, chunk, *rest)
        if chunk == chunks[1] and rows:
            state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")
            netmera.cancelled = True
        return rows

    monkeypatch.setattr(recipients, "claim_chunk", claim)
    out = send_chunks(engine, netmera, cid, CHANNEL, chunks)
    assert_stopped_after(db_url, cid, out, netmera, sent_chunks=1)
    assert send_requests(box) == 1 and len(deliveries(box)) == CHUNK  # Netmera's side agrees


def test_partial_cancel_arriving_mid_send_is_narrowed(env: Any, db_url: str) -> None:
    """Optimove cancelled 40 customers; event 4 arrives after the first request. GetCanceledCampaignCustomers
    narrows it: the listed customers not yet sent are cancelled, everyone else is still sent."""
    box = env
    cid, chunks = staged(box, db_url, 4 * CHUNK)
    expected = expected_recipients(box, cid)
    box.admin.optimove.cancel_campaign(cid, customers=40)
    listed = {c.customer_id for c in optimove_client(box).get_canceled_campaign_customers(cid)}
    assert len(listed) == 40
    engine = get_engine(db_url)
    before_cancel: set[str] = set()

    def cancel_after_first(n: int) -> None:
        if n == 1:
            before_cancel.update(d["extId"] for d in deliveries(box))
            state.mark_cancelled(engine, cid, CHANNEL, utcnow(), "webhook")

    netmera = RecordingNetmera(box, cancel_after_first)
    out = send_chunks(engine, netmera, cid, CHANNEL, chunks, optimove=lambda: optimove_client(box))
    assert len(before_cancel) == CHUNK
    assert not out.cancelled and out.cancel_scope == "partial"
    withheld = listed - before_cancel
    assert withheld, "some listed customers were still to be sent when the cancel arrived"
    got = Counter(d["extId"] for d in deliveries(box))
    assert set(got) == set(expected["sendable"]) - withheld and max(got.values()) == 1
    rows = {r["customer_id"]: r["status"] for r in ledger(db_url, cid)}
    assert {c for c, s in rows.items() if s == "cancelled"} == withheld


# --------------------------------------------------------------------------------------------------
# a 400 from Netmera on the campaign path


def test_netmera_400_dead_letters_and_fails_the_chunk_without_retry(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Template 2 maps to a notificationKey Netmera does not have (400, code 5003): its chunks are failed and
    dead-lettered after one request each (not unknown, not retried, not back to pending); template 1 is sent."""
    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__TEMPLATES", '{1: "101", 2: "999"}')
    cid = box.admin.optimove.create_campaign(recipients=160, control_fraction=0.0, templates=[1, 2])["campaign_id"]
    expected = expected_recipients(box, cid)
    refused = {c for c, (key, _) in expected["sendable"].items() if key == "999"}
    good = set(expected["sendable"]) - refused
    assert refused and good

    dr = send(cid)
    rows = {r["customer_id"]: r for r in ledger(db_url, cid)}
    assert {c for c, r in rows.items() if r["status"] == "failed"} == refused
    assert {c for c, r in rows.items() if r["status"] == "sent"} == good
    assert all("5003" in rows[c]["reason"] for c in refused)
    assert send_requests(box, "400") == math.ceil(len(refused) / CHUNK)  # one request per chunk: never retried
    got = deliveries(box)
    assert {d["notificationKey"] for d in got} == {"101"} and {d["extId"] for d in got} <= good
    with get_engine(db_url).connect() as conn:
        letters = conn.execute(sa.select(DeadLetter)).all()
    assert len(letters) == len(refused)
    assert "5003" in json.dumps([str(r._mapping) for r in letters])
    # each letter holds the request object that was refused, as Optimove's data calls for it (replayable)
    assert {r.customer_id: r.payload for r in letters} == {
        c: {"notificationKey": "999", "target": {"extId": c}, "message": {"params": expected["sendable"][c][1]}}
        for c in refused
    }
    report = xcom(dr, "report")
    assert report["statuses"].get("unknown", 0) == 0 and report["statuses"].get("pending", 0) == 0
    assert report["statuses"]["failed"] == len(refused)


# --------------------------------------------------------------------------------------------------
# the hook's default Optimove rate limit


def test_optimove_hook_defaults_to_50_calls_per_10_seconds() -> None:
    """A connection without rate-limit extras gets Optimove's documented ceiling; extras override it."""
    from airflow.models.connection import Connection
    from optimove_netmera.hooks import OptimoveHook

    bare = Connection(
        conn_id="onm_rate_default", conn_type="optimove", host="http://127.0.0.1:9", extra='{"api_key": "k"}'
    )
    limiter = OptimoveHook.client_from_connection(bare).limiter
    assert limiter is not None and (limiter.calls, limiter.period) == (50, 10.0)
    custom = Connection(
        conn_id="onm_rate_custom",
        conn_type="optimove",
        host="http://127.0.0.1:9",
        extra=json.dumps({"api_key": "k2", "rate_limit_calls": 7, "rate_limit_period": 3}),
    )
    limiter = OptimoveHook.client_from_connection(custom).limiter
    assert limiter is not None and (limiter.calls, limiter.period) == (7, 3.0)


# --------------------------------------------------------------------------------------------------
# the extId transform and the runtime Variable override on the campaign path


def test_campaign_recipients_get_the_configured_ext_id(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ext_id prefix + suffix + case: Netmera receives ``app-c0000123-x`` for Optimove's ``C0000123``."""
    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__PREFIX", "app-")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__SUFFIX", "-x")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__CASE", "lower")
    cid = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    want = {f"app-{c.lower()}-x" for c in expected["sendable"]}
    box.admin.netmera.add_users(sorted(want))  # Netmera knows the users under the transformed extIds
    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    assert sorted(d["extId"] for d in deliveries(box)) == sorted(want)
    assert {r["ext_id"] for r in ledger(db_url, cid)} == want


def test_runtime_variable_overrides_settings_deep_merged(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Airflow Variable ``optimove_netmera_config`` changes campaigns.chunk_size at run time (50 -> 7) and
    keeps every sibling setting (templates, channels) from the file: one request per 7 recipients."""
    box = env
    monkeypatch.setenv("AIRFLOW_VAR_OPTIMOVE_NETMERA_CONFIG", json.dumps({"campaigns": {"chunk_size": 7}}))
    cid = box.admin.optimove.create_campaign(recipients=30, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    assert send_requests(box) == math.ceil(len(expected["sendable"]) / 7)
    assert {d["extId"] for d in deliveries(box)} == set(expected["sendable"])


# --------------------------------------------------------------------------------------------------
# staging: duplicates across pages, paging errors


def test_duplicates_across_pages_are_staged_once(env: Any, db_url: str) -> None:
    """Staging keeps no set of every key: a duplicate on a later page is dropped by the ledger's key (the first
    row stays); the counts still say how many rows were distinct; a re-stage changes nothing."""
    box = env
    cid = box.admin.optimove.create_campaign(recipients=300, control_fraction=0.1, duplicates=30, templates=[1, 2])[
        "campaign_id"
    ]
    attrs = list(load_settings().campaigns.params)
    served = [
        [((d.customer_id, d.template_id), d.is_control) for d in page]
        for page in optimove_client(box).iter_campaign_recipients(cid, CHANNEL, attrs, page_size=25)
    ]
    first_page: dict[tuple[str, int], int] = {}
    across = 0
    for n, page in enumerate(served):
        for key, _ in page:
            if first_page.setdefault(key, n) != n:
                across += 1
    assert across > 0  # the check is only meaningful if some duplicates are on another page than their first
    control = {key for page in served for key, is_control in page if is_control}

    engine = get_engine(db_url)
    state.record_campaign(engine, cid, CHANNEL, utcnow(), "test")
    s = load_settings()
    counts = recipients.stage_recipients(engine, optimove_client(box), cid, CHANNEL, s, page_size=25)
    assert counts["pages"] == len(served) == math.ceil(330 / 25)
    assert counts["fetched"] == 330 and counts["distinct"] == len(first_page) == 300
    assert counts["duplicates_dropped"] == 30 and counts["control_group"] == len(control) == 30
    rows = ledger(db_url, cid)
    assert sorted((r["customer_id"], r["template_id"]) for r in rows) == sorted(first_page)
    sent_ids = sorted(r["id"] for r in rows if r["status"] == "pending")[:40]
    table = Recipient.__table__
    with engine.begin() as conn:  # as if a first run sent these before the run was cleared
        conn.execute(table.update().where(table.c.id.in_(sent_ids)).values(status="sent", request_id="r1"))
    before = sorted((r["id"], r["status"], r["request_id"]) for r in ledger(db_url, cid))
    again = recipients.stage_recipients(engine, optimove_client(box), cid, CHANNEL, s, page_size=25)
    assert again == counts
    assert sorted((r["id"], r["status"], r["request_id"]) for r in ledger(db_url, cid)) == before


class PagingClient:
    """Stands in for the Optimove client: serves the sandbox's pages, then fails or goes on for ever."""

    def __init__(self, box: Any, fail_after: int | None) -> None:
        self.box = box
        self.fail_after = fail_after
        self.closed = False
        self.served = 0

    def iter_campaign_recipients(self, campaign_id: int, channel_id: int, attributes: Any, **_: Any) -> Any:
        real = list(optimove_client(self.box).iter_campaign_recipients(campaign_id, channel_id, attributes))
        try:
            while True:
                for page in real:
                    if self.fail_after is not None and self.served == self.fail_after:
                        raise RuntimeError("Optimove went away")
                    self.served += 1
                    yield page
        finally:
            self.closed = True


def prefetch_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "stage-prefetch"]


def test_a_paging_failure_is_raised_in_the_stage_task(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1])["campaign_id"]
    engine = get_engine(db_url)
    state.record_campaign(engine, cid, CHANNEL, utcnow(), "test")
    client = PagingClient(box, fail_after=2)
    with pytest.raises(RuntimeError, match="Optimove went away"):
        recipients.stage_recipients(engine, client, cid, CHANNEL, load_settings())  # type: ignore[arg-type]
    assert client.closed and not prefetch_threads()
    assert len(ledger(db_url, cid)) == 60  # the pages served before the failure were staged


def test_a_write_failure_stops_the_paging(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1])["campaign_id"]
    engine = get_engine(db_url)
    state.record_campaign(engine, cid, CHANNEL, utcnow(), "test")
    client = PagingClient(box, fail_after=None)  # never ends on its own
    writes = []

    def failing_insert(*args: Any, **kwargs: Any) -> None:
        writes.append(1)
        if len(writes) == 3:
            raise RuntimeError("database went away")
        real_insert(*args, **kwargs)

    real_insert = recipients._insert_ledger_rows
    monkeypatch.setattr(recipients, "_insert_ledger_rows", failing_insert)
    with pytest.raises(RuntimeError, match="database went away"):
        recipients.stage_recipients(engine, client, cid, CHANNEL, load_settings())  # type: ignore[arg-type]
    assert client.closed and not prefetch_threads()
    assert client.served <= 4  # the failed write was the 3rd page: the 4th was read ahead, no more
