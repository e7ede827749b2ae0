"""The plugin page against a real ``airflow api-server`` with the repo's plugin: its JSON routes over HTTP, and the
page itself in Debian's chromium driven by Playwright (log in, open the page from the nav, compare its numbers with
the state database, re-dispatch an event, replay a dead letter).

Screenshots of each browser step go to the folder of ``conftest.screenshots`` (``$OPTIMOVE_NETMERA_SCREENSHOTS``,
default ``${TMPDIR:-/tmp}/optimove-netmera-screenshots``); the run's summary prints the folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import sqlalchemy as sa
from conftest import log_in
from optimove_netmera.campaigns.recipients import ledger
from optimove_netmera.sandbox.process import free_port, stop_process
from optimove_netmera.store import (
    Campaign,
    DeadLetter,
    Event,
    Recipient,
    SyncChange,
    SyncRun,
    dispose_engines,
    get_engine,
    migrate,
)

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PASSWORDS = {"admin": "admin-" + secrets.token_hex(6), "viewer": "viewer-" + secrets.token_hex(6)}
API = "/optimove-netmera/api"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = (NOW - dt.timedelta(days=1)).replace(minute=0, second=0)  # the sends fall in this hour and the next

pytestmark = pytest.mark.usefixtures("airflow_db")


# --------------------------------------------------------------------------------------------------
# The state database's rows (literal numbers; the expectations below are written from them)
# --------------------------------------------------------------------------------------------------


def _changes(run_id: int, n: int, status: str, reason: str | None = None, prefix: str = "C") -> list[dict[str, Any]]:
    return [
        {
            "sync_run_id": run_id,
            "customer_id": f"{prefix}{run_id}-{status}-{reason}-{i}",
            "ext_id": f"{prefix}{i}",
            "new_hash": "00000000000000ab",
            "set_attrs": {"name": "x"},
            "unset_attrs": [],
            "present_bits": "1",
            "status": status,
            "reason": reason,
        }
        for i in range(n)
    ]


def seed(engine: sa.Engine) -> dict[str, int]:
    """Two sync runs, a campaign with recipients in every state, events of every kind, dead letters."""
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SyncRun),
            [
                {
                    "id": 1,
                    "dag_id": "optimove_user_sync",
                    "dag_run_id": "scheduled__2026-11-30",
                    "status": "success",
                    "window_start": dt.date(2026, 11, 29),
                    "window_end": dt.date(2026, 11, 30),
                    "params": {"mode": "incremental"},
                    "counts": {"fetched": 120, "plan": {"changed": 40, "unset_entries": 5, "dropped": {"age": 2}}},
                    "phase_seconds": {"extract": 3.5, "diff_plan": 1.25, "load": 7.0},
                    "finished_at": NOW - dt.timedelta(days=1),
                },
                {
                    "id": 2,
                    "dag_id": "optimove_user_sync",
                    "dag_run_id": "scheduled__2026-12-01",
                    "status": "success",
                    "window_start": dt.date(2026, 11, 30),
                    "window_end": dt.date(2026, 12, 1),
                    "params": {"mode": "incremental"},
                    "counts": {"fetched": 50, "plan": {"changed": 10, "unset_entries": 0}},
                    "phase_seconds": {"extract": 1.0, "diff_plan": 0.5, "load": 2.0},
                    "finished_at": NOW,
                },
            ],
        )
        rows = (
            _changes(1, 30, "delivered")
            + _changes(1, 4, "skipped", "no extId")
            + _changes(1, 2, "skipped", "control group")
            + _changes(1, 3, "not_found", "extId unknown to Netmera")
            + _changes(1, 1, "dead", "400 invalid attribute")
            + _changes(2, 10, "delivered")
        )
        conn.execute(sa.insert(SyncChange), rows)
        dead_customer = next(r["customer_id"] for r in rows if r["status"] == "dead")
        ids["sync_letter"] = conn.execute(
            sa.insert(DeadLetter)
            .values(
                kind="profile_set",
                ref="sync_run:1",
                customer_id=dead_customer,
                ext_id="C0",
                reason="400 invalid attribute",
                attempts=1,
            )
            .returning(DeadLetter.id)
        ).scalar_one()
        conn.execute(
            sa.insert(DeadLetter).values(
                kind="send", ref="501:506", customer_id="R-failed-0", reason="400 bad token", attempts=1
            )
        )
        conn.execute(
            sa.insert(Campaign).values(
                campaign_id=501, channel_id=506, state="done", event_time=HOUR, dag_run_id="optimove_c501_ch506_x"
            )
        )
        sent_at = [HOUR + dt.timedelta(minutes=5), HOUR + dt.timedelta(minutes=20), HOUR + dt.timedelta(minutes=61)]
        sent_at += [HOUR + dt.timedelta(minutes=62 + i) for i in range(4)]
        recipients = [("sent", None, t) for t in sent_at]
        recipients += [("skipped", "missing param firstName", None)] * 2 + [("cancelled", None, None)]
        recipients += [("failed", "400 bad token", None), ("unknown", None, None)]
        conn.execute(
            sa.insert(Recipient),
            [
                {
                    "campaign_id": 501,
                    "channel_id": 506,
                    "customer_id": f"R-{status}-{i}",
                    "template_id": 9,
                    "status": status,
                    "reason": reason,
                    "sent_at": at,
                }
                for i, (status, reason, at) in enumerate(recipients)
            ],
        )
        events = [
            ("waiting-api", 13, "received", 701, 506, "dispatch failed: DispatchError: DAG not found"),
            ("waiting-browser", 13, "received", 702, 506, None),
            ("done", 13, "dispatched", 501, 506, "optimove_campaign_send run created"),
            ("ignored", 13, "ignored", 703, 459, "channel 459 is not configured (campaigns.channels)"),
            ("single-1", 11, "sent", 501, 506, None),
            ("single-2", 11, "sent", 501, 506, None),
            ("single-3", 11, "failed", 501, 506, "refused by Netmera: 400"),
            ("cancel", 4, "dispatched", 501, 506, "campaign cancelled (0 pending recipient(s) cancelled)"),
        ]
        for key, type_id, status, campaign, channel, note in events:
            ids[key] = conn.execute(
                sa.insert(Event)
                .values(
                    dedup_key=key,
                    event_type_id=type_id,
                    campaign_id=campaign,
                    channel_id=channel,
                    customer_id="R-sent-0" if type_id == 11 else None,
                    event_time=NOW - dt.timedelta(minutes=5),
                    status=status,
                    note=note,
                )
                .returning(Event.id)
            ).scalar_one()
    return ids


# --------------------------------------------------------------------------------------------------
# The API server
# --------------------------------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    engine: sa.Engine
    ids: dict[str, int]
    process: subprocess.Popen[bytes]
    log_path: Path

    def token(self, user: str) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["access_token"])

    def call(self, method: str, path: str, user: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An API server with the plugin, on a seeded SQLite state database; the DAGs serialized (for re-dispatch)."""
    tmp = tmp_path_factory.mktemp("ui-page")
    state_url = f"sqlite:///{tmp / 'state.db'}"
    migrate(state_url)
    engine = get_engine(state_url)
    ids = seed(engine)
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    env = {
        **os.environ,
        "OPTIMOVE_NETMERA_STATE_DB_URL": state_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "onm-ui-tests-" + "0" * 20,
        "OPTIMOVE_NETMERA_API_GC_FREEZE": "0",
    }
    serialized = subprocess.run([AIRFLOW, "dags", "reserialize"], env=env, capture_output=True, text=True, check=False)
    assert serialized.returncode == 0, serialized.stderr[-3000:]
    port = free_port()
    log_path = tmp / "api-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    srv = Server(f"http://127.0.0.1:{port}", engine, ids, process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"api-server exited with {process.returncode}:\n{srv.log()[-3000:]}")
            try:
                if httpx.get(f"{srv.base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not healthy within 120 s:\n{srv.log()[-3000:]}")
            time.sleep(0.3)
        yield srv
    finally:
        stop_process(process, timeout=20)
        dispose_engines()


@pytest.fixture(autouse=True)
def fresh_state(request: pytest.FixtureRequest) -> None:
    """Each test starts from the seeded rows (the actions change them), so the tests pass alone and in any order."""
    if "server" not in request.fixturenames:
        return
    srv: Server = request.getfixturevalue("server")
    from optimove_netmera.store import Base

    with srv.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    srv.ids.clear()
    srv.ids.update(seed(srv.engine))


def scalar(engine: sa.Engine, stmt: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(stmt).scalar()


# --------------------------------------------------------------------------------------------------
# JSON routes over HTTP
# --------------------------------------------------------------------------------------------------


def test_routes_need_a_user(server: Server) -> None:
    for path in ("/sync", "/campaigns", "/sends", "/events", "/dead-letters", "/me"):
        assert server.call("GET", API + path, user=None).status_code == 401, path
    response = server.call("POST", f"{API}/events/{server.ids['waiting-api']}/redispatch", user=None, json={})
    assert response.status_code == 401


def test_sync_route(server: Server) -> None:
    runs = server.call("GET", API + "/sync").json()["runs"]
    assert [r["id"] for r in runs] == [2, 1]
    first = runs[1]
    assert {k: first[k] for k in ("fetched", "changed", "unset", "sent", "skipped", "not_found", "dead_lettered")} == {
        "fetched": 120,
        "changed": 40,
        "unset": 5,
        "sent": 30,
        "skipped": {"control group": 2, "no extId": 4},
        "not_found": 3,
        "dead_lettered": 1,
    }
    assert first["phase_seconds"] == {"extract": 3.5, "diff_plan": 1.25, "load": 7.0}
    assert (first["window_start"], first["window_end"], first["status"]) == ("2026-11-29", "2026-11-30", "success")
    assert (runs[0]["sent"], runs[0]["skipped"], runs[0]["dead_lettered"]) == (10, {}, 0)


def test_campaign_routes(server: Server) -> None:
    (campaign,) = server.call("GET", API + "/campaigns").json()["campaigns"]
    assert {k: v for k, v in campaign.items() if k not in ("event_time", "created_at")} == {
        "campaign_id": 501,
        "channel_id": 506,
        "state": "done",
        "dag_run_id": "optimove_c501_ch506_x",
        "cancel_scope": None,
        "error": None,
        "recipients": 12,
        "sent": 7,
        "skipped": {"missing param firstName": 2},
        "cancelled": 1,
        "failed": 1,
        "unknown": 1,
        "pending": 0,
    }
    sends = server.call("GET", API + "/sends?days=7").json()
    first, second = (h.strftime("%Y-%m-%dT%H:00:00Z") for h in (HOUR, HOUR + dt.timedelta(hours=1)))
    assert sends["points"] == [
        {"hour": first, "campaign_id": 501, "channel_id": 506, "sent": 2},
        {"hour": second, "campaign_id": 501, "channel_id": 506, "sent": 5},
    ]


def test_events_and_dead_letter_routes(server: Server) -> None:
    body = server.call("GET", API + "/events").json()
    assert body["by_type"]["11"] == {"failed": 1, "sent": 2}
    assert body["by_type"]["4"] == {"dispatched": 1}
    assert body["received"] == {"4": 1, "11": 3, "13": 4}
    assert body["ignored"] == [{"reason": "channel 459 is not configured (campaigns.channels)", "count": 1}]
    assert body["failed"] == 1
    assert body["waiting_for_dispatch"] == scalar(
        server.engine,
        sa.select(sa.func.count()).select_from(Event).where(Event.status == "received", Event.event_type_id == 13),
    )
    offered = {e["id"] for e in body["recent"] if e["redispatchable"]}
    assert {server.ids["waiting-browser"], server.ids["ignored"]} <= offered
    assert server.ids["done"] not in offered and server.ids["single-3"] not in offered

    letters = server.call("GET", API + "/dead-letters").json()
    assert letters["counts"]["send"] == {"open": 1, "replayed": 0}
    assert [(x["kind"], x["replayable"]) for x in letters["letters"]] == [("send", False), ("profile_set", True)]


def test_actions_need_the_trigger_permission(server: Server) -> None:
    assert server.call("GET", API + "/me", user="viewer").json() == {
        "name": "viewer",
        "may_redispatch": False,
        "may_replay": False,
    }
    assert server.call("GET", API + "/sync", user="viewer").status_code == 200
    event_id = server.ids["waiting-api"]
    refused = server.call("POST", f"{API}/events/{event_id}/redispatch", user="viewer", json={})
    assert refused.status_code == 403 and "may not trigger optimove_campaign_send" in refused.json()["detail"]
    refused = server.call("POST", f"{API}/dead-letters/replay", user="viewer", json={"ids": [1]})
    assert refused.status_code == 403
    assert scalar(server.engine, sa.select(Event.status).where(Event.id == event_id)) == "received"
    assert server.call("GET", API + "/me").json()["may_redispatch"] is True


def test_redispatch_route_creates_the_run(server: Server) -> None:
    event_id = server.ids["waiting-api"]
    form = server.call("POST", f"{API}/events/{event_id}/redispatch", data={"x": "1"})
    assert form.status_code == 415  # a cross-site form post cannot trigger it

    response = server.call("POST", f"{API}/events/{event_id}/redispatch", json={})

    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    assert response.json()["status"] == "dispatched" and run_id.startswith("optimove_c701_ch506_")
    assert scalar(server.engine, sa.select(Event.status).where(Event.id == event_id)) == "dispatched"
    run = server.call("GET", f"/api/v2/dags/optimove_campaign_send/dagRuns/{run_id}").json()
    assert run["triggering_user_name"] == "admin"
    again = server.call("POST", f"{API}/events/{event_id}/redispatch", json={})
    assert again.status_code == 409
    audit = server.call("GET", "/api/v2/eventLogs?event=optimove_netmera.redispatch_event").json()
    assert {e["owner"] for e in audit["event_logs"]} >= {"admin"}


def test_bundle_is_served(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/optimove-netmera/static/main.umd.cjs", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    plugins = server.call("GET", "/api/v2/plugins").json()["plugins"]
    (app,) = [a for p in plugins for a in p["react_apps"] if a["url_route"] == "optimove-netmera"]
    assert app["bundle_url"] == "optimove-netmera/static/main.umd.cjs" and app["destination"] == "nav"


def test_nav_icon_is_served_and_referenced(server: Server) -> None:
    plugins = server.call("GET", "/api/v2/plugins").json()["plugins"]
    (app,) = [a for p in plugins for a in p["react_apps"] if a["url_route"] == "optimove-netmera"]
    assert app["icon"] == "optimove-netmera/icon.svg"  # relative: resolved against the UI's <base href>
    response = httpx.get(f"{server.base_url}/{app['icon']}", timeout=30)  # an <img>: no credentials needed
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    root = ElementTree.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox") == "0 0 24 24"


# --------------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------------


def test_page_in_chromium(server: Server, browser: Any, screenshots: Path, figures: list[str]) -> None:
    from playwright.sync_api import expect

    shots = screenshots
    figures.append(f"plugin page screenshots: {shots}")
    engine = server.engine
    page = log_in(browser, server.base_url, "admin", PASSWORDS["admin"], shot=shots / "01-login.png")
    try:
        # 1. logged in through the UI's form; the page's nav entry shows its icon (loaded, not a broken image)
        nav = page.get_by_role("link", name="Optimove Netmera")
        icon = nav.first.locator("img")
        expect(icon).to_have_attribute("src", "optimove-netmera/icon.svg")
        expect(icon).to_have_js_property("complete", True)
        loaded = icon.evaluate("img => [img.naturalWidth, new URL(img.src).pathname]")
        assert loaded == [24, "/optimove-netmera/icon.svg"]
        page.screenshot(path=shots / "02-home.png")

        # 2. open the plugin page from the nav
        nav.first.click()
        expect(page.get_by_test_id("optimove-netmera-page")).to_be_visible()
        expect(page.get_by_test_id("sync-1-sent")).to_be_visible()
        expect(page.get_by_test_id("sync-chart").locator("canvas")).to_be_visible()
        expect(page.get_by_test_id("sends-chart").locator("canvas")).to_be_visible()
        page.screenshot(path=shots / "03-page.png", full_page=True)

        # 3. the numbers shown are the state database's
        def changes(run_id: int, status: str) -> int:
            stmt = sa.select(sa.func.count()).select_from(SyncChange)
            return int(scalar(engine, stmt.where(SyncChange.sync_run_id == run_id, SyncChange.status == status)))

        def recipients(status: str) -> int:
            view = ledger()
            stmt = sa.select(sa.func.count()).select_from(view).where(view.c.campaign_id == 501)
            return int(scalar(engine, stmt.where(view.c.status == status)))

        letters = sa.select(sa.func.count()).select_from(DeadLetter)
        dead = int(scalar(engine, letters.where(DeadLetter.ref == "sync_run:1")))
        expected = {
            "sync-1-sent": changes(1, "delivered"),
            "sync-1-not_found": changes(1, "not_found"),
            "sync-1-dead_lettered": dead,
            "sync-2-sent": changes(2, "delivered"),
            "campaign-501-506-sent": recipients("sent"),
            "campaign-501-506-failed": recipients("failed"),
            "campaign-501-506-unknown": recipients("unknown"),
            "campaign-501-506-cancelled": recipients("cancelled"),
        }
        for test_id, value in expected.items():
            expect(page.get_by_test_id(test_id)).to_have_text(str(value))
        expect(page.get_by_test_id("sync-1-skipped")).to_have_attribute("data-total", str(changes(1, "skipped")))
        expect(page.get_by_test_id("campaign-501-506-skipped")).to_have_attribute(
            "data-total", str(recipients("skipped"))
        )

        # 4. re-dispatch an event and see it change
        event_id = server.ids["waiting-browser"]
        expect(page.get_by_test_id(f"event-{event_id}-status")).to_have_text("received")
        page.get_by_test_id(f"redispatch-{event_id}").click()
        expect(page.get_by_test_id(f"event-{event_id}-status")).to_have_text("dispatched")
        expect(page.get_by_test_id(f"event-{event_id}-note")).to_contain_text("optimove_c702_ch506_")
        page.screenshot(path=shots / "04-redispatched.png", full_page=True)
        assert scalar(engine, sa.select(Event.status).where(Event.id == event_id)) == "dispatched"

        # 5. replay the sync dead letter
        letter = server.ids["sync_letter"]
        page.get_by_test_id(f"dead-letter-{letter}-select").check()
        page.get_by_test_id("replay-selected").click()
        expect(page.get_by_test_id("dead-letters-message")).to_contain_text("queued for the next sync: 1")
        expect(page.get_by_test_id(f"dead-letter-{letter}")).to_have_count(0)
        page.screenshot(path=shots / "05-replayed.png", full_page=True)
        assert scalar(engine, sa.select(DeadLetter.replayed_at).where(DeadLetter.id == letter)) is not None
    finally:
        page.close()
    names = {p.name for p in shots.iterdir()}
    assert {"01-login.png", "02-home.png", "03-page.png", "04-redispatched.png", "05-replayed.png"} <= names
