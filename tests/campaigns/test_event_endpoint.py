"""The Optimove event endpoint over real HTTP: a real ``airflow api-server`` with the repo's plugin and DAGs.

Per state-database backend (SQLite file, local PostgreSQL) the module starts two API servers on free
ports, sharing the session's Airflow home and metadata database: one on a migrated state database and
one whose state database is unreachable (503). DAG runs are checked through ``/api/v2`` with a token.
Events 13, 4 and 3 are dispatched off the request path, so the tests wait for their effects (the
servers' re-dispatch sweep is off: whatever appears was done by the dispatcher).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_server import APP_KEY, KEY, Server, reserialize, start_server, stop_server, wait_healthy
from optimove_netmera.campaigns import events
from optimove_netmera.sandbox.process import free_port
from optimove_netmera.store import Campaign, Event, dispose_engines, get_engine, migrate, scratch

REPO = Path(__file__).resolve().parents[2]
CHANNEL = 506  # campaigns.channels in config/optimove_netmera.yaml
SEND_DAG = events.CAMPAIGN_SEND_DAG_ID
SYNC_DAG = events.USER_SYNC_DAG_ID


# The backends of tests/conftest.py (BACKENDS there); module-scoped here, as each one gets its own API servers.
ENDPOINT_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

pytestmark = pytest.mark.usefixtures("airflow_db")


_ids = iter(range(secrets.randbelow(10**6) * 1000 + 10**8, 10**12))


def new_id() -> int:
    """A campaign id no other test (or backend) of this session uses."""
    return next(_ids)


# --------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reserialized(airflow_db: Path) -> Path:
    """The repo's DAGs serialized into the session's metadata database."""
    return reserialize(airflow_db)


@pytest.fixture(scope="module", params=ENDPOINT_BACKENDS)
def endpoint_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgres"`` (one pair of API servers per backend)."""
    return str(request.param)


@pytest.fixture(scope="module")
def state_url(
    endpoint_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated state database on the backend (PostgreSQL: the session's ``postgres_database``, emptied)."""
    if endpoint_backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('endpoint-state') / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        dispose_engines()
        scratch.empty_schema(url)
    migrate(url)
    yield url
    dispose_engines()
    if endpoint_backend == "postgres":
        scratch.empty_schema(url)


NO_SWEEP = {"OPTIMOVE_NETMERA_API_SWEEP_SECONDS": "0"}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``condition()`` once it is truthy (polled); fails naming ``what`` after ``timeout`` s (a generous deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(0.05)


def scalar(engine: sa.Engine, stmt: Any) -> Any:
    with engine.connect() as connection:
        return connection.scalar(stmt)


def wait_status(engine: sa.Engine, event_id: int, status: str = "dispatched") -> Any:
    """The event's row once it has ``status``."""
    return wait_for(lambda: (r := event_row(engine, event_id)).status == status and r, f"event {event_id} {status}")


@dataclass
class Servers:
    up: Server
    down: Server


@pytest.fixture(scope="module")
def servers(
    endpoint_backend: str, state_url: str, reserialized: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """The endpoint on the migrated state database, and one whose state database is unreachable."""
    tmp = tmp_path_factory.mktemp(f"endpoint-{endpoint_backend}")
    if endpoint_backend == "sqlite":
        blocker = tmp / "not-a-directory"
        blocker.write_text("a file where the database directory should be")
        down_url = f"sqlite:///{blocker}/state.db"
    else:
        down_url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/onm_unreachable"
    up = start_server(state_url, reserialized, tmp / "api-up.log", env=NO_SWEEP)
    down = start_server(down_url, reserialized, tmp / "api-down.log")
    try:
        wait_healthy(up)
        wait_healthy(down)
        yield Servers(up, down)
    finally:
        stop_server(up)
        stop_server(down)


@pytest.fixture(scope="module")
def server(servers: Servers) -> Server:
    return servers.up


@pytest.fixture(scope="module")
def engine(server: Server) -> sa.Engine:
    return get_engine(server.state_url)


def count_events(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(Event)) or 0)


def event_row(engine: sa.Engine, event_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(Event.__table__).where(Event.__table__.c.id == event_id)).one()


def campaign_state(engine: sa.Engine, campaign_id: int, channel_id: int = CHANNEL) -> str | None:
    table = Campaign.__table__
    with engine.connect() as connection:
        return connection.scalar(
            sa.select(table.c.state).where(table.c.campaign_id == campaign_id, table.c.channel_id == channel_id)
        )


def dag_run(server: Server, dag_id: str, run_id: str) -> dict[str, Any] | None:
    response = server.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def runs_on(server: Server, dag_id: str, day: dt.date) -> list[dict[str, Any]]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    params = {
        "logical_date_gte": start.isoformat(),
        "logical_date_lt": (start + dt.timedelta(days=1)).isoformat(),
        "limit": 100,
    }
    response = server.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)
    assert response.status_code == 200, response.text
    return response.json()["dag_runs"]


def send_runs_for(server: Server, campaign_id: int) -> list[str]:
    response = server.api(
        "GET", f"/api/v2/dags/{SEND_DAG}/dagRuns", params={"run_id_pattern": f"optimove_c{campaign_id}_", "limit": 100}
    )
    assert response.status_code == 200, response.text
    return [r["dag_run_id"] for r in response.json()["dag_runs"]]


def stamp(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------------------------------
# Accepted payloads
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [459, 481])  # the seed's own channelId values, on the default settings
def test_seed_curl_is_accepted_and_creates_a_queued_run_on_the_paused_dag(
    server: Server, engine: sa.Engine, channel: int
) -> None:
    """The seed's curl, with only host, app key, key, the placeholder ids and a current timeStamp filled in.

    (The guide's example time, 2022-09-19 05:04:54, is outside the accepted window for event 13 today.)
    """
    assert shutil.which("curl"), "curl is needed for this test"
    paused = server.api("PATCH", f"/api/v2/dags/{SEND_DAG}", json={"is_paused": True})
    assert paused.status_code == 200, f"{SEND_DAG} must be deployed and parsed: {paused.text}"
    campaign = new_id()
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    time_stamp = f"{when:%Y-%m-%d %H:%M:%S}"
    payload = f'{{"eventTypeId":13,"timeStamp":"{time_stamp}","campaignId":{campaign},"channelId":{channel}}}'
    result = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--location", "--request", "POST", server.event_url,
            "-H", f"X-netmera-api-key: {KEY}",
            "-H", "Content-Type: application/json",
            "--data-raw", payload,
            "--write-out", "\n%{http_code}",
        ],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "200", result.stdout
    answer = json.loads(body)
    run_id = f"optimove_c{campaign}_ch{channel}_{when:%Y%m%dT%H%M%S}"
    assert answer == {"status": "accepted", "event_id": answer["event_id"], "dag_run_id": run_id, "dispatch": "queued"}

    row = wait_status(engine, answer["event_id"])
    assert row.raw_payload == json.loads(payload)
    assert (row.event_type_id, row.campaign_id, row.channel_id, row.source) == (13, campaign, channel, "webhook")
    assert row.event_time == when
    assert (row.status, row.dag_run_id) == ("dispatched", run_id)
    assert campaign_state(engine, campaign, channel) == "received"

    run = wait_for(lambda: dag_run(server, SEND_DAG, run_id), f"run {run_id}")
    assert run["state"] == "queued"
    assert run["run_type"] == "manual"
    assert run["conf"] == {
        "campaign_id": campaign,
        "channel_id": channel,
        "event_time": time_stamp,
        "event_id": answer["event_id"],
        "source": "webhook",
    }
    dag = server.api("GET", f"/api/v2/dags/{SEND_DAG}").json()
    assert dag["is_paused"] is True


def test_pascal_case_and_minute_timestamps_are_accepted(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    when = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(days=2)
    response = server.post_event(
        {"EventTypeID": "13", "TimeStamp": f"{when:%Y-%m-%d %H:%M}", "CampaignID": str(campaign), "ChannelID": "506"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    run_id = f"optimove_c{campaign}_ch{CHANNEL}_{when:%Y%m%dT%H%M}00"
    assert answer["status"] == "accepted" and answer["dag_run_id"] == run_id
    row = event_row(engine, answer["event_id"])
    assert (row.event_type_id, row.campaign_id, row.channel_id) == (13, campaign, CHANNEL)
    assert row.event_time == when
    run = wait_for(lambda: dag_run(server, SEND_DAG, run_id), f"run {run_id}")
    assert run["conf"]["event_time"] == f"{when:%Y-%m-%d %H:%M}:00"


def test_a_body_at_the_size_limit_is_accepted(server: Server, engine: sa.Engine) -> None:
    limit = 65_536  # inbound.max_body_bytes default
    body = {"eventTypeId": 1, "timeStamp": stamp(), "campaignId": new_id(), "Note": ""}
    body["Note"] = "x" * (limit - len(json.dumps(body)))
    content = json.dumps(body).encode()
    assert len(content) == limit
    response = server.post_event(content)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ignored"


# --------------------------------------------------------------------------------------------------
# Rejections: right status, the field named, nothing stored
# --------------------------------------------------------------------------------------------------

IN_WINDOW = stamp(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))  # 13/4/11 must be within 30 days of now
OK13 = {"eventTypeId": 13, "timeStamp": IN_WINDOW, "campaignId": 4242, "channelId": CHANNEL}
OK11 = {
    "eventTypeId": 11,
    "timeStamp": IN_WINDOW,
    "campaignId": 4242,
    "channelId": CHANNEL,
    "customerID": "C0000001",
    "templateID": 1,
    "promoCode": "SAVE10",
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in changes or changes[k] is not ...}
    out.update({k: v for k, v in changes.items() if v is not ...})
    return out


def _chunks() -> Iterator[bytes]:
    yield b'{"eventTypeId":13,"pad":"'
    for _ in range(80):
        yield b"x" * 1024
    yield b'"}'


JSON = {"Content-Type": "application/json"}
BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    # (id, request overrides, status, field named)
    ("no-key", {"headers": {"X-netmera-api-key": ""}, "drop_key": True}, 401, "X-netmera-api-key"),
    ("empty-key", {"headers": {"X-netmera-api-key": ""}}, 401, "X-netmera-api-key"),
    ("wrong-key", {"headers": {"X-netmera-api-key": "not-the-key"}}, 403, "X-netmera-api-key"),
    ("key-wrong-case", {"headers": {"X-netmera-api-key": KEY.upper()}}, 403, "X-netmera-api-key"),
    ("key-prefix", {"headers": {"X-netmera-api-key": KEY[:-1]}}, 403, "X-netmera-api-key"),
    ("wrong-app-key", {"app_key": "someone-elses-app"}, 404, "app_key"),
    ("app-key-wrong-case", {"app_key": APP_KEY.upper()}, 404, "app_key"),
    ("text-plain", {"headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("form-encoded", {"headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "Content-Type"),
    ("no-content-type", {"drop_content_type": True}, 415, "Content-Type"),
    ("not-json", {"content": b"eventTypeId=13&campaignId=1"}, 400, "body"),
    ("truncated-json", {"content": b'{"eventTypeId":13,"timeStamp":"2026-05-06'}, 400, "body"),
    ("empty-body", {"content": b""}, 400, "body"),
    ("json-array", {"content": json.dumps([OK13]).encode()}, 400, "body"),
    ("json-string", {"content": b'"eventTypeId"'}, 400, "body"),
    ("json-null", {"content": b"null"}, 400, "body"),
    ("nan-literal", {"content": b'{"eventTypeId":13,"campaignId":NaN}'}, 400, "body"),
    ("not-utf8", {"content": b'{"eventTypeId":13,"x":"\xff\xfe"}'}, 400, "body"),
    ("1mb-body", {"content": json.dumps(_with(OK13, Pad="x" * 1_000_000)).encode()}, 413, "body"),
    ("chunked-over-limit", {"content": "chunks"}, 413, "body"),
    ("missing-event-type", {"json": _with(OK13, eventTypeId=...)}, 422, "eventTypeId"),
    ("missing-timestamp", {"json": _with(OK13, timeStamp=...)}, 422, "timeStamp"),
    ("13-missing-campaign", {"json": _with(OK13, campaignId=...)}, 422, "campaignId"),
    ("13-missing-channel", {"json": _with(OK13, channelId=...)}, 422, "channelId"),
    ("event-type-word", {"json": _with(OK13, eventTypeId="thirteen")}, 422, "eventTypeId"),
    ("unknown-event-type", {"json": _with(OK13, eventTypeId=99)}, 422, "eventTypeId"),
    ("event-type-zero", {"json": _with(OK13, eventTypeId=0)}, 422, "eventTypeId"),
    ("iso-timestamp", {"json": _with(OK13, timeStamp="2026-05-06T07:08:09Z")}, 422, "timeStamp"),
    ("impossible-date", {"json": _with(OK13, timeStamp="2026-02-30 07:08:09")}, 422, "timeStamp"),
    ("timestamp-number", {"json": _with(OK13, timeStamp=1778051289)}, 422, "timeStamp"),
    ("negative-campaign", {"json": _with(OK13, campaignId=-5)}, 422, "campaignId"),
    ("negative-channel-string", {"json": _with(OK13, channelId="-506")}, 422, "channelId"),
    ("fractional-campaign", {"json": _with(OK13, campaignId=1.5)}, 422, "campaignId"),
    ("boolean-campaign", {"json": _with(OK13, campaignId=True)}, 422, "campaignId"),
    ("object-campaign", {"json": _with(OK13, campaignId={"id": 1})}, 422, "campaignId"),
    ("channel-over-int32", {"json": _with(OK13, channelId=2**31)}, 422, "channelId"),
    (
        "pascal-negative-campaign",
        {"json": {"EventTypeID": 13, "TimeStamp": "2026-05-06 07:08:09", "CampaignID": -1, "ChannelID": 506}},
        422,
        "CampaignID",
    ),
    ("11-missing-customer", {"json": _with(OK11, customerID=...)}, 422, "customerID"),
    ("11-missing-template", {"json": _with(OK11, templateID=...)}, 422, "templateID"),
    ("11-empty-customer", {"json": _with(OK11, customerID="  ")}, 422, "customerID"),
    ("11-promo-object", {"json": _with(OK11, promoCode={"code": "X"})}, 422, "promoCode"),
    ("conflicting-spellings", {"json": _with(OK13, CampaignID=4243)}, 422, "CampaignID"),
    # hostile bytes: each was a 500 (or stored) before; the in-process variants are in test_event_hardening.py
    ("surrogate-customer", {"json": _with(OK11, customerID="C0000001\ud800")}, 422, "customerID"),
    ("surrogate-unknown-key", {"json": _with(OK13, Note="\udfff")}, 422, "Note"),
    ("nul-customer", {"json": _with(OK11, customerID="C0000001\x00")}, 422, "customerID"),
    ("30-digit-campaign", {"content": json.dumps(_with(OK13, campaignId="@")).replace('"@"', "1" * 30).encode()},
     422, "campaignId"),
    ("11-promo-empty-object", {"json": _with(OK11, promoCode={})}, 422, "promoCode"),
    ("year-9999", {"json": _with(OK13, timeStamp="9999-12-31 23:59:59")}, 422, "timeStamp"),
    ("year-1", {"json": _with(OK13, timeStamp="0001-01-01 00:00:00")}, 422, "timeStamp"),
    ("event3-year-9999", {"json": {"eventTypeId": 3, "timeStamp": "9999-12-31 23:59:59"}}, 422, "timeStamp"),
    ("13-from-2022", {"json": _with(OK13, timeStamp="2022-09-19 05:04:54")}, 422, "timeStamp"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "overrides", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_and_nothing_is_stored(
    server: Server, engine: sa.Engine, case: str, overrides: dict[str, Any], status: int, field: str
) -> None:
    headers = {"X-netmera-api-key": KEY, **JSON, **overrides.get("headers", {})}
    if overrides.get("drop_key"):
        headers.pop("X-netmera-api-key")
    if overrides.get("drop_content_type"):
        headers.pop("Content-Type")
    url = f"{server.base_url}/rest/optimove/event/{overrides.get('app_key', APP_KEY)}"
    if "json" in overrides:
        content: Any = json.dumps(overrides["json"]).encode()
    else:
        content = overrides.get("content", json.dumps(OK13).encode())
    if content == "chunks":
        content = _chunks()
    before = count_events(engine)

    response = httpx.post(url, content=content, headers=headers, timeout=30)

    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "rejected"
    assert body["field"] == field
    assert field.lower() in body["error"].lower() or field == "body"
    assert count_events(engine) == before


# --------------------------------------------------------------------------------------------------
# Dedup, dispatch per event type
# --------------------------------------------------------------------------------------------------


def test_a_duplicate_event_makes_one_run(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    when = f"{moment:%Y-%m-%d %H:%M:%S}"
    first = server.post_event({"eventTypeId": 13, "timeStamp": when, "campaignId": campaign, "channelId": CHANNEL})
    again = server.post_event({"eventTypeId": 13, "timeStamp": when, "campaignId": campaign, "channelId": CHANNEL})
    pascal = server.post_event({"EventTypeID": 13, "TimeStamp": when, "CampaignID": campaign, "ChannelID": CHANNEL})
    assert first.status_code == again.status_code == pascal.status_code == 200
    assert first.json()["status"] == "accepted"
    assert again.json() == pascal.json() == {"status": "duplicate", "event_id": first.json()["event_id"]}
    with engine.connect() as connection:
        rows = connection.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.__table__.c.campaign_id == campaign)
        )
    assert rows == 1
    wait_status(engine, first.json()["event_id"])
    assert send_runs_for(server, campaign) == [f"optimove_c{campaign}_ch{CHANNEL}_{moment:%Y%m%dT%H%M%S}"]


def test_a_cancel_before_the_bulk_event_wins(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    cancel = server.post_event({"eventTypeId": 4, "timeStamp": stamp(), "campaignId": campaign, "channelId": CHANNEL})
    assert cancel.status_code == 200 and cancel.json()["status"] == "accepted", cancel.text
    wait_status(engine, cancel.json()["event_id"])
    assert campaign_state(engine, campaign) == "cancelled"

    bulk = server.post_event({"eventTypeId": 13, "timeStamp": stamp(), "campaignId": campaign, "channelId": CHANNEL})
    assert bulk.status_code == 200 and bulk.json()["status"] == "accepted", bulk.text
    wait_status(engine, bulk.json()["event_id"])
    assert campaign_state(engine, campaign) == "cancelled"
    # the run still starts (visible in the UI) and finds the campaign cancelled
    assert send_runs_for(server, campaign) == [bulk.json()["dag_run_id"]]


def test_a_cancel_without_channel_cancels_every_channel(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    bulk = server.post_event({"EventTypeID": 13, "TimeStamp": stamp(), "CampaignID": campaign, "ChannelID": CHANNEL})
    assert bulk.status_code == 200
    wait_status(engine, bulk.json()["event_id"])
    assert campaign_state(engine, campaign) == "received"
    cancel = server.post_event({"EventTypeID": 4, "TimeStamp": stamp(), "CampaignID": campaign})
    assert cancel.status_code == 200 and cancel.json()["status"] == "accepted", cancel.text
    wait_status(engine, cancel.json()["event_id"])
    assert campaign_state(engine, campaign) == "cancelled"


def test_single_target_events_are_queued(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    camel = server.post_event(_with(OK11, campaignId=campaign, promoCode=["SAVE10", "VIP"], timeStamp=stamp()))
    pascal = server.post_event(
        {
            "EventTypeID": 11,
            "TimeStamp": stamp(),
            "CampaignID": campaign,
            "ChannelID": CHANNEL,
            "CustomerID": "C0000002",
            "TemplateID": "2",
            "PromoCode": None,
        }
    )
    for response in (camel, pascal):
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "event_id": response.json()["event_id"]}
    first, second = event_row(engine, camel.json()["event_id"]), event_row(engine, pascal.json()["event_id"])
    assert (first.status, first.customer_id, first.template_id, first.promo_code) == (
        "queued",
        "C0000001",
        1,
        "SAVE10,VIP",
    )
    assert (second.status, second.customer_id, second.template_id, second.promo_code) == (
        "queued",
        "C0000002",
        2,
        None,
    )
    assert send_runs_for(server, campaign) == []  # never one DAG run per single-target event


def test_daily_process_event_runs_the_user_sync_once_per_day(server: Server, engine: sa.Engine) -> None:
    day = dt.date(2030, 1, 1) + dt.timedelta(days=new_id() % 20_000)
    first = server.post_event({"eventTypeId": 3, "timeStamp": f"{day} 04:05:06"})
    assert first.status_code == 200, first.text
    run_id = f"optimove_event3_{day:%Y%m%d}"
    assert first.json() == {"status": "accepted", "event_id": first.json()["event_id"], "dispatch": "queued"}
    assert wait_status(engine, first.json()["event_id"]).dag_run_id == run_id
    run = dag_run(server, SYNC_DAG, run_id)
    assert run is not None and run["state"] == "queued"

    second = server.post_event({"EventTypeID": 3, "TimeStamp": f"{day} 09:00:00"})
    assert second.status_code == 200 and second.json()["status"] == "accepted"
    assert "already has a run" in wait_status(engine, second.json()["event_id"]).note
    assert [r["dag_run_id"] for r in runs_on(server, SYNC_DAG, day)] == [run_id]


def test_daily_process_event_skips_a_day_that_already_has_a_sync_run(server: Server, engine: sa.Engine) -> None:
    day = dt.date(2030, 1, 1) + dt.timedelta(days=new_id() % 20_000)
    existing = server.api(
        "POST",
        f"/api/v2/dags/{SYNC_DAG}/dagRuns",
        json={"dag_run_id": f"scheduled_like_{day:%Y%m%d}", "logical_date": f"{day}T03:00:00Z", "conf": {}},
    )
    assert existing.status_code == 200, existing.text
    event = server.post_event({"eventTypeId": 3, "timeStamp": f"{day} 05:00:00"})
    assert event.status_code == 200 and event.json()["status"] == "accepted", event.text
    row = wait_status(engine, event.json()["event_id"])
    assert "already has a run" in row.note
    assert [r["dag_run_id"] for r in runs_on(server, SYNC_DAG, day)] == [f"scheduled_like_{day:%Y%m%d}"]


def test_unconfigured_channel_is_held_and_logged_as_an_error(server: Server, engine: sa.Engine) -> None:
    """Not a silent 200: answered ``held`` with the reason, stored held, logged at error level, no run."""
    campaign = new_id()
    response = server.post_event({"eventTypeId": 13, "timeStamp": stamp(), "campaignId": campaign, "channelId": 999})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "held" and "channel 999" in answer["reason"]
    row = event_row(engine, answer["event_id"])
    assert row.status == "held" and "channel 999 is not configured" in row.note
    assert send_runs_for(server, campaign) == []
    deadline = time.monotonic() + 60
    while f"campaign {campaign}, channel 999" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(li for li in server.log().splitlines() if f"campaign {campaign}, channel 999" in li)
    assert "not configured" in line and "error" in line.lower()


@pytest.mark.parametrize("event_type", [1, 2, 5, 14])
def test_acknowledged_event_types_are_stored_and_ignored(server: Server, engine: sa.Engine, event_type: int) -> None:
    body: dict[str, Any] = {"EventTypeID": event_type, "TimeStamp": stamp(), "CampaignID": new_id()}
    if event_type == 14:
        body.update({"EngagementID": 144523, "DecryptionKey": "secret-key-material", "ServiceAccount": "c2VjcmV0"})
    response = server.post_event(body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ignored"
    row = event_row(engine, response.json()["event_id"])
    assert row.status == "ignored"
    if event_type == 14:
        assert row.raw_payload["DecryptionKey"] == row.raw_payload["ServiceAccount"] == "[redacted]"
        assert row.raw_payload["EngagementID"] == 144523


def test_state_database_down_answers_503_and_stores_nothing(servers: Servers, engine: sa.Engine) -> None:
    before = count_events(engine)
    response = servers.down.post_event(
        {"eventTypeId": 13, "timeStamp": stamp(), "campaignId": new_id(), "channelId": CHANNEL}
    )
    assert response.status_code == 503, response.text
    assert response.json()["status"] == "unavailable"
    assert "state database" in response.json()["error"]
    assert response.headers["Retry-After"] == "30"
    assert count_events(engine) == before
    # authentication and validation still come first
    assert servers.down.post_event(OK13, headers={"X-netmera-api-key": "nope"}).status_code == 403
    assert servers.down.post_event(_with(OK13, campaignId=-1)).status_code == 422


def test_sandbox_webhooks_land_in_both_styles(server: Server, engine: sa.Engine, sandbox_reset: Any) -> None:
    admin = sandbox_reset.admin.optimove
    headers = {"X-netmera-api-key": KEY}
    landed = []
    for style in ("netmera", "optimove"):
        campaign = new_id()
        fired = admin.fire_webhook(13, campaign, CHANNEL, url=server.event_url, headers=headers, style=style)
        assert [d["status"] for d in fired["deliveries"]] == [200], fired
        landed.append((campaign, fired["body"]))
        single = admin.fire_webhook(
            11, campaign, CHANNEL, url=server.event_url, headers=headers, style=style, customer_id="C0000007",
            template_id=3, promo_code="WELCOME",
        )  # fmt: skip
        assert [d["status"] for d in single["deliveries"]] == [200], single
    table = Event.__table__
    for campaign, _ in landed:
        dispatched = sa.select(table.c.id).where(
            table.c.campaign_id == campaign, table.c.event_type_id == 13, table.c.status == "dispatched"
        )
        wait_for(lambda q=dispatched: scalar(engine, q), f"the 13 of campaign {campaign}")
    with engine.connect() as connection:
        for campaign, body in landed:
            rows = connection.execute(
                sa.select(table.c.event_type_id, table.c.status, table.c.raw_payload, table.c.customer_id)
                .where(table.c.campaign_id == campaign)
                .order_by(table.c.id)
            ).all()
            assert [(r.event_type_id, r.status) for r in rows] == [(13, "dispatched"), (11, "queued")]
            assert rows[0].raw_payload == body
            assert rows[1].customer_id == "C0000007"
            assert send_runs_for(server, campaign) != []


# --------------------------------------------------------------------------------------------------
# The authenticated routes
# --------------------------------------------------------------------------------------------------


def test_other_routes_need_an_airflow_user(server: Server, engine: sa.Engine) -> None:
    own = server.post_event({"eventTypeId": 4, "timeStamp": stamp(), "campaignId": new_id(), "channelId": CHANNEL})
    assert own.status_code == 200 and own.json()["status"] == "accepted", own.text
    wait_status(engine, own.json()["event_id"])  # dispatched: cancels it
    for path in ("/rest/optimove/events", "/rest/optimove/status"):
        assert httpx.get(f"{server.base_url}{path}", timeout=30).status_code == 401
        assert httpx.get(f"{server.base_url}{path}", headers={"X-netmera-api-key": KEY}, timeout=30).status_code == 401
    listing = server.api("GET", "/rest/optimove/events", params={"limit": 5})
    assert listing.status_code == 200, listing.text
    assert 0 < len(listing.json()["events"]) <= 5
    assert own.json()["event_id"] in [e["id"] for e in listing.json()["events"]]  # newest first
    assert all("customer_id" not in e and "promo_code" not in e for e in listing.json()["events"])
    status = server.api("GET", "/rest/optimove/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["state_db_reachable"] is True
    assert body["inbound_key_source"] == "env OPTIMOVE_NETMERA_INBOUND_API_KEY"
    assert body["events"].get("dispatched", 0) > 0
    assert KEY not in status.text


def test_logs_never_show_the_key_or_customer_ids(server: Server) -> None:
    """Its own traffic first (stored, refused, ignored), so it passes alone and in any order."""
    customer = f"C-LOGS-{secrets.token_hex(4)}"
    campaign = new_id()
    sent = [
        server.post_event(_with(OK11, campaignId=campaign, customerID=customer, timeStamp=stamp())),
        server.post_event(_with(OK11, campaignId=campaign, customerID=customer + "\ud800")),
        server.post_event(_with(OK11, campaignId=campaign, customerID=customer + "\x00")),
        server.post_event(_with(OK11, campaignId=campaign, customerID=customer, timeStamp="9999-12-31 23:59:59")),
        server.post_event(_with(OK11, campaignId=campaign, customerID=customer), headers={"X-netmera-api-key": "x"}),
        server.post_event({"EventTypeID": 14, "TimeStamp": stamp(), "CampaignID": campaign,
                           "DecryptionKey": "secret-key-material", "CustomerID": customer}),
    ]  # fmt: skip
    assert [r.status_code for r in sent] == [200, 422, 422, 422, 403, 200], [r.text for r in sent]
    ignored = f"Optimove event {sent[-1].json()['event_id']} "
    deadline = time.monotonic() + 30
    while ignored not in server.log() and time.monotonic() < deadline:  # the last request's line is logged
        time.sleep(0.1)
    text = server.log()
    assert ignored in text
    assert text.count("Optimove event rejected with 422 (field customerID)") >= 2
    for secret in (KEY, customer, "secret-key-material"):
        assert secret not in text


def test_listing_query_parameters_out_of_range_answer_422(server: Server) -> None:
    response = server.api("GET", "/rest/optimove/events", params={"event_type_id": "99999999999999999999"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "event_type_id"
    assert "2147483647" in response.json()["error"]
    huge_campaign = server.api("GET", "/rest/optimove/events", params={"campaign_id": str(2**63)})
    assert huge_campaign.status_code == 422 and huge_campaign.json()["field"] == "campaign_id", huge_campaign.text


def test_the_openapi_document_is_served_under_the_plugin_prefix(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/rest/optimove/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    spec = response.json()
    assert {"url": "/rest/optimove"} in spec["servers"]
    assert set(spec["paths"]) == {"/event/{app_key}", "/events", "/status"}
    post = spec["paths"]["/event/{app_key}"]["post"]
    assert "application/json" in post["requestBody"]["content"]
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "503"} <= set(post["responses"])


# --------------------------------------------------------------------------------------------------
# Re-dispatch of stored events (in this process, on the same metadata database)
# --------------------------------------------------------------------------------------------------


class FailingTrigger:
    """A DAG trigger that is down."""

    def trigger(self, *args: Any, **kwargs: Any) -> bool:
        raise events.DispatchError("Airflow is down")

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        raise events.DispatchError("Airflow is down")


def test_a_failed_dispatch_stays_received_and_dispatch_pending_picks_it_up(server: Server, engine: sa.Engine) -> None:
    campaign = new_id()
    event = events.parse_event({"eventTypeId": 13, "timeStamp": stamp(), "campaignId": campaign, "channelId": CHANNEL})
    result = events.ingest(engine, event, source="manual", raw=None, trigger=FailingTrigger())
    assert result.response_status == "accepted"
    assert result.dispatch is not None and result.dispatch.error
    row = event_row(engine, result.stored.event_id)
    assert row.status == "received" and "Airflow is down" in row.note

    assert events.dispatch_pending(engine, older_than_seconds=3600).checked == 0  # too young
    report = events.dispatch_pending(engine, older_than_seconds=0, trigger=events.AirflowDagTrigger())
    assert result.stored.event_id in report.event_ids
    row = event_row(engine, result.stored.event_id)
    assert row.status == "dispatched"
    run = dag_run(server, SEND_DAG, row.dag_run_id)
    assert run is not None and run["conf"]["source"] == "manual" and run["conf"]["event_id"] == row.id
    # a second pass finds nothing to do, and re-dispatching the same event changes nothing
    assert result.stored.event_id not in events.dispatch_pending(engine, older_than_seconds=0).event_ids
    assert events.dispatch_event(engine, row.id).status == "dispatched"


def test_a_missing_dag_fails_clearly(airflow_db: Path) -> None:
    with pytest.raises(events.DispatchError, match="does not exist in Airflow"):
        events.AirflowDagTrigger().trigger("optimove_no_such_dag", "optimove_x", {})


def test_task_trigger_speaks_the_execution_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import ErrorType
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import DRCount, ErrorResponse, GetDRCount, OKResponse, TriggerDagRun

    sent: list[Any] = []
    answers: list[Any] = [OKResponse(ok=True), ErrorResponse(error=ErrorType.DAGRUN_ALREADY_EXISTS), DRCount(count=1)]

    class Comms:
        def send(self, message: Any) -> Any:
            sent.append(message)
            return answers.pop(0)

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", Comms(), raising=False)
    assert events.in_task()
    trigger = events.default_trigger()
    assert isinstance(trigger, events.TaskDagTrigger)
    assert trigger.trigger(SEND_DAG, "optimove_c1_ch506_20260101T000000", {"campaign_id": 1}) is True
    assert trigger.trigger(SEND_DAG, "optimove_c1_ch506_20260101T000000", {"campaign_id": 1}) is False
    assert trigger.has_run_on(SYNC_DAG, dt.date(2026, 1, 2)) is True
    assert isinstance(sent[0], TriggerDagRun) and sent[0].run_id == "optimove_c1_ch506_20260101T000000"
    assert isinstance(sent[2], GetDRCount)
    assert sent[2].logical_dates == [dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)]  # sync.schedule 0 3 * * * UTC


def test_inbound_key_falls_back_to_the_airflow_variable(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.models.variable import Variable
    from optimove_netmera.campaigns.api import INBOUND_KEY_VARIABLE, _Runtime

    monkeypatch.delenv("OPTIMOVE_NETMERA_INBOUND_API_KEY", raising=False)
    assert _Runtime().refresh().api_key is None  # nothing configured: the endpoint answers 503
    Variable.set(INBOUND_KEY_VARIABLE, "from-the-variable")
    try:
        config = _Runtime().refresh()
        assert (config.api_key, config.key_source) == ("from-the-variable", f"Airflow Variable {INBOUND_KEY_VARIABLE}")
        monkeypatch.setenv("OPTIMOVE_NETMERA_INBOUND_API_KEY", "from-the-env")
        assert _Runtime().refresh().api_key == "from-the-env"  # the env var wins
    finally:
        Variable.delete(INBOUND_KEY_VARIABLE)
