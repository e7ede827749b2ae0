"""Events for a channel or template that is not configured are held (never a silent 200) and sent once it is."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import events
from optimove_netmera.campaigns.state import cancel_status
from optimove_netmera.settings import load_settings
from optimove_netmera.store import Event, get_engine
from sends_helpers import configure, deliveries, expected_recipients, run_dag, task_states, utcnow, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

WEB_PUSH = 510  # a channel of the sandbox tenant that the default settings do not handle
STAMP = "%Y-%m-%d %H:%M:%S"


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch)
    return sandbox_reset


class FakeTrigger:
    """Records DAG runs instead of creating them in Airflow."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, dict[str, Any]]] = []

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **kwargs: Any) -> bool:
        self.runs.append((dag_id, run_id, conf))
        return True

    def has_run_on(self, dag_id: str, day: Any) -> bool:
        return False


def bulk(campaign_id: int, channel: int = WEB_PUSH, event_type: int = 13) -> dict[str, Any]:
    return {"eventTypeId": event_type, "timeStamp": utcnow().strftime(STAMP), "campaignId": campaign_id,
            "channelId": channel}  # fmt: skip


def row(db_url: str, event_id: int) -> Any:
    with get_engine(db_url).connect() as conn:
        return conn.execute(sa.select(Event).where(Event.id == event_id)).one()


def covering(channel: int = WEB_PUSH) -> Any:
    """The settings once the operator added ``channel``."""
    s = load_settings()
    return s.model_copy(
        update={"campaigns": s.campaigns.model_copy(update={"channels": [*s.campaigns.channels, channel]})}
    )


def test_a_held_event_is_stored_logged_as_an_error_and_answered_held(
    env: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine, trigger = get_engine(db_url), FakeTrigger()
    payload = bulk(5001)
    with caplog.at_level(logging.ERROR, logger="optimove_netmera"):
        result = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger)
    assert result.response_status == "held" and result.dispatch is None and trigger.runs == []
    stored = row(db_url, result.stored.event_id)
    assert stored.status == "held" and f"channel {WEB_PUSH} is not configured" in stored.note
    assert any(r.levelno == logging.ERROR and "NOT acted on" in r.getMessage() for r in caplog.records)

    # template 9 has no notificationKey: a single-target event for it is held too, not silently dropped later
    single = {**bulk(5001, channel=506, event_type=11), "customerID": "C0000001", "templateID": 9}
    held = events.ingest(engine, events.parse_event(single), raw=single, trigger=trigger)
    assert held.response_status == "held" and "template 9 has no notificationKey" in held.stored.note


def test_optimove_retrying_a_held_event_after_the_fix_starts_the_send(env: Any, db_url: str) -> None:
    engine, trigger = get_engine(db_url), FakeTrigger()
    payload = bulk(5002)
    first = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger)
    assert first.response_status == "held"
    again = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger)  # still not configured
    assert again.response_status == "held" and trigger.runs == []

    fixed = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger, settings=covering())
    assert fixed.released and fixed.response_status == "accepted"
    assert fixed.dispatch is not None and fixed.dispatch.status == "dispatched"
    run_id = events.campaign_run_id(5002, WEB_PUSH, events.parse_event(payload).event_time)
    assert [(d, r) for d, r, _ in trigger.runs] == [("optimove_campaign_send", run_id)]
    assert row(db_url, first.stored.event_id).status == "dispatched"
    duplicate = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger, settings=covering())
    assert duplicate.response_status == "duplicate" and len(trigger.runs) == 1  # once released, a repeat is a repeat


def test_the_cli_lists_held_events_and_redispatches_them_once_configured(env: Any, db_url: str) -> None:
    engine = get_engine(db_url)
    cancel = bulk(5003, event_type=4)
    held = events.ingest(engine, events.parse_event(cancel), raw=cancel)
    assert held.response_status == "held"

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env_vars = {**os.environ, "OPTIMOVE_NETMERA_STATE_DB_URL": db_url, **extra}
        return subprocess.run(
            [sys.executable, "-m", "optimove_netmera.campaigns", *args],
            env=env_vars, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    listed = cli("held")
    assert listed.returncode == 0, listed.stderr
    assert f"event {held.stored.event_id}: type 4, campaign 5003, channel {WEB_PUSH}" in listed.stdout
    still = cli("redispatch")  # nothing changed in the settings: it stays held
    assert json.loads(still.stdout.strip().splitlines()[-1])["still_held"] == [held.stored.event_id]
    assert not cancel_status(engine, 5003, WEB_PUSH).cancelled

    done = cli("redispatch", OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS=f"[506, 459, 481, {WEB_PUSH}]")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["dispatched"] == [held.stored.event_id]
    assert row(db_url, held.stored.event_id).status == "dispatched"
    assert cancel_status(engine, 5003, WEB_PUSH).cancelled


def test_a_held_campaign_is_sent_after_the_fix_by_the_reconcile_param(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the event is held, the operator configures the channel and re-dispatches; everyone gets it."""
    box = env
    cid = box.admin.optimove.create_campaign(channel_id=WEB_PUSH, recipients=60, control_fraction=0.0,
                                             templates=[1])["campaign_id"]  # fmt: skip
    payload = bulk(cid)
    held = events.ingest(get_engine(db_url), events.parse_event(payload), raw=payload)
    assert held.response_status == "held"

    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS", f"[506, {WEB_PUSH}]")  # the fix
    today = utcnow().date().isoformat()
    dr = run_dag("optimove_campaign_reconcile", {"day": today, "redispatch_held": True})
    assert dr.state == "success", task_states(dr)
    counts = xcom(dr, "reconcile")
    assert counts["held"]["dispatched"] == [held.stored.event_id]
    assert counts["created"] == 0  # the released event's run announces the campaign: no second event
    stored = row(db_url, held.stored.event_id)
    assert stored.status == "dispatched" and stored.dag_run_id

    expected = expected_recipients(box, cid, channel_id=WEB_PUSH)
    conf = events.campaign_conf(cid, WEB_PUSH, events.parse_event(payload).event_time, stored.id, "webhook")
    sent = run_dag("optimove_campaign_send", conf)  # the run the re-dispatch created
    assert sent.state == "success", task_states(sent)
    got = [d["extId"] for d in deliveries(box)]
    assert sorted(got) == sorted(expected["sendable"]) and len(got) == len(set(got))


def test_reconcile_starts_a_campaign_whose_only_event_is_held(env: Any, db_url: str) -> None:
    """A held (or ignored, or failed) event is no announcement: once the channel is configured, reconcile starts it."""
    box = env
    cid = box.admin.optimove.create_campaign(channel_id=WEB_PUSH, recipients=10, control_fraction=0.0,
                                             templates=[1])["campaign_id"]  # fmt: skip
    payload = bulk(cid)
    engine = get_engine(db_url)
    assert events.ingest(engine, events.parse_event(payload), raw=payload).response_status == "held"
    from optimove_netmera.campaigns import reconcile
    from sends_helpers import optimove_client

    trigger = FakeTrigger()
    counts = reconcile.reconcile_day(engine, optimove_client(box), covering(), utcnow().date(), trigger=trigger)
    assert counts["created"] == 1
    assert [r for _, r, _ in trigger.runs] == [f"optimove_c{cid}_ch{WEB_PUSH}_{utcnow():%Y%m%d}T000000"]
