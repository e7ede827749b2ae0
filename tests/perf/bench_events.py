"""Benchmark of the Optimove event endpoint under ``airflow api-server`` (run: ``python tests/perf/bench_events.py``).

Not a test module: pytest never collects it (no ``test_`` name, no test functions).

Per state-database backend (the embedded default SQLite file under AIRFLOW_HOME, and the local PostgreSQL):
a throwaway Airflow home (SQLite metadata DB, the repo's DAGs reserialized, the repo's plugin), one
``airflow api-server --workers 1``, then

1. intake: 10,000 unique single-target events (type 11: stored as ``queued``, no DAG run each) at
   concurrency 32: events/s, p50/p99/max latency (request sent -> response read), lost (acknowledged
   but not in the state database, or not acknowledged) and duplicates (rows beyond one per event, or a
   unique event answered "duplicate"). Type 11 is the high-volume type: Optimove sends one per customer.
2. bulk: 200 unique campaign events (type 13) at concurrency 32, each creating a DAG run of
   ``optimove_campaign_send`` in the metadata database (paused DAG: the runs stay queued), then the
   same 200 again: every replay must answer "duplicate" and no run may be added.

The load comes from threads with keep-alive ``http.client`` connections: an httpx.AsyncClient spends
~2 ms of CPU per request, which on a 2-core machine takes a core away from the server being measured.
Targets: >= 300 events/s with p99 <= 200 ms for the intake.
"""

from __future__ import annotations

import argparse
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
from optimove_netmera.sandbox.process import free_port, stop_process
from optimove_netmera.store import Event, dispose_engines, get_engine, migrate, redact_url, scratch
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
APP_KEY = "optimove-netmera"
CHANNEL = 506
TARGET_RATE = 300.0
TARGET_P99_MS = 200.0


# --------------------------------------------------------------------------------------------------
# machine, ports, processes
# --------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
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
    env = deployment.env(f"sqlite:///{home / 'optimove_netmera_state.db'}")
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        started = time.perf_counter()
        done = subprocess.run([AIRFLOW, *command], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"airflow {' '.join(command)} failed:\n{done.stderr[-3000:]}")
        print(f"  airflow {' '.join(command):<18} {time.perf_counter() - started:6.1f} s")
    return deployment


@contextmanager
def api_server(deployment: Deployment, state_url: str, log_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """``airflow api-server --workers 1`` on a free port, until the block ends."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
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

    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def run_load(port: int, key: str, bodies: list[bytes], concurrency: int) -> Load:
    """POST every body once, ``concurrency`` keep-alive connections at a time."""
    result = Load()
    lock = threading.Lock()
    items = iter(bodies)
    headers = {"X-netmera-api-key": key, "Content-Type": "application/json"}
    path = f"/rest/optimove/event/{APP_KEY}"

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                body = next(items, None)
            if body is None:
                connection.close()
                return
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - started
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

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def single_target_bodies(campaign_id: int, n: int, stamp: str) -> list[bytes]:
    return [
        json.dumps(
            {
                "eventTypeId": 11,
                "timeStamp": stamp,
                "campaignId": campaign_id,
                "channelId": CHANNEL,
                "customerID": f"B{i:07d}",
                "templateID": 101,
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
    backend: str, deployment: Deployment, events_n: int, bulk_n: int, concurrency: int
) -> dict[str, Any] | None:
    print(f"\n== state database: {backend}")
    with state_database(backend, deployment.home) as url:
        if url is None:
            return None
        migrate(url)
        print(f"  state DB          {redact_url(url)}")
        with api_server(deployment, url, deployment.home / f"api-{backend}.log") as (port, process):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            base = secrets.randbelow(10**6) * 10_000 + 10**9
            table = Event.__table__

            warm = run_load(port, deployment.key, single_target_bodies(base - 1, 200, stamp), concurrency)
            print(f"  warm-up           {len(warm.latencies)} events in {warm.seconds:.2f} s (not counted)")

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

            compact = stamp.replace("-", "").replace(":", "").replace(" ", "T")
            expected = {f"optimove_c{base + 1 + i}_ch{CHANNEL}_{compact}" for i in range(bulk_n)}
            bulk = run_load(port, deployment.key, bulk_bodies(base + 1, bulk_n, stamp), concurrency)
            prefix_runs = send_runs(deployment, expected)
            replay = run_load(port, deployment.key, bulk_bodies(base + 1, bulk_n, stamp), concurrency)
            after_runs = send_runs(deployment, expected)
            bulk_rows, _ = rows_for(url, table.c.campaign_id.between(base + 1, base + bulk_n))
            dispatched, _ = rows_for(
                url, table.c.campaign_id.between(base + 1, base + bulk_n), table.c.status == "dispatched"
            )
            report(
                f"bulk: {bulk_n} unique campaign events (type 13), each creating a DAG run",
                bulk,
                {
                    "DAG runs": f"{prefix_runs} created (queued), {dispatched} events dispatched, {bulk_rows} rows",
                },
            )
            report(
                f"bulk replay: the same {bulk_n} events again",
                replay,
                {"DAG runs": f"{after_runs} (added by the replay: {after_runs - prefix_runs})"},
            )
            return {
                "backend": backend,
                "rate": intake.rate(),
                "p50": intake.percentile(0.5),
                "p99": intake.percentile(0.99),
                "lost": lost,
                "duplicates": duplicates,
                "bulk_rate": bulk.rate(),
                "bulk_runs": prefix_runs,
                "replay_added": after_runs - prefix_runs,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="single-target events in the intake run")
    parser.add_argument("--bulk", type=int, default=200, help="bulk (type 13) events, each creating a DAG run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temporary Airflow home (logs)")
    args = parser.parse_args(argv)
    for noisy in ("alembic", "optimove_netmera.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    print("Optimove event endpoint benchmark (airflow api-server, 1 worker)")
    for label, value in machine().items():
        print(f"  {label:<9} {value}")
    home = Path(tempfile.mkdtemp(prefix="onm-bench-events-"))
    results: list[dict[str, Any]] = []
    try:
        print(f"\n  Airflow home {home}")
        deployment = prepare(home)
        backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
        for backend in backends:
            result = bench_backend(backend, deployment, args.events, args.bulk, args.concurrency)
            if result is not None:
                results.append(result)
    finally:
        if args.keep:
            print(f"\n  kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    print(f"\n== summary (targets: >= {TARGET_RATE:.0f} events/s, p99 <= {TARGET_P99_MS:.0f} ms, lost 0, duplicates 0)")
    ok = bool(results)
    for r in results:
        passed = (
            r["rate"] >= TARGET_RATE
            and r["p99"] <= TARGET_P99_MS
            and r["lost"] == 0
            and r["duplicates"] == 0
            and r["replay_added"] == 0
            and r["bulk_runs"] == args.bulk
        )
        ok = ok and passed
        print(
            f"  {r['backend']:<8} intake {r['rate']:,.0f} events/s  p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms  "
            f"lost {r['lost']}  duplicates {r['duplicates']}  |  bulk {r['bulk_rate']:,.0f} events/s, "
            f"{r['bulk_runs']} runs, replay added {r['replay_added']}  -> {'PASS' if passed else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
