"""``optimove_realtime_send``: queued events 11 drained in micro-batches (real DAG runs, HTTP, SQLite + PostgreSQL).

Also prints the latency from event receipt (``events.received_at``) to the start of its Netmera request (a figure,
not an assertion: speed is measured by the benchmarks).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import events, realtime, state
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import get_settings
from optimove_netmera.store import Event, get_engine
from sends_helpers import CHANNEL, configure, deliveries, run_dag, send_requests, task_states, utcnow, xcom

DAG_ID = "optimove_realtime_send"
CAMPAIGN = 7001

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch, chunk_size=100)
    return sandbox_reset


def queue(
    db_url: str,
    customers: list[str],
    *,
    template: int = 1,
    campaign: int = CAMPAIGN,
    promo: str = "P1",
    expected: str = "queued",
) -> None:
    """Store events 11 exactly as the endpoint does (status queued)."""
    engine = get_engine(db_url)
    stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S")
    for customer in customers:
        payload = {
            "eventTypeId": 11,
            "timeStamp": stamp,
            "campaignId": campaign,
            "channelId": CHANNEL,
            "customerID": customer,
            "templateID": template,
            "promoCode": promo,
        }
        stored = events.store_event(engine, events.parse_event(payload), raw=payload)
        assert stored.created and stored.status == expected


def event_rows(db_url: str) -> dict[str, Any]:
    with get_engine(db_url).connect() as conn:
        return {r.customer_id: r for r in conn.execute(sa.select(Event).where(Event.event_type_id == 11))}


def drain_run(**conf: Any) -> Any:
    return run_dag(DAG_ID, {"run_seconds": 0, "idle_seconds": 0, **conf})


def customers(n: int, start: int = 1) -> list[str]:
    return [f"C{i:07d}" for i in range(start, start + n)]


def test_several_queued_events_go_out_in_one_request_of_one_run(env: Any, db_url: str) -> None:
    box = env
    ok = customers(8)
    box.admin.netmera.add_users(ok)
    queue(db_url, ok)
    queue(db_url, customers(1, 50), template=9, expected="held")  # no notificationKey mapped: held at the door
    queue(db_url, customers(1, 60), campaign=CAMPAIGN + 1)  # its campaign is cancelled
    state.mark_cancelled(get_engine(db_url), CAMPAIGN + 1, None, utcnow(), "webhook")

    dr = drain_run()
    assert dr.state == "success", task_states(dr)
    assert send_requests(box) == 1  # one micro-batch, one sendNotification request
    got = {d["extId"]: d for d in deliveries(box)}
    assert set(got) == set(ok)
    assert all(d["params"] == {"promoCode": "P1"} and d["notificationKey"] == "101" for d in got.values())
    rows = event_rows(db_url)
    assert {rows[c].status for c in ok} == {"sent"}
    assert rows["C0000050"].status == "held" and "template 9 has no notificationKey" in rows["C0000050"].note
    assert rows["C0000060"].status == "cancelled"
    summary = xcom(dr, "drain")
    assert summary["sent"] == 8 and summary["batches"] == 1 and summary["requests"] == 1
    assert summary["latency_p95_s"] is not None

    again = drain_run()  # nothing left: nothing sent twice
    assert again.state == "success" and send_requests(box) == 1


def test_single_target_unknown_ext_id_is_skipped_not_retried(env: Any, db_url: str) -> None:
    box = env
    box.admin.netmera.remove_users(["C0000009"])
    queue(db_url, ["C0000009"])
    dr = drain_run()
    assert dr.state == "success", task_states(dr)
    row = event_rows(db_url)["C0000009"]
    assert row.status == "ignored" and row.note == "skipped: unknown extId (Netmera 5016)"
    assert send_requests(box, "400") == 1


def test_events_in_flight_when_a_drainer_died_are_unknown_until_resend(env: Any, db_url: str) -> None:
    box = env
    box.admin.netmera.add_users(customers(3))
    queue(db_url, customers(3))
    table = Event.__table__
    with get_engine(db_url).begin() as conn:  # a drainer claimed them and died
        conn.execute(
            sa.update(table)
            .where(table.c.event_type_id == 11)
            .values(status="processing", updated_at=utcnow() - dt.timedelta(hours=1))
        )
    dr = drain_run()
    assert dr.state == "success", task_states(dr)
    assert {r.status for r in event_rows(db_url).values()} == {"failed"}
    assert all(r.note.startswith(realtime.UNKNOWN_NOTE) for r in event_rows(db_url).values())
    assert send_requests(box) == 0 and xcom(dr, "drain")["recovered_unknown"] == 3

    resent = drain_run(resend_unknown=True)
    assert resent.state == "success", task_states(resent)
    assert {r.status for r in event_rows(db_url).values()} == {"sent"}
    assert len(deliveries(box)) == 3


def test_idle_drainer_defers_and_resumes_when_events_arrive(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run: a first burst drained in the worker, then idle -> deferred -> resumed for the second burst.

    The second burst is queued right after the first drain pass went idle (a hook on ``realtime.drain``), so it
    arrives while the task defers, whatever the machine's speed: never a fixed sleep racing the drainer.
    """
    box = env
    first, second = customers(5, 100), customers(5, 200)
    box.admin.netmera.add_users(first + second)
    queue(db_url, first)
    passes: list[Any] = []
    original = realtime.drain

    def drain_then_feed(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        passes.append(out)
        if len(passes) == 1:
            assert {event_rows(db_url)[c].status for c in first} == {"sent"}  # the first burst went out first
            queue(db_url, second)
        return out

    monkeypatch.setattr(realtime, "drain", drain_then_feed)
    dr = run_dag(DAG_ID, {"run_seconds": 8, "idle_seconds": 0.5, "poll_seconds": 0.1})
    assert dr.state == "success", task_states(dr)
    assert {r.status for r in event_rows(db_url).values()} == {"sent"}
    summary = xcom(dr, "drain")
    assert summary["sent"] == 10 and summary["requests"] == 2
    assert len(passes) >= 2  # drained, deferred, resumed and drained again in one run


def test_events_arriving_one_by_one_go_out_in_micro_batches(env: Any, db_url: str, figures: list[str]) -> None:
    """A drainer polling every 0.1 s while events arrive one by one: sent while they keep arriving, in batches.

    The first 30 events must be delivered while the drainer is still running (it is not waiting for the queue to
    go quiet: its idle timeout is 5 s) before the next 30 arrive, so there are at least two requests; fewer
    requests than events means micro-batches. Waits are on conditions with generous deadlines; the latency
    figures are printed in the run summary (speed is a benchmark, tests/perf/bench_campaign.py).
    """
    box = env
    ids = customers(60, 300)
    box.admin.netmera.add_users(ids)
    settings = get_settings()
    engine = get_engine(db_url)
    netmera = NetmeraClient(box.netmera_url, box.netmera_api_key)
    result: dict[str, Any] = {}

    def drainer() -> None:
        result["out"] = realtime.drain(
            engine, netmera, settings, until=time.monotonic() + 120, idle_seconds=5, poll_seconds=0.1
        )

    thread = threading.Thread(target=drainer, daemon=True)
    thread.start()
    for half in (ids[:30], ids[30:]):
        for customer in half:  # about 30 events per second, one at a time
            queue(db_url, [customer])
            time.sleep(0.033)
        deadline = time.monotonic() + 60
        while len(deliveries(box)) < ids.index(half[-1]) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    thread.join(timeout=120)
    out: realtime.DrainOutcome = result["out"]
    summary = out.summary()
    figures.append(
        f"realtime latency ({engine.dialect.name}): {summary['sent']} events in {summary['requests']} requests, "
        f"p50 {summary['latency_p50_s'] * 1000:.0f} ms, p95 {summary['latency_p95_s'] * 1000:.0f} ms, "
        f"max {summary['latency_max_s'] * 1000:.0f} ms"
    )
    assert summary["sent"] == 60
    assert 2 <= summary["requests"] < 60  # sent while events arrive, in micro-batches, not one per event
    assert sorted(d["extId"] for d in deliveries(box)) == ids


def test_a_refused_event_does_not_sink_its_micro_batch(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Template 8 maps to a notificationKey Netmera does not have (400 code 5003): only that event fails."""
    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__TEMPLATES", '{1: "101", 2: "102", 8: "999"}')
    good = customers(4, 400)
    box.admin.netmera.add_users([*good, "C0000500"])
    queue(db_url, good)
    queue(db_url, ["C0000500"], template=8)
    dr = drain_run()
    assert dr.state == "success", task_states(dr)
    rows = event_rows(db_url)
    assert {rows[c].status for c in good} == {"sent"}
    assert rows["C0000500"].status == "failed" and "5003" in rows["C0000500"].note
    assert {d["extId"] for d in deliveries(box)} == set(good)


def test_single_target_events_get_the_configured_ext_id(env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ext_id prefix + suffix + case on the realtime path: Netmera receives ``RT-C0000042_rt`` for ``c0000042``."""
    box = env
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__PREFIX", "RT-")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__SUFFIX", "_rt")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__CASE", "upper")
    box.admin.netmera.add_users(["RT-C0000042_rt", "RT-C0000043_rt"])
    queue(db_url, ["c0000042", "c0000043"])
    dr = drain_run()
    assert dr.state == "success", task_states(dr)
    assert sorted(d["extId"] for d in deliveries(box)) == ["RT-C0000042_rt", "RT-C0000043_rt"]
    assert {r.status for r in event_rows(db_url).values()} == {"sent"}
