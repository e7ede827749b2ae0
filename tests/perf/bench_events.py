"""Benchmark of the Optimove event endpoint under ``airflow api-server`` (run: ``python tests/perf/bench_events.py``).

Not a test module: pytest never collects it (no ``test_`` name, no test functions).

Per state-database backend (the embedded default SQLite file under AIRFLOW_HOME, and the local PostgreSQL):
a throwaway Airflow home (SQLite metadata DB, the repo's DAGs reserialized, the repo's plugin plus a
benchmark-only plugin with a parse-only route), one ``airflow api-server --workers N`` (``--api-workers``, 1 by
default as in Airflow; the server CPU printed is summed over its processes), then

1. floor: the mixed stream's bodies POSTed to the parse-only route (``POST /bench/parse/{app_key}``: key
   check, body read, JSON decode, :func:`parse_event`, no database) on the same server: requests/s, p99.
2. intake: 10,000 unique single-target events (type 11: stored as ``queued``, no DAG run each) at
   concurrency 32: events/s, p50/p99/max latency (request sent -> response read), lost (acknowledged
   but not in the state database, or not acknowledged) and duplicates (rows beyond one per event, or a
   unique event answered "duplicate"). Type 11 is the high-volume type: Optimove sends one per customer.
3. mixed: 10,000 unique events of which 20% are campaign events (type 13, one DAG run of
   ``optimove_campaign_send`` each, created off the request path; paused DAG: the runs stay queued), the
   rest type 11, at concurrency 32: events/s, p50/p99, the ratio to the floor, and for each 13 the time
   from its acknowledgement to its run's creation (``dag_run.queued_at``): p50/p99/max, waiting until every
   run exists. Then the same 13s again: every replay must answer "duplicate" and no run may be added.
4. paced: 200 campaign events (type 13) alone, 20 a second, one at a time (a heavy hour of campaigns arriving
   at once, but below what the dispatcher can create): the time from each acknowledgement to its run's creation,
   p50/p99/max. The mixed stream asks for more runs a second than run creation can give on 2 cores (Airflow's
   ``create_dagrun`` takes ~10 ms of CPU a run), so its runs queue; here each should exist within a second.

The load comes from threads with keep-alive ``http.client`` connections: an httpx.AsyncClient spends
~2 ms of CPU per request, which on a 2-core machine takes a core away from the server being measured.
Targets: >= 300 events/s with p99 <= 200 ms for the type-11 intake (both backends); >= 650 events/s with
p99 <= 100 ms for the mixed stream on PostgreSQL. ``uptime``'s load is printed with each phase: other
work on the machine lowers every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from machine import machine  # tests/perf/machine.py (the script's own folder is on sys.path)
from optimove_netmera.campaigns.events.keys import campaign_run_id
from optimove_netmera.sandbox.process import free_port, stop_process
from optimove_netmera.store import Event, dispose_engines, get_engine, migrate, redact_url, scratch
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
APP_KEY = "optimove-netmera"
CHANNEL = 506
TARGET_RATE = 300.0
TARGET_P99_MS = 200.0
TARGET_MIXED_RATE = 650.0  # PostgreSQL
TARGET_MIXED_P99_MS = 100.0
TARGET_RUN_MS = 1000.0  # ack -> run, paced 13s
FLOOR_PLUGIN = '''"""Benchmark only: a parse-only route (what the event endpoint does before touching the database)."""

import datetime as dt
import hmac
import json
import os
from functools import cached_property

from airflow.plugins_manager import AirflowPlugin


def _app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from optimove_netmera.campaigns import events

    app = FastAPI()
    key = os.environ["OPTIMOVE_NETMERA_INBOUND_API_KEY"].encode()

    @app.post("/parse/{app_key}")
    async def parse(app_key: str, request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get("x-netmera-api-key", "").encode(), key):
            return JSONResponse({"status": "rejected"}, status_code=403)
        event = events.parse_event(json.loads(await request.body()), now=dt.datetime.now(dt.UTC))
        return JSONResponse({"status": "parsed", "event_type_id": event.event_type_id})

    return app


class BenchFloorPlugin(AirflowPlugin):
    name = "bench_floor"

    @cached_property
    def fastapi_apps(self):
        return [{"app": _app(), "url_prefix": "/bench", "name": "bench floor"}]
'''


# --------------------------------------------------------------------------------------------------
# machine, ports, processes
# --------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and every live process below it (Linux /proc): the API server's
    workers included."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        member = todo.pop()
        total += stats.get(member, (0, 0.0))[1]
        todo.extend(children.get(member, ()))
    return total


@dataclass
class Deployment:
    """A throwaway Airflow home with the repo's DAGs and plugin."""

    home: Path
    key: str
    password: str

    def env(self, state_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "OPTIMOVE_NETMERA"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
                "OPTIMOVE_NETMERA_STATE_DB_URL": state_url,
                "OPTIMOVE_NETMERA_INBOUND_API_KEY": self.key,
            }
        )
        return env

    @property
    def metadata_url(self) -> str:
        return f"sqlite:///{self.home / 'airflow.db'}"


def prepare(home: Path) -> Deployment:
    """Migrate the metadata database and serialize the repo's DAGs; print how long it took."""
    deployment = Deployment(home, "bench-" + secrets.token_hex(12), secrets.token_hex(8))
    (home / "passwords.json").write_text(json.dumps({"admin": deployment.password}))
    (home / "plugins").mkdir()
    shutil.copy(REPO / "plugins" / "optimove_netmera_plugin.py", home / "plugins")
    (home / "plugins" / "bench_floor_plugin.py").write_text(FLOOR_PLUGIN)
    env = deployment.env(f"sqlite:///{home / 'optimove_netmera_state.db'}")
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        started = time.perf_counter()
        done = subprocess.run([AIRFLOW, *command], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"airflow {' '.join(command)} failed:\n{done.stderr[-3000:]}")
        print(f"  airflow {' '.join(command):<18} {time.perf_counter() - started:6.1f} s")
    return deployment


@contextmanager
def api_server(
    deployment: Deployment, state_url: str, log_path: Path, workers: int = 1
) -> Iterator[tuple[int, subprocess.Popen]]:
    """``airflow api-server --workers N`` on a free port, until the block ends."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=deployment.env(state_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            started = time.perf_counter()
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"api-server exited ({process.returncode}); see {log_path}")
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    connection.request("GET", "/api/v2/monitor/health")
                    if connection.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"api-server not healthy after 120 s; see {log_path}")
                time.sleep(0.2)
            print(f"  api-server up in {time.perf_counter() - started:.1f} s (port {port}, log {log_path})")
            yield port, process
        finally:
            stop_process(process, timeout=20)


# --------------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Results of one load phase."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # HTTP code or "<code> <answer status>"
    errors: list[str] = field(default_factory=list)
    acked: dict[int, float] = field(default_factory=dict)  # body index -> wall-clock time its 200 was read
    client_cpu: float = 0.0  # CPU seconds the load generator itself spent (this process)

    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def run_load(
    port: int,
    key: str,
    bodies: list[bytes],
    concurrency: int,
    path: str = f"/rest/optimove/event/{APP_KEY}",
    rate: float | None = None,
) -> Load:
    """POST every body once, ``concurrency`` keep-alive connections at a time; with ``rate``, the ``i``-th body no
    earlier than ``i / rate`` seconds in."""
    result = Load()
    lock = threading.Lock()
    items = iter(enumerate(bodies))
    headers = {"X-netmera-api-key": key, "Content-Type": "application/json"}

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(items, None)
            if item is None:
                connection.close()
                return
            index, body = item
            if rate:
                pause = began + index / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - started
                acked_at = time.time()
                label = f"{response.status} {json.loads(data).get('status')}" if data else str(response.status)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                result.latencies.append(elapsed)
                result.statuses[label] = result.statuses.get(label, 0) + 1
                if response.status == 200:
                    result.acked[index] = acked_at

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    cpu = time.process_time()
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    result.client_cpu = time.process_time() - cpu
    return result


def wait_for_runs(deployment: Deployment, wanted: set[str], timeout: float) -> dict[str, float]:
    """run id -> creation time of ``wanted``, once every one exists or ``timeout`` seconds have passed."""
    created: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(created) < len(wanted) and time.monotonic() < deadline:
        created = run_times(deployment, wanted)
        if len(created) < len(wanted):
            time.sleep(0.5)
    return created


def single_target_bodies(campaign_id: int, n: int, stamp: str) -> list[bytes]:
    return [
        json.dumps(
            {
                "eventTypeId": 11,
                "timeStamp": stamp,
                "campaignId": campaign_id,
                "channelId": CHANNEL,
                "customerID": f"B{i:07d}",
                "templateID": 1,
                "promoCode": "BENCH",
            }
        ).encode()
        for i in range(n)
    ]


def bulk_bodies(first_campaign: int, n: int, stamp: str) -> list[bytes]:
    return [
        json.dumps(
            {"eventTypeId": 13, "timeStamp": stamp, "campaignId": first_campaign + i, "channelId": CHANNEL}
        ).encode()
        for i in range(n)
    ]


def mixed_bodies(base: int, n: int, share13: float, stamp: str) -> tuple[list[bytes], dict[int, str]]:
    """``n`` unique events, every ``1/share13``-th a 13 (campaign ``base + i``), the rest 11; and index -> run id."""
    every = max(1, round(1 / share13)) if share13 > 0 else 0
    moment = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)  # Optimove's times are UTC
    bodies: list[bytes] = []
    runs: dict[int, str] = {}
    for i in range(n):
        if every and i % every == every - 1:
            runs[i] = campaign_run_id(base + i, CHANNEL, moment)
            bodies.append(bulk_bodies(base + i, 1, stamp)[0])
        else:
            body = {"eventTypeId": 11, "timeStamp": stamp, "campaignId": base, "channelId": CHANNEL}
            body.update({"customerID": f"M{i:07d}", "templateID": 1, "promoCode": "BENCH"})
            bodies.append(json.dumps(body).encode())
    return bodies, runs


def run_times(deployment: Deployment, run_ids: set[str]) -> dict[str, float]:
    """run id -> creation time (``queued_at``, epoch seconds) of those ``run_ids`` that exist."""
    engine = sa.create_engine(deployment.metadata_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT run_id, queued_at FROM dag_run WHERE dag_id = 'optimove_campaign_send'")
            ).all()
    finally:
        engine.dispose()
    found: dict[str, float] = {}
    for run_id, queued_at in rows:
        if run_id in run_ids and queued_at is not None:
            moment = queued_at if isinstance(queued_at, dt.datetime) else dt.datetime.fromisoformat(str(queued_at))
            found[run_id] = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def uptime() -> str:
    """``uptime``'s load averages (other work on the shared machine lowers every figure)."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def rows_for(state_url: str, *criteria: Any) -> tuple[int, int]:
    """(rows, distinct dedup keys) in the events table matching ``criteria``."""
    table = Event.__table__
    with get_engine(state_url).connect() as connection:
        rows = connection.scalar(sa.select(sa.func.count()).select_from(table).where(*criteria)) or 0
        keys = connection.scalar(sa.select(sa.func.count(sa.distinct(table.c.dedup_key))).where(*criteria)) or 0
    return int(rows), int(keys)


def send_runs(deployment: Deployment, run_ids: set[str]) -> int:
    """How many of ``run_ids`` exist as runs of ``optimove_campaign_send`` in the metadata database."""
    engine = sa.create_engine(deployment.metadata_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            found = connection.scalars(
                sa.text("SELECT run_id FROM dag_run WHERE dag_id = 'optimove_campaign_send'")
            ).all()
    finally:
        engine.dispose()
    return len(run_ids.intersection(found))


def report(name: str, load: Load, extra: dict[str, Any]) -> None:
    print(f"\n  {name}")
    print(
        f"    events            {len(load.latencies):,} answered in {load.seconds:.2f} s -> {load.rate():,.0f} events/s"
    )
    print(
        f"    latency           p50 {load.percentile(0.50):.1f} ms   p99 {load.percentile(0.99):.1f} ms   "
        f"max {max(load.latencies, default=0) * 1000:.1f} ms"
    )
    print(f"    answers           {dict(sorted(load.statuses.items()))}")
    if load.latencies:
        print(f"    client CPU        {load.client_cpu / len(load.latencies) * 1000:.2f} ms per request")
    if load.errors:
        print(f"    client errors     {len(load.errors)} (first: {load.errors[0]})")
    for label, value in extra.items():
        print(f"    {label:<17} {value}")


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------


@contextmanager
def state_database(backend: str, home: Path) -> Iterator[str | None]:
    """The state database URL for ``backend`` (None: PostgreSQL unreachable, skipped)."""
    if backend == "sqlite":
        url = f"sqlite:///{home / 'optimove_netmera_state.db'}"  # what the default resolves to
        yield url
        dispose_engines()
        return
    reason = scratch.check_reachable()
    if reason is not None:
        print(f"  PostgreSQL unreachable at {redact_url(scratch.admin_url())} ({reason}): skipped")
        yield None
        return
    with scratch.throwaway_database("onm_bench") as url:
        yield url


def bench_backend(
    backend: str,
    deployment: Deployment,
    events_n: int,
    mixed_n: int,
    share13: float,
    concurrency: int,
    drain_timeout: float,
    paced_n: int,
    paced_rate: float,
    workers: int = 1,
) -> dict[str, Any] | None:
    print(f"\n== state database: {backend}")
    with state_database(backend, deployment.home) as url:
        if url is None:
            return None
        migrate(url)
        print(f"  state DB          {redact_url(url)}")
        with api_server(deployment, url, deployment.home / f"api-{backend}.log", workers) as (port, process):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            base = secrets.randbelow(10**6) * 10_000 + 10**9
            table = Event.__table__

            warm_bodies, _ = mixed_bodies(base + 5 * 10**6, 300, share13, stamp)
            warm = run_load(port, deployment.key, warm_bodies, concurrency)
            run_load(port, deployment.key, warm_bodies, concurrency, path=f"/bench/parse/{APP_KEY}")
            print(f"  warm-up           {len(warm.latencies)} events in {warm.seconds:.2f} s (not counted)")
            print(f"  uptime            {uptime()}")

            cpu_before = cpu_seconds(process.pid)
            intake = run_load(port, deployment.key, single_target_bodies(base, events_n, stamp), concurrency)
            server_cpu = cpu_seconds(process.pid) - cpu_before
            stored, keys = rows_for(url, table.c.campaign_id == base, table.c.status == "queued")
            accepted = intake.statuses.get("200 accepted", 0)
            lost = events_n - min(stored, accepted)
            duplicates = (stored - keys) + intake.statuses.get("200 duplicate", 0)
            report(
                f"intake: {events_n:,} unique single-target events (type 11), concurrency {concurrency}",
                intake,
                {
                    "stored (queued)": f"{stored:,}",
                    "lost": lost,
                    "duplicates": duplicates,
                    "server CPU": f"{server_cpu:.1f} s ({server_cpu / max(1, events_n) * 1000:.2f} ms per event)",
                },
            )

            floor_bodies, _ = mixed_bodies(base + 1, mixed_n, share13, stamp)
            print(f"  uptime            {uptime()}")
            floor = run_load(port, deployment.key, floor_bodies, concurrency, path=f"/bench/parse/{APP_KEY}")
            report(f"floor: the same {mixed_n:,} bodies to the parse-only route (no database)", floor, {})

            first = base + 10**6
            bodies, runs = mixed_bodies(first, mixed_n, share13, stamp)
            print(f"\n  uptime            {uptime()}")
            cpu_before = cpu_seconds(process.pid)
            mixed = run_load(port, deployment.key, bodies, concurrency)
            stream_end = time.time()
            stream_cpu = cpu_seconds(process.pid) - cpu_before
            print(f"  uptime            {uptime()}")
            wanted = set(runs.values())
            created = wait_for_runs(deployment, wanted, drain_timeout)
            drain_cpu = cpu_seconds(process.pid) - cpu_before - stream_cpu
            delays = [created[run] - mixed.acked[i] for i, run in runs.items() if run in created and i in mixed.acked]
            last_run = max(created.values(), default=stream_end)
            n11 = mixed_n - len(runs)
            stored11, _ = rows_for(url, table.c.campaign_id == first, table.c.status == "queued")
            dispatched, _ = rows_for(
                url, table.c.campaign_id.between(first + 1, first + mixed_n), table.c.status == "dispatched"
            )
            accepted = mixed.statuses.get("200 accepted", 0)
            mixed_lost = mixed_n - min(accepted, stored11 + dispatched)
            mixed_dupes = mixed.statuses.get("200 duplicate", 0)
            ratio = mixed.rate() / floor.rate() if floor.rate() else float("nan")
            report(
                f"mixed: {mixed_n:,} unique events, {len(runs):,} of them type 13 ({share13:.0%}), the rest type 11",
                mixed,
                {
                    "vs floor": f"{ratio:.2f} of the parse-only route's {floor.rate():,.0f} requests/s",
                    "stored": f"{stored11:,} of {n11:,} type 11 queued, {dispatched:,} of {len(runs):,} 13 dispatched",
                    "lost": mixed_lost,
                    "duplicates": mixed_dupes,
                    "DAG runs": f"{len(created):,} of {len(runs):,} created",
                    "ack -> run": f"p50 {percentile(delays, 0.5) * 1000:.0f} ms   "
                    f"p99 {percentile(delays, 0.99) * 1000:.0f} ms   max {percentile(delays, 1.0) * 1000:.0f} ms",
                    "drain": f"last run {last_run - stream_end:.1f} s after the last acknowledgement "
                    f"({len(created) / max(1e-9, last_run - (stream_end - mixed.seconds)):.0f} runs/s overall)",
                    "server CPU": f"{stream_cpu:.1f} s during the stream, {drain_cpu:.1f} s after it",
                },
            )

            replay_bodies = [bodies[i] for i in runs]
            replay = run_load(port, deployment.key, replay_bodies, concurrency)
            after = len(run_times(deployment, wanted))
            report(
                f"replay: the same {len(runs):,} type-13 events again",
                replay,
                {"DAG runs": f"{after:,} (added by the replay: {after - len(created)})"},
            )

            paced_first = base + 3 * 10**6
            paced_bodies, paced_runs = mixed_bodies(paced_first, paced_n, 1.0, stamp)  # every one a 13
            print(f"\n  uptime            {uptime()}")
            paced = run_load(port, deployment.key, paced_bodies, 1, rate=paced_rate)
            paced_created = wait_for_runs(deployment, set(paced_runs.values()), drain_timeout)
            paced_delays = [
                paced_created[run] - paced.acked[i]
                for i, run in paced_runs.items()
                if run in paced_created and i in paced.acked
            ]
            report(
                f"paced: {paced_n:,} type-13 events, {paced_rate:g} a second, one at a time",
                paced,
                {
                    "DAG runs": f"{len(paced_created):,} of {paced_n:,} created",
                    "ack -> run": f"p50 {percentile(paced_delays, 0.5) * 1000:.0f} ms   "
                    f"p99 {percentile(paced_delays, 0.99) * 1000:.0f} ms   "
                    f"max {percentile(paced_delays, 1.0) * 1000:.0f} ms",
                },
            )
            return {
                "backend": backend,
                "rate": intake.rate(),
                "p50": intake.percentile(0.5),
                "p99": intake.percentile(0.99),
                "lost": lost,
                "duplicates": duplicates,
                "floor": floor.rate(),
                "mixed_rate": mixed.rate(),
                "mixed_p50": mixed.percentile(0.5),
                "mixed_p99": mixed.percentile(0.99),
                "mixed_lost": mixed_lost,
                "mixed_duplicates": mixed_dupes,
                "runs": len(created),
                "runs_expected": len(runs),
                "ack_run_p50": percentile(delays, 0.5) * 1000,
                "ack_run_p99": percentile(delays, 0.99) * 1000,
                "replay_added": after - len(created),
                "replay_ok": replay.statuses.get("200 duplicate", 0) == len(runs),
                "paced_runs": len(paced_created),
                "paced_expected": paced_n,
                "paced_rate": paced_rate,
                "paced_p50": percentile(paced_delays, 0.5) * 1000,
                "paced_p99": percentile(paced_delays, 0.99) * 1000,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="single-target events in the intake run")
    parser.add_argument("--mixed", type=int, default=10_000, help="events in the mixed stream")
    parser.add_argument("--share13", type=float, default=0.2, help="share of type 13 in the mixed stream")
    parser.add_argument("--drain-timeout", type=float, default=900, help="seconds to wait for every run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--paced", type=int, default=200, help="type-13 events in the paced run")
    parser.add_argument("--paced-rate", type=float, default=20.0, help="type-13 events a second in the paced run")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--api-workers", type=int, default=1, help="API server worker processes ([api] workers)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary Airflow home (logs)")
    args = parser.parse_args(argv)
    for noisy in ("alembic", "optimove_netmera.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    print(f"Optimove event endpoint benchmark (airflow api-server, {args.api_workers} worker(s))")
    for label, value in machine().items():
        print(f"  {label:<9} {value}")
    home = Path(tempfile.mkdtemp(prefix="onm-bench-events-"))
    results: list[dict[str, Any]] = []
    try:
        print(f"\n  Airflow home {home}")
        deployment = prepare(home)
        backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
        for backend in backends:
            result = bench_backend(
                backend,
                deployment,
                args.events,
                args.mixed,
                args.share13,
                args.concurrency,
                args.drain_timeout,
                args.paced,
                args.paced_rate,
                args.api_workers,
            )
            if result is not None:
                results.append(result)
    finally:
        if args.keep:
            print(f"\n  kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    print(
        f"\n== summary (targets: intake >= {TARGET_RATE:.0f} events/s, p99 <= {TARGET_P99_MS:.0f} ms; mixed on "
        f"PostgreSQL >= {TARGET_MIXED_RATE:.0f} events/s, p99 <= {TARGET_MIXED_P99_MS:.0f} ms; paced 13s: ack -> run "
        f"p99 <= {TARGET_RUN_MS:.0f} ms; nothing lost or duplicated, one run per 13)"
    )
    print(f"  uptime   {uptime()}")
    ok = bool(results)
    for r in results:
        correct = (
            r["lost"] == 0
            and r["duplicates"] == 0
            and r["mixed_lost"] == 0
            and r["mixed_duplicates"] == 0
            and r["runs"] == r["runs_expected"]
            and r["replay_added"] == 0
            and r["replay_ok"]
            and r["paced_runs"] == r["paced_expected"]
        )
        fast = r["rate"] >= TARGET_RATE and r["p99"] <= TARGET_P99_MS and r["paced_p99"] <= TARGET_RUN_MS
        if r["backend"] == "postgres":
            fast = fast and r["mixed_rate"] >= TARGET_MIXED_RATE and r["mixed_p99"] <= TARGET_MIXED_P99_MS
        passed = correct and fast
        ok = ok and passed
        print(
            f"  {r['backend']:<8} intake {r['rate']:,.0f} events/s p99 {r['p99']:.1f} ms  |  mixed "
            f"{r['mixed_rate']:,.0f} events/s p50 {r['mixed_p50']:.1f} ms p99 {r['mixed_p99']:.1f} ms, "
            f"{r['mixed_rate'] / r['floor']:.2f} of the floor ({r['floor']:,.0f}/s); ack->run p50 "
            f"{r['ack_run_p50']:,.0f} ms p99 {r['ack_run_p99']:,.0f} ms; runs {r['runs']}/{r['runs_expected']}, "
            f"replay added {r['replay_added']}; paced {r['paced_rate']:g}/s: ack->run p50 {r['paced_p50']:,.0f} ms "
            f"p99 {r['paced_p99']:,.0f} ms  -> {'PASS' if passed else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
