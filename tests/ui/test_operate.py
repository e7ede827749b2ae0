"""Operating the integration from the Airflow UI, in Debian's chromium, against a real ``airflow standalone``.

One standalone for the module (what ``make demo`` runs: LocalExecutor, SQLite; task retries one second apart), its
own sandbox, one logged-in page. The walks of the README's operator run-book, each step saved as a screenshot
(``conftest.screenshots``):

1. a campaign send fails in a Netmera outage (the sandbox answers ``sendNotification`` with 429s past the client's
   retries, in every try of the task); the plugin page shows the recipients still pending; in the grid the
   operator clicks the failed send task, Clear (the report is cleared with it), Confirm; the run goes green, and
   the sandbox's Netmera holds exactly one push for every recipient Optimove lists who can get one: none twice,
   none missing (expected from the sandbox's Optimove and Netmera data, not from the code under test);
2. Admin -> Connections: Test on an Optimove and a Netmera connection pointing at the sandbox says what the key
   reaches; a wrong key says why it failed, without the key;
3. the demo (the user sync, then Optimove's bulk-send event for campaign 1001): the plugin page shows the finished
   sync and the campaign with its chart;
4. the user sync's change guard trips (more customers change than ``max_change_ratio`` allows): the run waits in
   ``approve_changes`` with nothing written; the operator opens Browse -> Required Actions, reads the counts and the
   attribute names, clicks Approve; the run goes green and the changes are in Netmera.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from conftest import log_in
from hitl_answers import answer_until_finished, waiting_question
from live_airflow import CLIENT_ATTEMPTS, REPO, TASK_TRIES, LiveAirflow, wait_for
from optimove_netmera.campaigns import recipients
from optimove_netmera.sandbox.process import start_sandbox
from optimove_netmera.store import SyncRun, dispose_engines, get_engine
from optimove_netmera.sync.load import change_counts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SYNC_DAG, SEND_DAG = "optimove_user_sync", "optimove_campaign_send"
CHANNEL = 506
SEND_ENDPOINT = "/rest/3.0/sendNotification"
STAMP = "%Y-%m-%d %H:%M:%S"
SHOT_NUMBERS = {"optimove_sandbox": 20, "netmera_sandbox": 21, "optimove_wrong_key": 22}
CONFIG = yaml.safe_load((REPO / "config" / "optimove_netmera.yaml").read_text())
TEMPLATE = 4
_MAPPED = CONFIG["campaigns"]["templates"][TEMPLATE]  # "key" or {key, name}
KEY = str(_MAPPED["key"] if isinstance(_MAPPED, dict) else _MAPPED)  # Netmera's notificationKey of template 4


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAirflow]:
    """``airflow standalone`` with the repo's DAGs and plugin, on a sandbox of its own; stopped afterwards."""
    home = tmp_path_factory.mktemp("ui-live")
    box = start_sandbox(log_path=home / "sandbox.log")
    airflow = LiveAirflow(home=home, sandbox=box)
    try:
        started = time.monotonic()
        airflow.start()
        airflow.api_json("POST", "/api/v2/pools", json={"name": "netmera_api", "slots": 4})
        airflow.wait_parsed(SYNC_DAG, SEND_DAG)
        airflow.unpause(SYNC_DAG)
        airflow.unpause(SEND_DAG)
        print(f"\n[ui-live] airflow standalone up in {time.monotonic() - started:.1f} s (log: {airflow.log_path})")
        yield airflow
    finally:
        airflow.stop()
        box.stop()
        dispose_engines()


@pytest.fixture(scope="module")
def page(live: LiveAirflow, browser: Any) -> Iterator[Any]:
    """One page of the UI, logged in as admin, for the module."""
    page = log_in(browser, live.base_url, "admin", live.password)
    yield page
    page.close()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def event_13(campaign_id: int) -> dict[str, Any]:
    """Optimove's bulk-send event, as Netmera's connector guide shows it."""
    return {"eventTypeId": 13, "timeStamp": utcnow().strftime(STAMP), "campaignId": campaign_id, "channelId": CHANNEL}


def expected_pushes(live: LiveAirflow, campaign_id: int) -> set[str]:
    """Who must get exactly one push: read from the sandbox itself, not through the project's clients.

    Optimove's recipient list (raw API), minus the control group, minus customers without a first name (the
    required param ``name``), minus customers Netmera does not know (nobody to push to).
    """
    box = live.sandbox
    response = httpx.get(
        f"{box.optimove_url}/current/customers/GetCustomerExecutionDetailsByCampaign",
        params={"CampaignID": campaign_id, "ChannelID": CHANNEL, "$top": 10000},
        headers={"X-API-KEY": box.optimove_api_key},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    listed = {row["CustomerID"] for row in response.json() if row["ActionID"] != 1}
    out = set()
    for customer in listed:
        first_name = box.admin.optimove.customer(customer)["attributes"].get("FirstName")
        if first_name in (None, "", "NULL"):
            continue
        if (box.admin.netmera.user(customer) or {}).get("known"):
            out.add(customer)
    return out


def pushes(live: LiveAirflow, notification_key: str) -> Counter[str]:
    """Pushes Netmera delivered per extId for ``notification_key``."""
    got = live.sandbox.admin.netmera.deliveries(notification_key=notification_key, limit=100_000)["deliveries"]
    return Counter(d["extId"] for d in got)


def ledger_counts(live: LiveAirflow, campaign_id: int) -> Counter[str]:
    """The campaign's send ledger rows per status."""
    with get_engine(live.state_url).connect() as conn:
        view = recipients.ledger()
        rows = conn.execute(sa.select(view.c.status).where(view.c.campaign_id == campaign_id)).scalars()
        return Counter(rows.all())


def run_header(page: Any, run_id: str) -> Any:
    """The run page's title block (the run id and its state badge)."""
    return page.locator("h2", has_text=run_id).first.locator("xpath=..")


def send_tries(live: LiveAirflow, run_id: str) -> int:
    """The send task's try numbers over its mapped instances, summed (a cleared instance's next try raises it)."""
    return sum(t["try_number"] for t in live.task_instances(SEND_DAG, run_id) if t["task_id"] == "send")


def test_failed_send_is_cleared_in_the_grid(live: LiveAirflow, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    box = live.sandbox
    # Template 4: no other campaign of this module sends it, so its pushes are this campaign's.
    created = box.admin.optimove.create_campaign(recipients=250, control_fraction=0.0, templates=[TEMPLATE])
    cid = created["campaign_id"]
    expected = expected_pushes(live, cid)
    assert len(expected) > 150, "the campaign must span several chunks"
    assert pushes(live, KEY) == Counter()

    # Netmera's outage: the first chunk goes out, then sendNotification answers 429 past the client's retries, in
    # every try of the send task (each try skips the chunk already sent and fails on the next).
    storm = CLIENT_ATTEMPTS * TASK_TRIES
    box.admin.netmera.set_faults([{"endpoint": SEND_ENDPOINT, "after": 1, "storm_429": storm}])
    answer = live.post_event(event_13(cid))
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
    run_id = answer.json()["dag_run_id"]
    run = live.wait_run_finished(SEND_DAG, run_id, 300)
    states = {t["task_id"]: t["state"] for t in live.task_instances(SEND_DAG, run_id)}
    assert run["state"] == "failed" and states["send"] == "failed" and states["report"] == "failed", (
        states,
        live.failure_logs(SEND_DAG, run_id),
    )
    before = pushes(live, KEY)
    assert before and set(before) < expected, "the first chunk went out, the rest did not"
    assert box.admin.netmera.faults()["injected"] == {"429": storm}
    box.admin.netmera.clear_faults()  # the outage is over

    # What the operator sees first: the plugin page counts the recipients still pending (from the ledger).
    page.goto(f"{live.base_url}/plugin/optimove-netmera")
    pending = ledger_counts(live, cid)["pending"]
    assert pending > 0
    expect(page.get_by_test_id(f"campaign-{cid}-{CHANNEL}-pending")).to_have_text(str(pending))
    expect(page.get_by_test_id(f"campaign-{cid}-{CHANNEL}-state")).to_have_text("sending")
    page.screenshot(path=screenshots / "10-page-pending.png", full_page=True)

    # The operator: the run's grid, the failed send task, Clear (downstream: the report too), Confirm.
    page.goto(f"{live.base_url}/dags/{SEND_DAG}/runs/{run_id}")
    expect(run_header(page, run_id)).to_contain_text("Failed")
    page.screenshot(path=screenshots / "11-send-failed.png")
    page.get_by_test_id(f"grid-{run_id}-send").click()
    expect(page).to_have_url(re.compile(r".*/tasks/send/mapped$"))
    failed = page.get_by_role("row").filter(has_text="Failed")
    expect(failed).to_have_count(1)
    failed.get_by_role("button", name="Clear Task Instance").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("row").filter(has_text="report")).to_have_count(1)  # downstream is cleared too
    expect(dialog.get_by_role("row").filter(has_text="trigger_resend")).to_have_count(1)
    expect(dialog.get_by_role("row").filter(has_text="send")).to_have_count(2)  # send itself, and trigger_resend
    page.screenshot(path=screenshots / "12-clear-dialog.png")
    tries = send_tries(live, run_id)
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog).to_have_count(0)
    # The run reads failed until the clear reaches the scheduler: wait for the send task's next try first.
    wait_for("the cleared send task's next try", lambda: send_tries(live, run_id) > tries, 120)

    run = live.wait_run_finished(SEND_DAG, run_id, 300)
    assert run["state"] == "success", live.failure_logs(SEND_DAG, run_id)
    page.goto(f"{live.base_url}/dags/{SEND_DAG}/runs/{run_id}")
    expect(run_header(page, run_id)).to_contain_text("Success")
    page.screenshot(path=screenshots / "13-send-cleared.png")

    # Netmera: every recipient who can get the push got it exactly once.
    got = pushes(live, KEY)
    assert {c for c, n in got.items() if n > 1} == set(), "a recipient got the campaign twice"
    assert expected - set(got) == set(), "a recipient is missing"
    assert set(got) - expected == set(), "someone outside the campaign got it"
    with get_engine(live.state_url).connect() as conn:
        view = recipients.ledger()
        ledger = Counter(conn.execute(sa.select(view.c.status).where(view.c.campaign_id == cid)).scalars().all())
    assert set(ledger) <= {"sent", "skipped"} and ledger["sent"] >= len(expected), ledger


@pytest.mark.parametrize(
    ("conn_id", "kind", "changes"),
    [
        ("optimove_sandbox", "optimove", {}),
        ("netmera_sandbox", "netmera", {}),
        ("optimove_wrong_key", "optimove", {"extra": {"api_key": "not-the-optimove-key"}}),
    ],
)
def test_connection_test_button(
    live: LiveAirflow, page: Any, screenshots: Path, conn_id: str, kind: str, changes: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    conn = live.connection(kind, **changes)
    body = {"connection_id": conn_id, "conn_type": conn["conn_type"], "host": conn["host"]}
    if "password" in conn:
        body["password"] = conn["password"]
    if conn.get("extra"):
        body["extra"] = json.dumps(conn["extra"])
    live.api("DELETE", f"/api/v2/connections/{conn_id}")
    live.api_json("POST", "/api/v2/connections", json=body)  # as the Add Connection form stores it: no port

    page.goto(live.base_url + "/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    row = page.get_by_role("row").filter(has_text=conn_id)
    expect(row).to_contain_text(kind)
    row.get_by_role("button", name="Test Connection").click()
    toast = page.locator("[data-scope=toast][data-part=root]").last
    expect(toast).to_be_visible()
    if conn_id == "optimove_wrong_key":
        expect(toast).to_contain_text("Test Connection Failed")
        expect(toast).to_contain_text("HTTP 401")
        assert "not-the-optimove-key" not in toast.inner_text()
    elif kind == "optimove":
        expect(toast).to_contain_text("Test Connection Successful")
        expect(toast).to_contain_text(f"mapped attributes: all {len(CONFIG['attributes'])} present")
        for channel in CONFIG["campaigns"]["channels"]:
            expect(toast).to_contain_text(re.compile(rf"channel {channel} \([^)]+\)+: \d+ template\(s\)"))
    else:
        expect(toast).to_contain_text("Test Connection Successful")
        expect(toast).to_contain_text("the REST API key was accepted")
    page.screenshot(path=screenshots / f"{SHOT_NUMBERS[conn_id]}-test-{conn_id}.png")


def test_page_after_the_demo(live: LiveAirflow, page: Any, screenshots: Path, figures: list[str]) -> None:
    """What ``make demo`` does (a user sync, then the bulk-send curl it prints), then the plugin page."""
    from playwright.sync_api import expect

    box = live.sandbox
    run_id = f"demo__{utcnow():%Y%m%dT%H%M%S%f}"
    started = time.monotonic()
    live.trigger(SYNC_DAG, run_id)
    run = live.wait_run_finished(SYNC_DAG, run_id, 600)
    assert run["state"] == "success", live.failure_logs(SYNC_DAG, run_id)
    sync_s = time.monotonic() - started
    answer = live.post_event(event_13(1001))
    assert answer.status_code == 200 and answer.json()["status"] in ("accepted", "duplicate"), answer.text
    campaign_run = answer.json().get("dag_run_id") or wait_for(
        "campaign 1001's run",
        lambda: next(
            (
                r["dag_run_id"]
                for r in live.api_json("GET", f"/api/v2/dags/{SEND_DAG}/dagRuns?limit=100")["dag_runs"]
                if r["dag_run_id"].startswith(f"optimove_c1001_ch{CHANNEL}_")
            ),
            None,
        ),
        120,
    )
    run = live.wait_run_finished(SEND_DAG, campaign_run, 300)
    assert run["state"] == "success", live.failure_logs(SEND_DAG, campaign_run)
    figures.append(f"ui demo: user sync {sync_s:.1f} s, then campaign 1001 (standalone, 2 cores shared)")

    with get_engine(live.state_url).connect() as conn:
        sync_id = conn.execute(sa.select(SyncRun.id).where(SyncRun.dag_run_id == run_id)).scalar_one()
        earlier = conn.execute(
            sa.select(sa.func.count()).where(SyncRun.status == "success", SyncRun.id < sync_id)
        ).scalar_one()
        delivered = change_counts(conn, sync_id).get("delivered", 0)
    profiles = box.admin.netmera.profiles(limit=1)["total"]
    assert profiles > 0
    if not earlier:  # the first sync (in this module's random order) delivered everyone Netmera now holds
        assert delivered == profiles

    page.goto(live.base_url + "/")
    page.get_by_role("link", name="Optimove Netmera").first.click()
    expect(page.get_by_test_id("optimove-netmera-page")).to_be_visible()
    expect(page.get_by_test_id(f"sync-{sync_id}-sent")).to_have_text(str(delivered))  # the state database's count
    expect(page.get_by_test_id(f"campaign-1001-{CHANNEL}-sent")).to_be_visible()
    expect(page.get_by_test_id(f"campaign-1001-{CHANNEL}-state")).to_have_text("done")
    expect(page.get_by_test_id("sync-chart").locator("canvas")).to_be_visible()
    expect(page.get_by_test_id("sends-chart").locator("canvas")).to_be_visible()
    page.screenshot(path=screenshots / "30-page-after-demo.png", full_page=True)


def sync_writes(live: LiveAirflow) -> int:
    """Profile write requests Netmera answered 200 (set + unset), from the sandbox's own counters."""
    counts = live.sandbox.admin.netmera.requests()["counts"]
    return sum(counts.get(f"POST /rest/3.0/{name}", {}).get("200", 0) for name in PROFILE_WRITES)


PROFILE_WRITES = ("setProfileAttributes", "unsetProfileAttributes")


def test_change_guard_is_approved_in_required_actions(live: LiveAirflow, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    box = live.sandbox
    with get_engine(live.state_url).connect() as conn:
        synced = conn.execute(sa.select(sa.func.count()).where(SyncRun.status == "success")).scalar_one()
    if not synced:  # the guard compares against what was delivered: deliver everyone first
        first = f"first__{utcnow():%Y%m%dT%H%M%S%f}"
        live.trigger(SYNC_DAG, first)
        assert live.wait_run_finished(SYNC_DAG, first, 600)["state"] == "success", live.failure_logs(SYNC_DAG, first)
    box.admin.optimove.change_customers(600)  # of the sandbox's 1000: over the default max_change_ratio of 0.5
    before = sync_writes(live)
    run_id = f"guard__{utcnow():%Y%m%dT%H%M%S%f}"
    live.trigger(SYNC_DAG, run_id)

    question = wait_for(
        "approve_changes to ask", lambda: waiting_question(live, SYNC_DAG, run_id, "approve_changes"), 600
    )
    assert sync_writes(live) == before, "nothing may be written while the guard waits"

    # The operator: Browse -> Required Actions, the question with its counts and attribute names, Approve.
    page.goto(live.base_url + "/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    row = page.get_by_role("row").filter(has_text=question["subject"])
    expect(row).to_have_count(1)
    page.screenshot(path=screenshots / "40-required-actions.png", full_page=True)
    row.get_by_role("link").first.click()
    expect(page.get_by_text("would change, more than max_change_ratio").first).to_be_visible()
    expect(page.get_by_text("name", exact=True).first).to_be_visible()  # the attribute names are listed
    page.screenshot(path=screenshots / "41-approve-changes.png", full_page=True)
    page.get_by_role("button", name="Approve").click()

    # Airflow 3.3.2 may ask again after an answer given this fast (tests/hitl_answers.py): answer it again
    run, again = answer_until_finished(
        live, SYNC_DAG, run_id, "approve_changes", "Approve", answered_tries={question["task_instance"]["try_number"]}
    )
    assert run["state"] == "success", live.failure_logs(SYNC_DAG, run_id)
    if again:
        print(f"approve_changes asked again {again} time(s) after the click (Airflow 3.3.2's late-exit retry)")
    assert sync_writes(live) > before
    with get_engine(live.state_url).connect() as conn:
        counts = conn.execute(sa.select(SyncRun.counts).where(SyncRun.dag_run_id == run_id)).scalar_one()
    assert counts["guard_decision"]["choice"] == "Approve" and counts["guard_decision"]["by"] == "admin"
    assert counts["plan"]["guard"]["tripped"] is True
    page.goto(f"{live.base_url}/dags/{SYNC_DAG}/runs/{run_id}")
    expect(run_header(page, run_id)).to_contain_text("Success")
    page.screenshot(path=screenshots / "42-approved-run.png")
