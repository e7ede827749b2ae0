"""``optimove_campaign_reconcile``: a campaign whose webhook was dropped is found and started (real runs, HTTP)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import events
from optimove_netmera.store import Event, get_engine
from sends_helpers import CHANNEL, configure, deliveries, expected_recipients, run_dag, task_states, utcnow, xcom

DAG_ID = "optimove_campaign_reconcile"
SEND_DAG_ID = "optimove_campaign_send"

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch)
    return sandbox_reset


def send_runs(run_id: str) -> list[Any]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(sa.select(DagRun).where(DagRun.dag_id == SEND_DAG_ID, DagRun.run_id == run_id)).all()
        return [(r.run_id, dict(r.conf or {}), str(r.state)) for r in runs]


def bulk_events(db_url: str, campaign_id: int) -> list[Any]:
    with get_engine(db_url).connect() as conn:
        return conn.execute(
            sa.select(Event).where(Event.campaign_id == campaign_id, Event.event_type_id == 13).order_by(Event.id)
        ).all()


def test_dropped_webhook_is_reconciled_into_an_event_and_a_run(env: Any, db_url: str) -> None:
    box = env
    today = utcnow().date()
    dropped = box.admin.optimove.create_campaign(recipients=80, control_fraction=0.1, templates=[1])["campaign_id"]
    announced = box.admin.optimove.create_campaign(recipients=20, control_fraction=0.0, templates=[1])["campaign_id"]
    payload = {"eventTypeId": 13, "timeStamp": utcnow().strftime("%Y-%m-%d %H:%M:%S"), "campaignId": announced}
    payload["channelId"] = CHANNEL
    events.store_event(get_engine(db_url), events.parse_event(payload), raw=payload)  # its webhook did arrive

    dr = run_dag(DAG_ID, {"day": today.isoformat()})
    assert dr.state == "success", task_states(dr)
    counts = xcom(dr, "reconcile")
    assert counts["created"] == 1 and counts["announced"] >= 1

    stored = bulk_events(db_url, dropped)
    assert len(stored) == 1 and stored[0].source == "reconcile" and stored[0].status == "dispatched"
    run_id = f"optimove_c{dropped}_ch{CHANNEL}_{today:%Y%m%d}T000000"
    assert stored[0].dag_run_id == run_id and counts["runs"] == [run_id]
    runs = send_runs(run_id)
    assert len(runs) == 1
    conf = runs[0][1]
    assert conf == {
        "campaign_id": dropped,
        "channel_id": CHANNEL,
        "event_time": f"{today.isoformat()} 00:00:00",
        "event_id": stored[0].id,
        "source": "reconcile",
    }
    assert len(bulk_events(db_url, announced)) == 1  # the announced one got no second event

    again = run_dag(DAG_ID, {"day": today.isoformat()})  # hourly: the next run finds nothing new
    assert again.state == "success", task_states(again)
    assert xcom(again, "reconcile")["created"] == 0
    assert len(bulk_events(db_url, dropped)) == 1 and len(send_runs(run_id)) == 1

    expected = expected_recipients(box, dropped)
    sent = run_dag(SEND_DAG_ID, conf)  # the reconciled run's work
    assert sent.state == "success", task_states(sent)
    assert {d["extId"] for d in deliveries(box)} == set(expected["sendable"])


def test_stored_but_undispatched_event_is_dispatched_again(env: Any, db_url: str) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=10, control_fraction=0.0, templates=[1], date="2026-01-05")[
        "campaign_id"
    ]
    stamp = "2026-01-05 08:30:00"
    payload = {"eventTypeId": 13, "timeStamp": stamp, "campaignId": cid, "channelId": CHANNEL}
    engine = get_engine(db_url)
    stored = events.store_event(engine, events.parse_event(payload), raw=payload)  # stored; dispatch never ran
    table = Event.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.update(table).where(table.c.id == stored.event_id).values(received_at=utcnow() - dt.timedelta(minutes=5))
        )

    dr = run_dag(DAG_ID, {"day": utcnow().date().isoformat()})
    assert dr.state == "success", task_states(dr)
    assert xcom(dr, "reconcile")["redispatched"]["dispatched"] == 1
    row = bulk_events(db_url, cid)[0]
    assert row.status == "dispatched" and row.dag_run_id == f"optimove_c{cid}_ch{CHANNEL}_20260105T083000"
    assert len(send_runs(row.dag_run_id)) == 1
