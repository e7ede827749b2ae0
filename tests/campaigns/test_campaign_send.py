"""Real runs of ``optimove_campaign_send`` (``dag.test()``) against the sandbox over HTTP, on SQLite and PostgreSQL.

Covers: end to end (control group, duplicates, missing data, unmapped templates), exactly once across whole-run
clears, second runs, crashes (rows left in flight), ambiguous failures and retries, cancellation in the middle of
a send, a cancel that arrives before the bulk event, partial cancellation, the scheduled-time wait, and the event
endpoint firing a run (a duplicate event makes one run).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from api_server import Responder, TimeoutSweeper
from optimove_netmera.campaigns import state
from optimove_netmera.campaigns.decision import ACCEPT, RESEND
from optimove_netmera.campaigns.recipients import ORPHAN_REASON, claim_chunk
from optimove_netmera.campaigns.send import UNKNOWN_EXT_ID_REASON
from optimove_netmera.store import Campaign, DeadLetter, Recipient, get_engine
from sends_helpers import (
    CHANNEL,
    configure,
    deliveries,
    expected_recipients,
    ledger,
    optimove_client,
    run_dag,
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


def stored_report(db_url: str, campaign_id: int) -> dict[str, Any]:
    """The campaign's report as the report task stored it (also when the task failed)."""
    with get_engine(db_url).connect() as conn:
        counts = conn.scalar(sa.select(Campaign.counts).where(Campaign.campaign_id == campaign_id))
    return counts["report"]


def campaign_counts(db_url: str, campaign_id: int) -> dict[str, Any]:
    with get_engine(db_url).connect() as conn:
        return conn.scalar(sa.select(Campaign.counts).where(Campaign.campaign_id == campaign_id))


def per_ext_id(box: Any) -> Counter[str]:
    return Counter(d["extId"] for d in deliveries(box))


def assert_exactly_once(box: Any, expected: dict[str, Any], allowed_missing: set[str] = frozenset()) -> None:
    """Each sendable recipient got exactly one notification with its params; nobody else got one."""
    got = per_ext_id(box)
    dupes = {k: n for k, n in got.items() if n > 1}
    assert not dupes, f"{len(dupes)} recipients got more than one notification"
    sendable = expected["sendable"]
    extra = set(got) - set(sendable)
    assert not extra, f"{len(extra)} notifications to recipients that must not get one"
    missing = set(sendable) - set(got) - set(allowed_missing)
    assert not missing, f"{len(missing)} sendable recipients got nothing"
    for d in deliveries(box):
        key, params = sendable[d["extId"]]
        assert d["notificationKey"] == key
        assert d["params"] == params


def test_end_to_end_every_recipient_exactly_once_with_params(env: Any, db_url: str) -> None:
    box = env
    created = box.admin.optimove.create_campaign(
        recipients=400, control_fraction=0.1, duplicates=12, missing_data_fraction=0.05, templates=[1, 2, 9]
    )
    cid = created["campaign_id"]
    expected = expected_recipients(box, cid)
    assert expected["control"] and expected["missing"] and expected["unmapped"]

    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    assert_exactly_once(box, expected)

    rows = ledger(db_url, cid)
    by_customer = {r["customer_id"]: r for r in rows}
    assert len(rows) == len(by_customer) == 400  # duplicates dropped
    for customer in expected["control"]:
        assert by_customer[customer]["status"] == "skipped"
        assert by_customer[customer]["reason"] == "control group (ActionID 1)"
    for customer in expected["missing"]:
        assert by_customer[customer]["status"] == "skipped"
        assert by_customer[customer]["reason"] == "missing required param(s): name"
    for customer in expected["unmapped"]:
        assert by_customer[customer]["reason"] == "no notificationKey mapped for template 9"
    for customer in expected["sendable"]:
        assert by_customer[customer]["status"] == "sent"

    # one request per chunk of <= 50 recipients of one template
    per_key = Counter(key for key, _ in expected["sendable"].values())
    assert send_requests(box) == sum(math.ceil(n / CHUNK) for n in per_key.values())

    report = xcom(dr, "report")
    assert report["outcome"] == "done"
    assert report["statuses"]["sent"] == len(expected["sendable"])
    assert set(report["templates"]) == {"1", "2", "9"}
    shown = str(report) + str(xcom(dr, "stage_recipients")) + str(xcom(dr, "plan"))
    assert not any(customer in shown for customer in expected["sendable"])  # counts only, no customer data
    staged = xcom(dr, "stage_recipients")
    assert staged["duplicates_dropped"] == 12 and staged["fetched"] == 412
    with get_engine(db_url).connect() as conn:
        assert conn.scalar(sa.select(Campaign.state).where(Campaign.campaign_id == cid)) == "done"


def test_whole_run_clear_and_second_run_send_nothing_again(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=200, control_fraction=0.1, templates=[1, 2])["campaign_id"]
    expected = expected_recipients(box, cid)
    when = utcnow()
    first = send(cid, logical_date=when)
    assert first.state == "success", task_states(first)
    requests = send_requests(box)

    again = send(cid, logical_date=when)  # same logical date: the same run, every task cleared
    assert again.run_id == first.run_id
    assert again.state == "success", task_states(again)
    other = send(cid)  # a second run for the same campaign (a duplicate event with another timestamp)
    assert other.state == "success", task_states(other)

    assert send_requests(box) == requests
    assert_exactly_once(box, expected)
    assert xcom(other, "report")["statuses"]["sent"] == len(expected["sendable"])


def test_unknown_ext_id_chunk_is_skipped_not_retried(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=40, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    box.admin.netmera.remove_users(sorted(expected["sendable"]))  # nobody in the campaign is a Netmera user
    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    rows = ledger(db_url, cid)
    assert statuses(rows) == Counter({"skipped": 40})
    assert {r["reason"] for r in rows} == {UNKNOWN_EXT_ID_REASON}
    assert send_requests(box, "400") == 1 and send_requests(box) == 0


def triggered_runs(campaign_run_id: str) -> list[Any]:
    """Runs of the send DAG that ``trigger_resend`` started for ``campaign_run_id`` (queued: no scheduler here)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id == f"{campaign_run_id}_resend")
        return [(r.run_id, dict(r.conf or {})) for r in runs]


@pytest.mark.parametrize("claimed", ["chunk", "rows"])
def test_crash_leaves_rows_in_flight_they_become_unknown_and_resend_on_request(
    env: Any, db_url: str, hitl_api: Any, claimed: str
) -> None:
    """``chunk``: the worker claimed chunk 2 as every worker does since migration 0005 (the chunk's row in flight);
    ``rows``: its rows were claimed one by one, as before 0005 (a ledger written by an older release)."""
    box = env
    cid = box.admin.optimove.create_campaign(recipients=300, control_fraction=0.1, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    # stage and plan, but "crash" before sending: the send tasks are marked success without running
    when = utcnow()
    staged = send(cid, logical_date=when, mark_success_pattern="send")
    assert send_requests(box) == 0
    engine = get_engine(db_url)
    table = Recipient.__table__
    chunk_2 = (table.c.campaign_id == cid, table.c.chunk_no == 2, table.c.status == "pending")
    with engine.begin() as conn:  # a worker claimed chunk 2 and died before its request
        crashed = set(conn.execute(sa.select(table.c.customer_id).where(*chunk_2)).scalars())
        if claimed == "rows":
            conn.execute(
                sa.update(table).where(*chunk_2).values(status="in_flight", request_id="dead-worker", attempts=1)
            )
    if claimed == "chunk":
        assert len(claim_chunk(engine, cid, CHANNEL, 2, "dead-worker", utcnow())) == len(crashed)
    assert crashed

    seen: dict[str, Any] = {}

    def while_asking(detail: dict[str, Any]) -> None:  # the run waits for a person: the ledger is settled
        rows = {r["customer_id"]: r for r in ledger(db_url, cid)}
        seen["unknown"] = {c for c, r in rows.items() if r["status"] == "unknown"}
        seen["reasons"] = {rows[c]["reason"] for c in seen["unknown"]}
        seen["report"] = stored_report(db_url, cid)

    # ops clear the whole run (the same run, every task cleared); the report asks, the operator re-sends
    responder = Responder(hitl_api, DAG_ID, "decide_unknown", RESEND, while_asking)
    responder.start()
    cleared = send(cid, logical_date=when)
    detail = responder.join_and_check()
    assert cleared.run_id == staged.run_id
    assert seen["unknown"] == crashed and seen["reasons"] == {ORPHAN_REASON}
    assert seen["report"]["unknown"] == len(crashed) and seen["report"]["outcome"] == "unknown outcome"
    assert f"{len(crashed)} recipient(s) have an UNKNOWN outcome" in detail["body"]
    assert detail["defaults"] is None  # no answer: nothing is re-sent (the task fails)
    assert_exactly_once(box, expected, allowed_missing=crashed)  # nobody missing except the unknowns
    assert cleared.state == "success" and task_states(cleared)["trigger_resend[-1]"] == "success"
    assert campaign_counts(db_url, cid)["unknown_decision"]["by"] == "admin"
    # the re-send run trigger_resend queued (the scheduler would run it; here dag.test runs its conf)
    [(_, conf)] = triggered_runs(cleared.run_id)
    assert conf == {
        "campaign_id": cid,
        "channel_id": CHANNEL,
        "resend_unknown": True,
        "dry_run": False,
        "source": "manual",
    }
    resent = run_dag(DAG_ID, conf)
    assert resent.state == "success", task_states(resent)
    assert_exactly_once(box, expected)
    assert statuses(ledger(db_url, cid))["unknown"] == 0
    assert task_states(resent)["decide_unknown[-1]"] == "success"  # nothing unknown: it did not ask
    assert task_states(resent)["trigger_resend[-1]"] == "skipped"


def test_ambiguous_failure_marks_unknown_task_fails_clear_resumes(
    env: Any, db_url: str, hitl_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env
    # one request at a time, so the chunks behind the failed one are certainly still pending (with several in
    # flight some may already be out; test_send_in_flight.py covers a failure among requests in flight)
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT", "1")
    cid = box.admin.optimove.create_campaign(recipients=300, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    # the 3rd sendNotification gets a 503 (ambiguous for a non-idempotent send: the push may have gone out)
    box.admin.netmera.set_faults(
        [{"endpoint": "/rest/3.0/sendNotification", "error_rate": 1.0, "error_status": 503, "count": 1, "after": 2}]
    )
    when = utcnow()
    first = send(cid, logical_date=when)
    assert first.state == "failed", task_states(first)
    rows = ledger(db_url, cid)
    unknown = {r["customer_id"] for r in rows if r["status"] == "unknown"}
    assert len(unknown) == CHUNK
    assert statuses(rows)["pending"] > 0
    box.admin.netmera.clear_faults()

    # the outage is over, the run cleared: the rest goes out, then the operator accepts the unknown outcomes
    seen: dict[str, Any] = {}
    responder = Responder(
        hitl_api, DAG_ID, "decide_unknown", ACCEPT, lambda _: seen.update(report=stored_report(db_url, cid))
    )
    responder.start()
    cleared = send(cid, logical_date=when)
    responder.join_and_check()
    assert cleared.run_id == first.run_id
    assert seen["report"]["outcome"] == "unknown outcome"
    assert_exactly_once(box, expected, allowed_missing=unknown)
    assert statuses(ledger(db_url, cid))["unknown"] == len(unknown)
    assert cleared.state == "success", task_states(cleared)  # a person accepted: nobody is re-sent
    assert task_states(cleared)["trigger_resend[-1]"] == "skipped" and not triggered_runs(cleared.run_id)
    decision = campaign_counts(db_url, cid)["unknown_decision"]
    assert (decision["choice"], decision["unknown"], decision["by"]) == (ACCEPT, len(unknown), "admin")

    resent = send(cid, conf={"resend_unknown": True})  # the operator changes their mind: re-send them
    assert resent.state == "success", task_states(resent)
    assert_exactly_once(box, expected)


def test_no_answer_on_unknown_outcomes_resends_nobody_and_fails_the_run(
    env: Any, db_url: str, hitl_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT", "1")  # the chunks after the 503 stay pending
    cid = box.admin.optimove.create_campaign(recipients=200, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    box.admin.netmera.set_faults(
        [{"endpoint": "/rest/3.0/sendNotification", "error_rate": 1.0, "error_status": 503, "count": 1, "after": 1}]
    )
    when = utcnow()
    assert send(cid, logical_date=when).state == "failed"  # a send task failed over the 503: nothing to ask yet
    box.admin.netmera.clear_faults()
    unknown = {r["customer_id"] for r in ledger(db_url, cid) if r["status"] == "unknown"}
    assert len(unknown) == CHUNK
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__UNKNOWN_TIMEOUT_HOURS", "0.0003")  # about a second
    sweeper = TimeoutSweeper()
    sweeper.start()
    try:
        cleared = send(cid, logical_date=when)
    finally:
        sweeper.finish()
    states = task_states(cleared)
    assert cleared.state == "failed" and states["decide_unknown[-1]"] == "failed", states
    assert states["trigger_resend[-1]"] == "upstream_failed" and not triggered_runs(cleared.run_id)
    assert_exactly_once(box, expected, allowed_missing=unknown)  # the rest went out; the unknowns were not re-sent
    assert statuses(ledger(db_url, cid))["unknown"] == len(unknown)
    assert "unknown_decision" not in campaign_counts(db_url, cid)


def _start_canceller(box: Any, engine: Any, cid: int, stored: dict[str, Any]) -> threading.Thread:
    """Cancel the campaign (as event 4 does) once Netmera has recorded the first request."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not box.admin.netmera.deliveries(status="all", limit=1)["total"]:
            time.sleep(0.02)
        stored["n"] = state.mark_cancelled(engine, cid, None, utcnow(), "webhook")
        stored["at"] = utcnow()  # the cancel is committed by now

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_cancel_in_the_middle_of_a_send(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # One request at a time: the assertion below compares request starts with the cancel's commit, exact only
    # while one thread sends (test_send_in_flight.py covers a cancel among requests in flight, with barriers).
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT", "1")
    box = env
    cid = box.admin.optimove.create_campaign(recipients=600, control_fraction=0.0, templates=[1])["campaign_id"]
    latency = 0.25
    box.admin.netmera.set_faults([{"endpoint": "/rest/3.0/sendNotification", "latency_ms": latency * 1000}])
    stored: dict[str, Any] = {}
    engine = get_engine(db_url)
    canceller = _start_canceller(box, engine, cid, stored)
    dr = send(cid)
    canceller.join(timeout=60)
    assert dr.state == "success", task_states(dr)  # a cancelled send is not a failure

    rows = ledger(db_url, cid)
    counts = statuses(rows)
    assert counts["sent"] >= CHUNK and counts["cancelled"] > 0
    assert counts["sent"] + counts["cancelled"] == 600 and not counts["pending"]
    cancelled_at = stored["at"]
    starts = [r["sent_at"] for r in rows if r["status"] == "sent"]
    assert max(starts) < cancelled_at, "a Netmera request started after the cancel was stored"
    # Netmera's side, exactly: it received one request per sent chunk and a delivery per sent recipient, nothing
    # more. (Comparing its receive times with the cancel cannot be exact: a request that left just before the cancel
    # arrives after it by the injected latency plus transit and handling time.)
    assert send_requests(box) == counts["sent"] // CHUNK
    assert len(deliveries(box)) == counts["sent"]
    report = xcom(dr, "report")
    assert report["outcome"] == "cancelled"
    outcomes = [xcom(dr, "send", i) for i in range(len([k for k in task_states(dr) if k.startswith("send[")]))]
    assert any(o and o["cancelled"] for o in outcomes)


def test_cancel_before_the_bulk_event_wins(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=100, control_fraction=0.1, templates=[1])["campaign_id"]
    state.mark_cancelled(get_engine(db_url), cid, None, utcnow(), "webhook")  # event 4 first
    state.record_campaign(get_engine(db_url), cid, CHANNEL, utcnow(), "optimove_c_test")  # then event 13
    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    assert send_requests(box) == 0 and not deliveries(box)
    assert xcom(dr, "report")["outcome"] == "cancelled"
    assert xcom(dr, "open_campaign")["cancelled"] is True


def test_partial_cancel_narrowed_with_get_canceled_campaign_customers(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=200, control_fraction=0.1, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    box.admin.optimove.cancel_campaign(cid, customers=30)  # Optimove cancelled 30 customers
    state.mark_cancelled(get_engine(db_url), cid, CHANNEL, utcnow(), "webhook")
    listed = {c.customer_id for c in _canceled(box, cid)}
    assert len(listed) == 30

    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    rows = {r["customer_id"]: r for r in ledger(db_url, cid)}
    assert {c for c, r in rows.items() if r["status"] == "cancelled"} == listed & set(expected["sendable"])
    remaining = {c: v for c, v in expected["sendable"].items() if c not in listed}
    assert_exactly_once(box, {**expected, "sendable": remaining})
    assert xcom(dr, "report")["outcome"] == "done (partially cancelled)"


def test_full_cancel_listed_by_optimove_mid_send(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT", "1")  # as in the test above
    box = env
    cid = box.admin.optimove.create_campaign(recipients=400, control_fraction=0.1, templates=[1])["campaign_id"]
    box.admin.netmera.set_faults([{"endpoint": "/rest/3.0/sendNotification", "latency_ms": 200}])
    box.admin.optimove.cancel_campaign(cid)  # Optimove lists every recipient: a whole-campaign cancel
    stored: dict[str, Any] = {}
    canceller = _start_canceller(box, get_engine(db_url), cid, stored)
    dr = send(cid)
    canceller.join(timeout=60)
    assert dr.state == "success", task_states(dr)
    rows = ledger(db_url, cid)
    assert max(r["sent_at"] for r in rows if r["status"] == "sent") < stored["at"]
    assert statuses(rows)["pending"] == 0 and statuses(rows)["cancelled"] > 0
    assert xcom(dr, "report")["outcome"] == "cancelled"


def _canceled(box: Any, cid: int) -> list[Any]:
    return optimove_client(box).get_canceled_campaign_customers(cid)


def test_waits_for_the_scheduled_time(env: Any, db_url: str) -> None:
    box = env
    when = utcnow().replace(microsecond=0) + dt.timedelta(seconds=4)
    cid = box.admin.optimove.create_campaign(
        recipients=60, control_fraction=0.0, templates=[1], scheduled_time=when.strftime("%Y-%m-%d %H:%M:%S")
    )["campaign_id"]
    dr = send(cid)
    assert dr.state == "success", task_states(dr)
    rows = [r for r in ledger(db_url, cid) if r["status"] == "sent"]
    assert rows and min(r["sent_at"] for r in rows) >= when


def test_webhook_fired_by_the_sandbox_starts_one_run(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox posts event 13 to the real endpoint twice: one event, one run with the contract's run_id."""
    import uvicorn
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from optimove_netmera.campaigns.api import create_app
    from optimove_netmera.store import Event
    from sends_helpers import REPO

    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA_INBOUND_API_KEY", "inbound-test-key")
    _sync_dags(REPO / "dags")
    cid = box.admin.optimove.create_campaign(recipients=120, control_fraction=0.1, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)

    from optimove_netmera.sandbox.process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/event/optimove-netmera"
        headers = {"X-netmera-api-key": "inbound-test-key"}
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S")  # Optimove repeats an event with its original timestamp
        for _ in range(2):
            fired = box.admin.optimove.fire_webhook(13, cid, CHANNEL, url=url, headers=headers, time_stamp=stamp)
            assert [d["status"] for d in fired["deliveries"]] == [200], fired
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    with get_engine(db_url).connect() as conn:
        stored = conn.execute(sa.select(Event).where(Event.campaign_id == cid)).all()
    assert len(stored) == 1 and stored[0].status == "dispatched"
    run_id = stored[0].dag_run_id
    assert run_id.startswith(f"optimove_c{cid}_ch{CHANNEL}_")
    with create_session() as session:
        runs = session.scalars(sa.select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id)).all()
        assert len(runs) == 1
        conf = dict(runs[0].conf)
    assert conf["campaign_id"] == cid and conf["source"] == "webhook"

    dr = run_dag(DAG_ID, conf)  # run the triggered run's work (dag.test makes its own run id)
    assert dr.state == "success", task_states(dr)
    assert_exactly_once(box, expected)


def _sync_dags(folder: Any) -> None:
    """Write the dags folder's DAGs to the metadata DB (what the DAG processor does), so runs can be created."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


def test_two_workers_sending_the_same_chunks_never_double_send(env: Any, db_url: str) -> None:
    """Two senders (a zombie and its retry, or two runs) race over the same chunks: each recipient once."""
    from optimove_netmera.campaigns.send import send_chunks
    from optimove_netmera.netmera import NetmeraClient

    box = env
    cid = box.admin.optimove.create_campaign(recipients=500, control_fraction=0.0, templates=[1, 2])["campaign_id"]
    expected = expected_recipients(box, cid)
    send(cid, mark_success_pattern="send")  # staged and chunked, nothing sent
    engine = get_engine(db_url)
    chunks = sorted({r["chunk_no"] for r in ledger(db_url, cid) if r["chunk_no"] is not None})
    outcomes: list[Any] = []

    def worker(order: list[int]) -> None:
        client = NetmeraClient(box.netmera_url, box.netmera_api_key)
        outcomes.append(send_chunks(engine, client, cid, CHANNEL, order))

    threads = [threading.Thread(target=worker, args=(o,)) for o in (chunks, list(reversed(chunks)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(o.sent for o in outcomes) == len(expected["sendable"])
    assert sum(o.requests for o in outcomes) == len(chunks)
    assert_exactly_once(box, expected)


def test_mark_cancelled_and_record_campaign_contract(env: Any, db_url: str) -> None:
    engine = get_engine(db_url)
    at = utcnow()
    # a cancel without a channel before anything is known: every configured channel is cancelled
    assert state.mark_cancelled(engine, 42, None, at, "webhook") == 0
    status = state.cancel_status(engine, 42, CHANNEL)
    assert status.cancelled and status.needs_narrowing and status.cancelled_at == at
    state.record_campaign(engine, 42, CHANNEL, at, "optimove_c42_ch506_x")  # the bulk event after the cancel
    assert state.cancel_status(engine, 42, CHANNEL).state == "cancelled"  # the cancel wins
    with engine.connect() as conn:
        run_id = sa.select(Campaign.dag_run_id).where(Campaign.campaign_id == 42, Campaign.channel_id == CHANNEL)
        assert conn.scalar(run_id) == "optimove_c42_ch506_x"

    # a finished campaign keeps its state; pending recipients of a running one are cancelled and counted
    state.record_campaign(engine, 43, CHANNEL, at, None)
    state.set_state(engine, 43, CHANNEL, "done")
    assert state.mark_cancelled(engine, 43, CHANNEL, at, "webhook") == 0
    assert state.cancel_status(engine, 43, CHANNEL).state == "done"
    state.record_campaign(engine, 44, CHANNEL, at, None)
    table = Recipient.__table__
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"campaign_id": 44, "channel_id": CHANNEL, "customer_id": f"X{i}", "template_id": 1, "status": s}
                for i, s in enumerate(["pending", "pending", "sent", "in_flight", "skipped"])
            ],
        )
    assert state.mark_cancelled(engine, 44, CHANNEL, at, "webhook") == 2
    assert state.mark_cancelled(engine, 44, CHANNEL, at, "webhook") == 0  # a repeat is harmless
    assert Counter(r["status"] for r in ledger(db_url, 44)) == Counter(
        {"cancelled": 2, "sent": 1, "in_flight": 1, "skipped": 1}
    )
    # Optimove lists one of the two sendable-but-unsent customers: partial, the other goes back to pending
    assert state.apply_cancel_list(engine, 44, CHANNEL, ["X0"], fetched_at=utcnow()) == "partial"
    rows = {r["customer_id"]: r["status"] for r in ledger(db_url, 44)}
    assert rows["X0"] == "cancelled" and rows["X1"] == "pending"
    assert state.cancel_status(engine, 44, CHANNEL).partial


def test_update_metrics_reports_sent_counts_back_to_optimove(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=120, control_fraction=0.1, templates=[1, 2])["campaign_id"]
    expected = expected_recipients(box, cid)
    dr = send(cid, conf={"update_metrics": True})
    assert dr.state == "success", task_states(dr)
    rows = [r for r in box.admin.optimove.metrics() if r["CampaignID"] == cid]
    per_template = Counter(key for key, _ in expected["sendable"].values())
    assert {(r["TemplateID"], r["MetricID"], r["MetricValue"]) for r in rows} == {
        (t, 0, per_template[str(100 + t)]) for t in (1, 2)
    }
    assert xcom(dr, "report")["metrics_rows"] == 2


def test_bad_netmera_key_fails_the_send_without_losing_anyone(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=120, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_recipients(box, cid)
    bad = {"conn_type": "netmera", "host": box.netmera_url, "password": "not-the-key"}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(bad))
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "2")  # retries an outage would get ...
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRY_DELAY_SECONDS", "0")
    when = utcnow()
    first = send(cid, logical_date=when)
    assert first.state == "failed", task_states(first)
    tried = {ti.task_id: ti.try_number for ti in first.get_task_instances()}
    assert tried["send"] == 1, "a wrong key is a configuration fault: it fails at once, without retries"
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "0")
    rows = ledger(db_url, cid)
    assert statuses(rows)["failed"] == 0 and statuses(rows)["pending"] > 0  # a 403 discards nobody
    with get_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar_one() == 0
    assert send_requests(box) == 0
    good = {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(good))
    cleared = send(cid, logical_date=when)  # the key fixed, the run cleared: everyone gets exactly one push
    assert cleared.state == "success", task_states(cleared)
    assert_exactly_once(box, expected)
