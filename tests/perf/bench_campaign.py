"""Benchmark of the bulk campaign send (run: ``python tests/perf/bench_campaign.py``; not collected by pytest).

On the embedded default (the sandbox as a subprocess, the SQLite state database in a fresh AIRFLOW_HOME, the
``optimove_campaign_send`` DAG run with ``dag.test()``, i.e. every task in this one process, mapped tasks one
after another):

1. a campaign of ``--recipients`` (100,000) recipients on two templates, scheduled ``--lead`` seconds after its
   event 13: wall time from the event being stored to the start and the end of the last Netmera request, the
   send phase's recipients per second, the Netmera requests (expected: ceil(n / 1000) per template group),
   and how long after the scheduled time the last request finished (target <= 60 s);
2. the same size again, cancelled (``mark_cancelled``, what event 4 does) once ``--cancel-after`` recipients are
   sent: cancellation latency = start of the last request minus the moment the cancel was stored (<= 0 means no
   request started after it; target <= 1 s), the time until the sender had stopped, and the requests after it;
3. single-target sends: ``--events`` events 11 queued at ``--event-rate`` per second while a drainer polls the
   queue: p50/p95 from ``events.received_at`` to the start of the Netmera request.

Then the machine.

``--scale [100000,1000000]`` prints the scale curve instead: each size in a fresh subprocess (its own sandbox,
AIRFLOW_HOME and SQLite state database; the process that runs the DAG is the one whose peak RSS is reported), a
campaign staged ahead of its scheduled time (``--lead``, default 20 s + 130 s per million recipients). Per size:
staging wall time, Optimove pages and their rate against Optimove's ceiling of 5 requests/s (50 per 10 s), the
send phase's recipients/s and its ratio to the floor, scheduled time -> end of the last request, and the peak RSS
(whole run, and during staging, planning and sending). The floor is measured in the same subprocess right after
the run: the first 1000 sent recipients' request objects (rendered as the sender renders them, one request of
1000 recipients) sent one request at a time (as one send task does) to a bare local HTTP peer
(``tests/perf/floor.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from floor import bare_peer, peer_rate  # tests/perf/floor.py (the script's own folder is on sys.path)
from machine import machine, machine_line  # tests/perf/machine.py
from optimove_netmera.sandbox import process
from optimove_netmera.sandbox.process import SandboxProcess

REPO = Path(__file__).resolve().parents[2]
HOME = Path(tempfile.mkdtemp(prefix="bench-campaign-airflow-"))
# Airflow reads its configuration at import time: isolate it before anything imports airflow.
os.environ["AIRFLOW_HOME"] = str(HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ["OPTIMOVE_NETMERA__SYNC__RETRIES"] = "0"

CHANNEL = 506
SEND = "POST /rest/3.0/sendNotification"
PAGE = "GET /current/customers/GetCustomerExecutionDetailsByCampaign"
CEILING = 5.0  # Optimove's general limit: 50 requests per 10 s


class Box(SandboxProcess):
    """The sandbox subprocess, with the benchmark's one counter."""

    def send_requests(self) -> int:
        return self.admin.netmera.requests()["counts"].get(SEND, {}).get("200", 0)


def start_box(customers: int, timeout: float = 300.0) -> Box:
    box = process.start_sandbox(customers, log_path=HOME / "sandbox.log", timeout=timeout)
    return Box(**{f.name: getattr(box, f.name) for f in dataclasses.fields(box)})


def configure(box: Box, state_db_url: str | None) -> None:
    os.environ["AIRFLOW_CONN_OPTIMOVE_DEFAULT"] = json.dumps(
        {"conn_type": "optimove", "host": box.optimove_url, "extra": {"api_key": box.optimove_api_key}}
    )
    os.environ["AIRFLOW_CONN_NETMERA_DEFAULT"] = json.dumps(
        {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key}
    )
    if state_db_url:
        os.environ["OPTIMOVE_NETMERA_STATE_DB_URL"] = state_db_url
    else:
        os.environ.pop("OPTIMOVE_NETMERA_STATE_DB_URL", None)  # the embedded default: SQLite in AIRFLOW_HOME
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class RecordingTrigger:
    """A DagTrigger that records the run the endpoint would create (the bench runs its work with dag.test)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, dict[str, Any]]] = []

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **_: Any) -> bool:
        self.runs.append((run_id, conf))
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return False


def send_dag() -> Any:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "optimove_campaign_send.py"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag("optimove_campaign_send")


def event_13(engine: Any, campaign_id: int) -> tuple[float, dict[str, Any]]:
    """Store and dispatch an event 13 the way the endpoint does; (wall time it was stored, the run's conf)."""
    from optimove_netmera.campaigns import events

    payload = {"eventTypeId": 13, "timeStamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")}
    payload |= {"campaignId": campaign_id, "channelId": CHANNEL}
    trigger = RecordingTrigger()
    result = events.ingest(engine, events.parse_event(payload), raw=payload, trigger=trigger)
    stored = time.time()
    if result.dispatch is None or not trigger.runs:
        raise SystemExit(f"event not dispatched: {result}")
    return stored, trigger.runs[0][1]


def ledger_times(engine: Any, campaign_id: int) -> dict[str, Any]:
    """Per status counts; first/last request start (sent_at) of the sent recipients and end (updated_at) of their
    chunks' outcomes."""
    import sqlalchemy as sa
    from optimove_netmera.campaigns.recipients import ledger
    from optimove_netmera.store import SendChunk

    r, k = ledger(), SendChunk.__table__
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.select(r.c.status, sa.func.count()).where(r.c.campaign_id == campaign_id).group_by(r.c.status)
            ).all()
        )
        first, last = conn.execute(
            sa.select(sa.func.min(r.c.sent_at), sa.func.max(r.c.sent_at)).where(
                r.c.campaign_id == campaign_id, r.c.status == "sent"
            )
        ).one()
        end = conn.execute(
            sa.select(sa.func.max(k.c.updated_at)).where(k.c.campaign_id == campaign_id, k.c.status == "sent")
        ).scalar()
        groups = conn.execute(
            sa.select(r.c.template_id, sa.func.count())
            .where(r.c.campaign_id == campaign_id, r.c.status == "sent")
            .group_by(r.c.template_id)
        ).all()
    conv = r.c.sent_at.type.process_result_value
    return {
        "counts": counts,
        "first_start": conv(first, engine.dialect),
        "last_start": conv(last, engine.dialect),
        "last_end": conv(end, engine.dialect),
        "groups": {int(t): int(n) for t, n in groups},
    }


def scheduled_campaign(box: Box, n: int, lead: float) -> tuple[int, dt.datetime]:
    """A campaign of ``n`` recipients on two templates (5% control group), scheduled ``lead`` s from now."""
    scheduled = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)).replace(microsecond=0)
    created = box.admin.optimove.create_campaign(
        campaign_id=900_001,
        recipients=n,
        control_fraction=0.05,
        templates=[1, 2],
        scheduled_time=scheduled.strftime("%Y-%m-%d %H:%M:%S"),
    )
    return created["campaign_id"], scheduled


def bench_send(box: Box, engine: Any, n: int, lead: float) -> dict[str, Any]:
    cid, scheduled = scheduled_campaign(box, n, lead)
    before = box.send_requests()
    event_at, conf = event_13(engine, cid)
    dag = send_dag()
    dr = dag.test(run_conf=conf)
    t = ledger_times(engine, cid)
    requests = box.send_requests() - before
    expected = sum(math.ceil(k / 1000) for k in t["groups"].values())
    send_seconds = (t["last_end"] - t["first_start"]).total_seconds()
    sent = t["counts"].get("sent", 0)
    return {
        "run state": str(dr.state),
        "recipients (rows, incl. control group)": n,
        "ledger": t["counts"],
        "event -> start of last request": f"{t['last_start'].timestamp() - event_at:.1f} s",
        "event -> end of last request": f"{t['last_end'].timestamp() - event_at:.1f} s",
        "scheduled time -> end of last request": f"{(t['last_end'] - scheduled).total_seconds():.1f} s (target <= 60)",
        "scheduled time -> first request": f"{(t['first_start'] - scheduled).total_seconds():.2f} s",
        "send phase": f"{send_seconds:.2f} s, {sent / send_seconds:,.0f} recipients/s" if send_seconds > 0 else "n/a",
        "Netmera requests": f"{requests} (expected ceil(n/1000) per template group: {expected})",
    }


def bench_cancel(box: Box, engine: Any, n: int, cancel_after: int) -> dict[str, Any]:
    import sqlalchemy as sa
    from optimove_netmera.campaigns import state
    from optimove_netmera.campaigns.recipients import ledger

    created = box.admin.optimove.create_campaign(
        campaign_id=900_002, recipients=n, control_fraction=0.05, templates=[1, 2]
    )
    cid = created["campaign_id"]
    _, conf = event_13(engine, cid)
    cancel_after = min(cancel_after, n // 5)
    stored: dict[str, float] = {}
    r = ledger()

    def canceller() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                sent = conn.scalar(
                    sa.select(sa.func.count()).where(r.c.campaign_id == cid, r.c.status.in_(["sent", "in_flight"]))
                )
            if sent >= cancel_after:
                break
            time.sleep(0.01)
        while time.monotonic() < deadline:  # cancel while a request is in flight: the hardest moment
            with engine.connect() as conn:
                if conn.scalar(sa.select(sa.func.count()).where(r.c.campaign_id == cid, r.c.status == "in_flight")):
                    break
            time.sleep(0.001)
        state.mark_cancelled(engine, cid, None, dt.datetime.now(dt.UTC), "webhook")
        stored["at"] = time.time()

    thread = threading.Thread(target=canceller, daemon=True)
    thread.start()
    dr = send_dag().test(run_conf=conf)
    thread.join(timeout=60)
    t = ledger_times(engine, cid)
    cancel_at = stored["at"]
    with engine.connect() as conn:
        after = conn.scalar(
            sa.select(sa.func.count(sa.distinct(r.c.request_id))).where(
                r.c.campaign_id == cid,
                r.c.status == "sent",
                r.c.sent_at > dt.datetime.fromtimestamp(cancel_at, dt.UTC),
            )
        )
    seen = [o["cancel_seen_at"] for o in send_outcomes(dr) if o.get("cancel_seen_at")]
    stopped = min(dt.datetime.fromisoformat(x).timestamp() for x in seen) - cancel_at if seen else None
    return {
        "run state": str(dr.state),
        "ledger": t["counts"],
        "cancel stored": f"while a request was in flight, after >= {cancel_after:,} recipients were claimed",
        "cancel stored -> sender saw it and stopped": f"{stopped:+.3f} s" if stopped is not None else "n/a",
        "cancellation latency (start of last request - cancel stored)": (
            f"{t['last_start'].timestamp() - cancel_at:+.3f} s (<= 0: none started after the cancel; target <= 1 s)"
        ),
        "cancel stored -> end of last request": f"{t['last_end'].timestamp() - cancel_at:+.3f} s",
        "requests started after the cancel": after,
    }


def bench_realtime(box: Box, engine: Any, count: int, rate: float) -> dict[str, Any]:
    from optimove_netmera.campaigns import events, realtime
    from optimove_netmera.netmera import NetmeraClient
    from optimove_netmera.settings import get_settings

    ids = [f"C{i:07d}" for i in range(1, count + 1)]
    box.admin.netmera.add_users(ids)
    netmera = NetmeraClient(box.netmera_url, box.netmera_api_key)
    settings = get_settings()
    result: dict[str, Any] = {}

    def drainer() -> None:
        until = time.monotonic() + count / rate + 10
        result["out"] = realtime.drain(engine, netmera, settings, until=until, idle_seconds=3, poll_seconds=0.2)

    thread = threading.Thread(target=drainer, daemon=True)
    thread.start()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    for customer in ids:
        payload = {"eventTypeId": 11, "timeStamp": stamp, "campaignId": 9001, "channelId": CHANNEL}
        payload |= {"customerID": customer, "templateID": 1, "promoCode": "RT"}
        events.store_event(engine, events.parse_event(payload), raw=payload)
        time.sleep(1 / rate)
    thread.join(timeout=120)
    s = result["out"].summary()
    return {
        "events": f"{count} at {rate:.0f}/s, drainer polling every 0.2 s",
        "sent": s["sent"],
        "requests (micro-batches)": s["requests"],
        "receipt -> request p50": f"{s['latency_p50_s'] * 1000:.0f} ms",
        "receipt -> request p95": f"{s['latency_p95_s'] * 1000:.0f} ms",
        "receipt -> request max": f"{s['latency_max_s'] * 1000:.0f} ms",
    }


def send_outcomes(dr: Any) -> list[dict[str, Any]]:
    """The send tasks' return values (counts and timings) of a dag.test() run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dr.run_id, key="return_value", task_ids="send", dag_ids=dr.dag_id)
        ).all()
        return [v for v in (XComModel.deserialize_value(r) for r in rows) if isinstance(v, dict)]


def show(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


class RssSampler:
    """This process's resident set size every ``interval`` seconds (peaks per phase, from the task times)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        with open("/proc/self/statm", "rb") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                self.samples.append((time.time(), int(statm.read().split()[1]) * self._page))
                self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: dt.datetime | None, end: dt.datetime | None) -> int:
        if start is None or end is None:
            return 0
        a, b = start.timestamp(), end.timestamp()
        return max((rss for t, rss in self.samples if a <= t <= b), default=0)


def task_windows(dr: Any) -> dict[str, tuple[dt.datetime | None, dt.datetime | None]]:
    """Start and end of each task of a dag.test() run (mapped tasks: first start to last end)."""
    out: dict[str, tuple[Any, Any]] = {}
    for ti in dr.get_task_instances():
        start, end = out.get(ti.task_id, (None, None))
        if ti.start_date is not None:
            start = ti.start_date if start is None else min(start, ti.start_date)
        if ti.end_date is not None:
            end = ti.end_date if end is None else max(end, ti.end_date)
        out[ti.task_id] = (start, end)
    return out


def xcom(dr: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dr.run_id, key="return_value", task_ids=task_id, dag_ids=dr.dag_id)
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


def send_floor(engine: Any, campaign_id: int, requests: int) -> float:
    """Recipients/s one NetmeraClient sends to a bare local HTTP peer: the campaign's first 1000 sent recipients'
    request objects (rendered as the sender renders them) in one request, ``requests`` times, one at a time."""
    import sqlalchemy as sa
    from optimove_netmera.campaigns import personalise
    from optimove_netmera.campaigns.recipients import ledger
    from optimove_netmera.netmera import NetmeraClient

    r = ledger()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.notification_key, r.c.ext_id, r.c.params)
            .where(r.c.campaign_id == campaign_id, r.c.status == "sent")
            .order_by(r.c.id)
            .limit(1000)
        ).all()
    bodies = [personalise.request_object(k, e, p) for k, e, p in rows]
    with bare_peer() as url:
        client = NetmeraClient(url, "bench")
        return peer_rate(lambda: client.send_notification(bodies), requests)


def scale_one(n: int, lead: float, floor_requests: int) -> dict[str, Any]:
    """One size of the curve, in this (fresh) process: a staged-ahead campaign of ``n`` recipients, sent."""
    load_before = os.getloadavg()
    box = start_box(n, timeout=1800)
    try:
        configure(box, None)
        from optimove_netmera.settings import get_settings
        from optimove_netmera.store import get_engine, migrate

        url = get_settings().resolved_state_db_url()
        migrate(url)
        engine = get_engine(url)
        dag = send_dag()
        cid, scheduled = scheduled_campaign(box, n, lead)
        _, conf = event_13(engine, cid)
        sampler = RssSampler()
        dr = dag.test(run_conf=conf)
        sampler.stop()
        windows = task_windows(dr)
        staged = xcom(dr, "stage_recipients") or {}
        t = ledger_times(engine, cid)
        pages = box.admin.optimove.requests()["counts"].get(PAGE, {})
        requests = box.send_requests()
        floor = send_floor(engine, cid, floor_requests)
    finally:
        box.stop()
    sent = t["counts"].get("sent", 0)
    send_seconds = (t["last_end"] - t["first_start"]).total_seconds()
    plan_end = windows.get("plan", (None, None))[1]
    return {
        "recipients": n,
        "run_state": str(dr.state),
        "ledger": t["counts"],
        "lead_s": lead,
        "stage_s": staged.get("seconds"),
        "fetched": staged.get("fetched"),
        "pages": staged.get("pages"),
        "page_requests": pages,
        "throttle_s": staged.get("optimove_throttle_seconds"),
        "stage_task_s": _span(windows.get("stage_recipients")),
        "plan_task_s": _span(windows.get("plan")),
        "staged_ahead_s": (scheduled - plan_end).total_seconds() if plan_end else None,
        "sent": sent,
        "send_s": send_seconds,
        "send_rate": sent / send_seconds if send_seconds > 0 else 0.0,
        "scheduled_to_first_s": (t["first_start"] - scheduled).total_seconds(),
        "scheduled_to_last_end_s": (t["last_end"] - scheduled).total_seconds(),
        "requests": requests,
        "expected_requests": sum(math.ceil(k / 1000) for k in t["groups"].values()),
        "floor": floor,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_stage": sampler.peak(*windows.get("stage_recipients", (None, None))),
        "peak_rss_plan": sampler.peak(*windows.get("plan", (None, None))),
        "peak_rss_send": sampler.peak(*windows.get("send", (None, None))),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def _span(window: tuple[dt.datetime | None, dt.datetime | None] | None) -> float | None:
    if not window or window[0] is None or window[1] is None:
        return None
    return (window[1] - window[0]).total_seconds()


def scale(sizes: list[int], lead: float | None, floor_requests: int) -> None:
    """The curve: each size in a fresh subprocess (``--scale-one``), then one table."""
    listed = ", ".join(f"{n:,}" for n in sizes)
    print(f"# campaign send scale curve: {listed} recipients (5% control group, 2 templates)")
    print(f"# machine: {machine_line()}")
    rows = []
    for n in sizes:
        lead_n = lead if lead is not None else round(20 + 130 * n / 1_000_000)
        out = Path(tempfile.mkstemp(prefix="bench-campaign-scale-", suffix=".json")[1])
        cmd = [sys.executable, __file__, "--scale-one", str(n), "--lead", str(lead_n)]
        cmd += ["--floor-requests", str(floor_requests), "--out", str(out)]
        print(f"\n## {n:,} recipients (scheduled {lead_n:.0f} s after the event; fresh process) ...", flush=True)
        subprocess.run(cmd, check=True)
        o = json.loads(out.read_text())
        out.unlink()
        rows.append(o)
        show_one(o)
    print("\n## scale curve (staged ahead; SQLite state DB; dag.test: mapped send tasks one after another)")
    head = (
        f"{'recipients':>10} {'stage s':>8} {'pages':>6} {'pages/s':>8} {'of 5/s':>7} {'plan s':>7} {'ahead s':>8} "
        f"{'send rcpt/s':>12} {'floor/s':>9} {'of floor':>9} {'sched->last s':>14} {'peak RSS MiB':>13} "
        f"{'(staging)':>10}"
    )
    print(head)
    for o in rows:
        rate = o["pages"] / o["stage_s"] if o["stage_s"] else 0.0
        print(
            f"{o['recipients']:>10,} {o['stage_s']:>8.1f} {o['pages']:>6} {rate:>8.2f} {rate / CEILING:>7.0%} "
            f"{o['plan_task_s'] or 0:>7.1f} {o['staged_ahead_s'] or 0:>8.1f} {o['send_rate']:>12,.0f} "
            f"{o['floor']:>9,.0f} {o['send_rate'] / o['floor']:>9.0%} {o['scheduled_to_last_end_s']:>14.1f} "
            f"{o['peak_rss'] / 2**20:>13.0f} {o['peak_rss_stage'] / 2**20:>10.0f}"
        )
    print(f"# load average after the curve: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")


def show_one(o: dict[str, Any]) -> None:
    rate = o["pages"] / o["stage_s"] if o["stage_s"] else 0.0
    mib = 2**20
    show(
        f"{o['recipients']:,} recipients: {o['run_state']}",
        {
            "ledger": o["ledger"],
            "staging (stage_recipients)": (
                f"{o['stage_s']:.1f} s for {o['fetched']:,} rows in {o['pages']} pages: {rate:.2f} pages/s = "
                f"{rate / CEILING:.0%} of Optimove's 5 requests/s; waited for the rate limiter "
                f"{o['throttle_s']:.1f} s; the sandbox answered {o['page_requests']}"
            ),
            "stage task / plan task": f"{o['stage_task_s']:.1f} s / {o['plan_task_s']:.1f} s",
            "staged ahead": (
                f"plan done {o['staged_ahead_s']:.1f} s before the scheduled time"
                if o["staged_ahead_s"] is not None and o["staged_ahead_s"] >= 0
                else f"NO: plan done {-(o['staged_ahead_s'] or 0):.1f} s after the scheduled time"
            ),
            "send phase": (
                f"{o['sent']:,} recipients in {o['send_s']:.1f} s = {o['send_rate']:,.0f} recipients/s "
                f"= {o['send_rate'] / o['floor']:.0%} of the floor ({o['floor']:,.0f}/s to a bare local HTTP peer, "
                "1000 a request, one at a time)"
            ),
            "Netmera requests": f"{o['requests']} (ceil(n / 1000) per template: {o['expected_requests']})",
            "scheduled time -> first request": f"{o['scheduled_to_first_s']:.2f} s",
            "scheduled time -> end of last request": f"{o['scheduled_to_last_end_s']:.1f} s (target <= 60)",
            "peak RSS": (
                f"{o['peak_rss'] / mib:.0f} MiB (while staging {o['peak_rss_stage'] / mib:.0f}, planning "
                f"{o['peak_rss_plan'] / mib:.0f}, sending {o['peak_rss_send'] / mib:.0f})"
            ),
            "load average before / after": (
                f"{' '.join(f'{x:.2f}' for x in o['load_before'])} / {' '.join(f'{x:.2f}' for x in o['load_after'])}"
            ),
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipients", type=int, default=100_000)
    p.add_argument("--lead", type=float, default=30.0, help="seconds from the event to the scheduled time")
    p.add_argument("--cancel-after", type=int, default=20_000, help="cancel once this many recipients were sent")
    p.add_argument("--events", type=int, default=1000, help="events 11 for the realtime figure (0: skip)")
    p.add_argument("--event-rate", type=float, default=200.0)
    p.add_argument("--state-db-url", default=None, help="default: SQLite in the temporary AIRFLOW_HOME")
    p.add_argument(
        "--scale",
        nargs="?",
        const="100000,1000000",
        help="comma-separated sizes (default 100000,1000000): the scale curve only, each size in a fresh process",
    )
    p.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--floor-requests", type=int, default=200, help="requests to the bare peer per floor measure")
    a = p.parse_args()
    if a.scale_one:
        Path(a.out).write_text(json.dumps(scale_one(a.scale_one, a.lead, a.floor_requests), default=str))
        return
    if a.scale:
        lead = a.lead if "--lead" in sys.argv else None
        scale([int(x) for x in a.scale.split(",")], lead, a.floor_requests)
        return

    print(f"starting the sandbox with {a.recipients:,} customers and a fresh Airflow home {HOME} ...", flush=True)
    box = start_box(a.recipients)
    try:
        configure(box, a.state_db_url)
        from optimove_netmera.settings import get_settings
        from optimove_netmera.store import get_engine, migrate, redact_url

        url = get_settings().resolved_state_db_url()
        migrate(url)
        engine = get_engine(url)
        print(f"state database: {redact_url(engine.url)}", flush=True)
        show(f"1. bulk send of {a.recipients:,} recipients", bench_send(box, engine, a.recipients, a.lead))
        show(
            f"2. cancellation of a {a.recipients:,}-recipient send",
            bench_cancel(box, engine, a.recipients, a.cancel_after),
        )
        if a.events:
            show("3. single-target sends (event 11)", bench_realtime(box, engine, a.events, a.event_rate))
        show("machine", machine())
    finally:
        box.stop()


if __name__ == "__main__":
    main()
