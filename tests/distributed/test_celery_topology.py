"""The project on Airflow's distributed topology, as real processes: CeleryExecutor, PostgreSQL, Redis.

One ``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker`` processes on the
local PostgreSQL (Airflow's metadata and the state database, two throwaway databases) and Redis (the broker), with
the sandbox as Optimove and Netmera. The scenario, with exact outcomes checked in the sandbox:

1. an API server started without ``OPTIMOVE_NETMERA_STATE_DB_URL`` refuses events (503 naming the variable);
2. the user sync, triggered over ``/api/v2``, writes every known customer's attributes;
3. a single-target event (11) is sent by the continuous realtime drainer;
4. a bulk event (13) defers until its scheduled time (the triggerer), sends in chunks, and the worker running it
   is SIGKILLed with its task processes mid-send; a new worker starts. Nobody gets a push twice, and nobody is
   missing apart from the recipients reported ``unknown`` (the chunks in flight: up to
   ``campaigns.requests_in_flight``), about whom decide_unknown asks (the test accepts through the REST API);
5. a bulk event cancelled (4) while it waits sends nothing.

The figures (time to finish the sync, the campaign, the recovery after the kill) are printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery_topology import CHUNK, HEARTBEAT_TIMEOUT_S, IN_FLIGHT, Topology, wait_for
from hitl_answers import answer_until_finished, waiting_question
from optimove_netmera.campaigns import recipients
from optimove_netmera.campaigns.recipients import ORPHAN_REASON
from optimove_netmera.sandbox.process import free_port, start_sandbox
from optimove_netmera.store import Campaign, Event, dispose_engines, get_engine, migrate, scratch

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(1500)]

REDIS_URL = "redis://127.0.0.1:6379"
CHANNEL = 506
SYNC_DAG, SEND_DAG, REALTIME_DAG = "optimove_user_sync", "optimove_campaign_send", "optimove_realtime_send"
STRING_ATTRIBUTES = {"FirstName": "name", "LastName": "surname", "Country": "country", "City": "city"}
STAMP = "%Y-%m-%d %H:%M:%S"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """The whole deployment, started; every process stopped afterwards, also on failure."""
    reason = scratch.check_reachable(scratch.admin_url())
    if reason is not None:
        pytest.fail(f"the topology test needs the local PostgreSQL: {reason}", pytrace=False)
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"the topology test needs Redis on {REDIS_URL} (the Celery broker): {exc}", pytrace=False)
    home = tmp_path_factory.mktemp("topology")
    with contextlib.ExitStack() as stack:
        meta_url = stack.enter_context(scratch.throwaway_database("onm_topo_meta"))
        state_url = stack.enter_context(scratch.throwaway_database("onm_topo_state"))
        box = start_sandbox(log_path=home / "sandbox.log")
        stack.callback(box.stop)
        topo = Topology(
            home=home,
            meta_url=meta_url,
            state_url=state_url,
            broker_url=f"{REDIS_URL}/{1 + secrets.randbelow(15)}",
            queue=f"onm-topology-{secrets.token_hex(4)}",
            sandbox=box,
        )
        stack.callback(dispose_engines)
        stack.callback(topo.stop)
        started = time.monotonic()
        topo.run("db", "migrate")
        migrate(state_url)
        topo.run("pools", "set", "netmera_api", "4", "Concurrent Netmera requests")
        topo.start("api-server", "api-server")
        topo.start("scheduler", "scheduler")
        topo.start("dag-processor", "dag-processor")
        topo.start("triggerer", "triggerer")
        topo.start_worker("worker-1")
        topo.start_worker("worker-2")
        wait_for("the API server", lambda: topo.api("GET", "/api/v2/monitor/health").status_code == 200, 240)
        for dag_id in (SYNC_DAG, SEND_DAG, REALTIME_DAG):
            wait_for(
                f"{dag_id} to be parsed", lambda d=dag_id: topo.api("GET", f"/api/v2/dags/{d}").status_code == 200, 240
            )
        for dag_id in (SEND_DAG, REALTIME_DAG):
            topo.api_json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        print(f"\n[topology] up in {time.monotonic() - started:.1f} s (migrations, 6 processes, DAGs parsed)")
        yield topo


def trigger(topo: Topology, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
    body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
    topo.api_json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)


def campaign_run_id(topo: Topology, campaign_id: int) -> str:
    """The run the endpoint started for ``campaign_id``."""

    def find() -> str | None:
        runs = topo.api_json("GET", f"/api/v2/dags/{SEND_DAG}/dagRuns?limit=100")["dag_runs"]
        ids = [r["dag_run_id"] for r in runs if r["dag_run_id"].startswith(f"optimove_c{campaign_id}_ch{CHANNEL}_")]
        return ids[0] if ids else None

    return wait_for(f"a campaign run for campaign {campaign_id}", find, 120)


def send_ti(topo: Topology, run_id: str) -> dict[str, Any] | None:
    tis = [t for t in topo.task_instances(SEND_DAG, run_id) if t["task_id"] == "send"]
    return tis[0] if tis else None


def deliveries(topo: Topology, key: str) -> list[dict[str, Any]]:
    return topo.sandbox.admin.netmera.deliveries(notification_key=key, status="all", limit=100_000)["deliveries"]


def ledger(state_url: str, campaign_id: int) -> list[dict[str, Any]]:
    table = recipients.ledger()  # a recipient of a settled chunk has its status
    with get_engine(state_url).connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.campaign_id == campaign_id)).all()
    return [dict(r._mapping) for r in rows]


def stored_report(state_url: str, campaign_id: int) -> dict[str, Any]:
    """The campaign's report as its report task stored it (also when that task failed)."""
    with get_engine(state_url).connect() as conn:
        counts = conn.scalar(sa.select(Campaign.counts).where(Campaign.campaign_id == campaign_id))
    return counts["report"]


def xcom(topo: Topology, dag_id: str, run_id: str, task_id: str) -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    return topo.api_json("GET", path + "?deserialize=true")["value"]


def event_13(campaign_id: int) -> dict[str, Any]:
    """The seed's bulk-send body."""
    return {"eventTypeId": 13, "timeStamp": utcnow().strftime(STAMP), "campaignId": campaign_id, "channelId": CHANNEL}


def test_distributed_topology_end_to_end(topology: Topology, figures: list[str]) -> None:
    topo = topology
    box = topo.sandbox
    measured: dict[str, float] = {}

    # 1. An API server without the shared state database refuses events, naming the variable; nothing is stored.
    port = free_port()
    topo.start(
        "api-server-unshared",
        "api-server",
        "--port",
        str(port),
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        OPTIMOVE_NETMERA_STATE_DB_URL="",
    )
    unshared = f"http://127.0.0.1:{port}"
    wait_for("the unshared API server", lambda: topo.api("GET", "/api/v2/monitor/health").status_code == 200, 240)

    def refused() -> Any:
        response = topo.post_event(event_13(900_001), base_url=unshared)
        return response if response.status_code != 404 else None  # 404 until the plugin app is mounted

    answer = wait_for("the unshared API server's endpoint", refused, 240)
    assert answer.status_code == 503, answer.text
    assert "OPTIMOVE_NETMERA_STATE_DB_URL" in answer.json()["error"]
    assert "OPTIMOVE_NETMERA_STATE_DB_URL" in topo.log("api-server-unshared")
    with get_engine(topo.state_url).connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Event)) == 0
    topo.procs.pop("api-server-unshared").terminate()

    # 2. The user sync over the REST API: every customer Netmera knows gets exactly Optimove's values.
    started = time.monotonic()
    trigger(topo, SYNC_DAG, "topology_sync")
    topo.api_json("PATCH", f"/api/v2/dags/{SYNC_DAG}", json={"is_paused": False})
    run = topo.wait_run_finished(SYNC_DAG, "topology_sync", 600)
    measured["sync_s"] = time.monotonic() - started
    assert run["state"] == "success", topo.task_instances(SYNC_DAG, "topology_sync")
    customers = [f"C{i:07d}" for i in range(1, 1001)]
    known = [c for c in customers if (box.admin.netmera.user(c) or {}).get("known")]
    profiles = {p["extId"]: p["profile"] for p in box.admin.netmera.profiles(limit=5000)["profiles"]}
    assert set(profiles) == set(known), "every known customer has a profile, nobody else"
    for customer in known:
        source = box.admin.optimove.customer(customer)["attributes"]
        for optimove_name, netmera_name in STRING_ATTRIBUTES.items():
            value = source.get(optimove_name)
            if value in (None, "", "NULL"):
                assert netmera_name not in profiles[customer], (customer, netmera_name)
            else:
                assert profiles[customer][netmera_name] == value, (customer, netmera_name)

    # 3. A single-target event goes out through the continuous drainer (deferred in the triggerer when idle).
    target = known[0]
    started = time.monotonic()
    single = {
        "eventTypeId": 11,
        "timeStamp": utcnow().strftime(STAMP),
        "campaignId": 900_011,
        "channelId": CHANNEL,
        "customerID": target,
        "templateID": 2,
        "promoCode": "TOPO",
    }
    assert topo.post_event(single).status_code == 200
    got = wait_for("the single-target push", lambda: deliveries(topo, "102"), 180, interval=0.5)
    measured["single_target_s"] = time.monotonic() - started
    assert [(d["extId"], d["params"].get("promoCode")) for d in got] == [(target, "TOPO")]

    # 4. A bulk send, deferred to its scheduled time, loses its worker mid-send.
    box.admin.netmera.set_faults([{"endpoint": "/rest/3.0/sendNotification", "latency_ms": 1500}])
    scheduled = (utcnow() + dt.timedelta(seconds=20)).strftime(STAMP)
    created = box.admin.optimove.create_campaign(
        recipients=800, control_fraction=0.0, templates=[1], scheduled_time=scheduled
    )
    cid = created["campaign_id"]
    started = time.monotonic()
    assert topo.post_event(event_13(cid)).json()["status"] == "accepted"
    run_id = campaign_run_id(topo, cid)
    wait_for("the send task to defer", lambda: (send_ti(topo, run_id) or {}).get("state") == "deferred", 240)
    wait_for("two chunks to be delivered", lambda: len(deliveries(topo, "101")) >= 200, 240, interval=0.3)
    ti = send_ti(topo, run_id)
    assert ti is not None and ti["state"] == "running" and ti["pid"], ti
    victim = next((name for name in ("worker-1", "worker-2") if ti["pid"] in topo.tree_pids(name)), None)
    assert victim is not None, f"the send task (pid {ti['pid']}) runs under no worker of this deployment"
    first_try = ti["try_number"]
    topo.kill_worker(victim, task_pid=ti["pid"])
    killed_at = time.monotonic()
    topo.start_worker("worker-3")
    box.admin.netmera.clear_faults()

    def retried() -> bool:
        current = send_ti(topo, run_id) or {}
        return current.get("try_number", 0) > first_try and current.get("state") in ("running", "success")

    wait_for("the send task's next try", retried, HEARTBEAT_TIMEOUT_S * 12)
    measured["recovery_s"] = time.monotonic() - killed_at

    def settled() -> str | None:
        """``finished``, or ``asking`` once decide_unknown waits for a person (recipients with an unknown outcome)."""
        if topo.dag_run(SEND_DAG, run_id)["state"] in ("success", "failed"):
            return "finished"
        return "asking" if waiting_question(topo, SEND_DAG, run_id, "decide_unknown") else None

    asked = wait_for("the campaign to finish or ask about unknown outcomes", settled, 600, interval=2) == "asking"
    measured["campaign_s"] = time.monotonic() - started
    if asked:  # the operator accepts the unknown outcomes (Required Actions, through the REST API here)
        run, _ = answer_until_finished(topo, SEND_DAG, run_id, "decide_unknown", "Accept the outcome")
    else:
        run = topo.wait_run_finished(SEND_DAG, run_id, 600)

    rows = ledger(topo.state_url, cid)
    by_status = Counter(r["status"] for r in rows)
    unknown = {r["customer_id"] for r in rows if r["status"] == "unknown"}
    sent = {r["customer_id"] for r in rows if r["status"] == "sent"}
    assert len(rows) == 800 and set(by_status) <= {"sent", "unknown"}, by_status
    got = Counter(d["extId"] for d in deliveries(topo, "101"))
    assert not {k for k, n in got.items() if n > 1}, "a recipient got the campaign twice"
    expected = {r["customer_id"] for r in rows}
    assert set(got) <= expected
    assert sent <= set(got), "a recipient recorded sent is missing in Netmera"
    assert expected - set(got) <= unknown, "a recipient is missing without being reported unknown"
    assert len(unknown) <= IN_FLIGHT * CHUNK, "more recipients than were in flight have an unknown outcome"
    assert all(r["reason"] == ORPHAN_REASON for r in rows if r["status"] == "unknown")
    report = stored_report(topo.state_url, cid)
    assert report["unknown"] == len(unknown)
    assert report["statuses"].get("sent", 0) == len(sent)
    assert report["reasons"].get(f"unknown: {ORPHAN_REASON}", 0) == len(unknown)  # the report says what happened
    # a person is asked exactly when some outcome is unknown; the run is green once they accepted (or none was)
    assert asked == bool(unknown) and run["state"] == "success", run

    # 5. A bulk send cancelled while it waits for its scheduled time sends nothing.
    scheduled = (utcnow() + dt.timedelta(seconds=30)).strftime(STAMP)
    created = box.admin.optimove.create_campaign(
        recipients=300, control_fraction=0.0, templates=[3], scheduled_time=scheduled
    )
    cancelled = created["campaign_id"]
    assert topo.post_event(event_13(cancelled)).json()["status"] == "accepted"
    run_id = campaign_run_id(topo, cancelled)
    wait_for("the cancelled campaign to defer", lambda: (send_ti(topo, run_id) or {}).get("state") == "deferred", 240)
    box.admin.optimove.cancel_campaign(cancelled)
    cancel = {"eventTypeId": 4, "timeStamp": utcnow().strftime(STAMP), "campaignId": cancelled, "channelId": CHANNEL}
    assert topo.post_event(cancel).status_code == 200
    run = topo.wait_run_finished(SEND_DAG, run_id, 300)
    assert run["state"] == "success"
    assert deliveries(topo, "103") == []
    assert Counter(r["status"] for r in ledger(topo.state_url, cancelled)) == {"cancelled": 300}
    assert xcom(topo, SEND_DAG, run_id, "report")["outcome"] == "cancelled"

    figures.append(
        "celery topology: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in measured.items())
        + f"; after the kill: {len(unknown)} unknown (the chunks in flight), {len(sent)} sent, 0 duplicates"
    )
    topo.assert_alive()
