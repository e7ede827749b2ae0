"""Benchmark of the nightly user sync at scale (not part of the test run).

    python tests/perf/bench_sync.py [--customers 1000000] [--changed 0.05] [--state-db URL]
    python tests/perf/bench_sync.py --scale 100000,1000000,3000000   # first syncs only: the scale curve

Against the sandbox over HTTP, each DAG run a real ``airflow dags test`` subprocess (its peak RSS is that run's):

1. first sync, full refresh from a customer export (every customer new);
2. 5% of the customers change; full refresh again: the diff and plan of all N customers against the snapshot;
3. another 5% change; incremental run through ``customers/GetCustomerAttributeChangers``;
4. nothing changes; incremental run: no profile writes;
5. (``--initial-api``) a fresh state DB, first sync through the changers API: extraction rate vs Optimove's ceiling.

``--scale`` runs only step 1 at each size (a fresh sandbox and state DB each) and prints the curve: wall time and
peak RSS per size, so memory growth with the tenant shows (the plan streams in ``sync.memory_budget_mb``).

Before the runs a bare local HTTP peer (a subprocess that reads each request and answers 200) takes the same
1000-profile ``setProfileAttributes`` requests from a ``NetmeraClient`` at ``sync.load_concurrency``: its
profiles/s is the floor the load's rate is reported against.

Prints, per run: wall time, seconds per phase, rows per second, peak RSS, Netmera profile write calls (against
ceil(sendable / 1000)), Optimove calls and their rate against the 5 requests/s ceiling, and the machine.
20 attributes are mapped (the repository's 18 plus Email and MobilePhone under custom names).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from floor import bare_peer, peer_rate  # tests/perf/floor.py (the script's own folder is on sys.path)
from machine import machine_line  # tests/perf/machine.py
from optimove_netmera.sandbox.process import start_sandbox

REPO = Path(__file__).resolve().parents[2]

SET = "POST /rest/3.0/setProfileAttributes"
UNSET = "POST /rest/3.0/unsetProfileAttributes"
PROBE = "POST /rest/3.0/untagUsers"
EXTRA_ATTRIBUTES = [
    {"optimove": "Email", "netmera": "optimoveEmail", "type": "string"},
    {"optimove": "MobilePhone", "netmera": "optimovePhone", "type": "string"},
]


def airflow_env(home: Path, box: Any, state_db: str, attributes: list[dict[str, str]]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPTIMOVE_NETMERA"))}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_OPTIMOVE_DEFAULT": json.dumps(
            {"conn_type": "optimove", "host": box.optimove_url, "extra": {"api_key": box.optimove_api_key}}
        ),
        "AIRFLOW_CONN_NETMERA_DEFAULT": json.dumps(
            {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key}
        ),
        "OPTIMOVE_NETMERA_STATE_DB_URL": state_db,
        "OPTIMOVE_NETMERA__ATTRIBUTES": json.dumps(attributes),
        "OPTIMOVE_NETMERA__SYNC__RETRIES": "0",
        "OPTIMOVE_NETMERA__SYNC__MAX_CHANGE_RATIO": "1.0",
    }
    return env


def peer_floor(concurrency: int, requests: int = 300) -> float:
    """Profiles/s a NetmeraClient sends to a bare local HTTP peer (1000 20-attribute profiles a request)."""
    from optimove_netmera.netmera import NetmeraClient

    with bare_peer() as url:
        client = NetmeraClient(url, "bench", pool_size=max(8, concurrency))
        profile = {f"attr{j}": (f"value-{j}" if j % 2 else j * 1000.5) for j in range(20)}
        batch = [{"extId": f"C{i:07d}", "profile": dict(profile)} for i in range(1000)]
        return peer_rate(lambda: client.set_profile_attributes(batch), requests, concurrency)


def counts(box: Any) -> dict[str, int]:
    c = box.admin.netmera.requests()["counts"]
    return {e: c.get(e, {}).get("200", 0) for e in (SET, UNSET, PROBE)}


def optimove_calls(box: Any) -> int:
    return sum(sum(v.values()) for k, v in box.admin.optimove.requests()["counts"].items() if "general/login" not in k)


def dag_test(env: dict[str, str], logical_date: str, conf: dict[str, Any], log: Path) -> tuple[float, int, str]:
    """Run one DAG run in a fresh process; returns (wall seconds, that process's peak RSS in bytes, state)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    cmd = [airflow, "dags", "test", "optimove_user_sync", logical_date, "-c", json.dumps(conf)]
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    state = "success" if proc.returncode == 0 else "failed"
    if state != "success":
        print(log.read_text()[-4000:])
    return wall, usage.ru_maxrss * 1024, state


def last_run(state_db: str) -> dict[str, Any]:
    import sqlalchemy as sa
    from optimove_netmera.store import get_engine
    from optimove_netmera.store.models import SyncRun

    with get_engine(state_db).connect() as conn:
        return dict(conn.execute(sa.select(SyncRun).order_by(SyncRun.id.desc()).limit(1)).one()._mapping)


def report(
    name: str,
    wall: float,
    peak: int,
    state: str,
    run: dict[str, Any],
    net: dict[str, int],
    o_calls: int,
    floor: float,
) -> dict[str, float]:
    c, phases = run["counts"], run["phase_seconds"]
    plan = c.get("plan", {})
    sendable_set = plan.get("set_entries", 0)
    sendable_unset = plan.get("unset_entries", 0)
    expected = math.ceil(sendable_set / 1000) + math.ceil(sendable_unset / 1000)
    writes = net[SET] + net[UNSET]
    extract = phases.get("extract", 0.0)
    fetched = c.get("fetched", 0)
    print(f"\n## {name}: {state}, {wall:.1f} s wall (incl. Airflow start), peak RSS {peak / 2**20:.0f} MiB")
    print(f"   phases (s): {json.dumps(phases)}")
    print(f"   fetched {fetched} ({fetched / extract:,.0f} rows/s in extract)" if extract else f"   fetched {fetched}")
    dp = phases.get("diff_plan", 0.0)
    staged = plan.get("fetched", 0)
    print(
        f"   diff & plan: {staged} customers in {dp:.1f} s ({staged / dp:,.0f} rows/s); differing from the snapshot "
        f"{plan.get('changed')}, of which unknown to Netmera {plan.get('not_found')} (carried over "
        f"{plan.get('carried_over')}); seconds by step {plan.get('seconds')} (probe = Netmera existence checks)"
        if dp
        else "   diff & plan: -"
    )
    print(
        f"   Netmera profile write calls {writes} (expected ceil(sendable/1000) = {expected}: "
        f"{'OK' if writes == expected else 'MISMATCH'}), existence probes {net[PROBE]}"
    )
    if extract and o_calls > 50:  # under one window's worth the limiter never paces: a rate would mean nothing
        rate = o_calls / extract
        print(f"   Optimove calls {o_calls} in {extract:.1f} s = {rate:.2f}/s ({rate / 5:.0%} of the 5/s ceiling)")
    else:
        print(f"   Optimove calls {o_calls}")
    load = phases.get("load", 0.0)
    rate = (sendable_set + sendable_unset) / load if load else 0.0
    if load:
        print(f"   load: {rate:,.0f} profiles/s = {rate / floor:.0%} of the bare-peer floor ({floor:,.0f}/s)")
    return {"wall": wall, "peak": peak, "plan": dp, "load_rate": rate}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--changed", type=float, default=0.05)
    p.add_argument("--state-db", help="state DB URL (default: a SQLite file in the temp home)")
    p.add_argument("--initial-api", action="store_true", help="also time a first sync through the changers API")
    p.add_argument("--scale", help="comma-separated sizes: only a first sync (full refresh) at each, the curve")
    a = p.parse_args()
    from optimove_netmera.settings import load_settings

    concurrency = load_settings().sync.load_concurrency
    floor = peer_floor(concurrency)
    if a.scale:
        return scale([int(n) for n in a.scale.split(",")], floor, concurrency)
    print(f"# user-sync benchmark: {a.customers:,} customers x 20 attributes, {a.changed:.0%} changed")
    print(f"# machine: {machine_line()}")
    print(f"# bare local HTTP peer: {floor:,.0f} profiles/s (1000 a request, {concurrency} in flight)")
    home = Path(tempfile.mkdtemp(prefix="onm-bench-sync-"))
    (home / "plugins").mkdir()
    state_db = a.state_db or f"sqlite:///{home}/state.db"
    attributes = [m.model_dump() for m in load_settings().attributes] + EXTRA_ATTRIBUTES
    started = time.monotonic()
    box = start_sandbox(customers=a.customers, log_path=home / "sandbox.log")
    print(f"# sandbox up in {time.monotonic() - started:.1f} s")
    try:
        box.admin.netmera.config(profile_attributes="*")
        env = airflow_env(home, box, state_db, attributes)
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True, capture_output=True
        )
        days = iter(f"2026-11-{d:02d}T03:00:00+00:00" for d in range(10, 30))

        def run(name: str, conf: dict[str, Any]) -> None:
            before_n, before_o = counts(box), optimove_calls(box)
            wall, peak, state = dag_test(env, next(days), conf, home / "dag-test.log")
            after_n = counts(box)
            report(
                name,
                wall,
                peak,
                state,
                last_run(state_db),
                {k: after_n[k] - before_n[k] for k in after_n},
                optimove_calls(box) - before_o,
                floor,
            )

        export = home / "customers.parquet"
        box.admin.optimove.export(str(export))
        run("1. first sync (full refresh from an export)", {"full_refresh": True, "export_path": str(export)})
        n_changed = int(a.customers * a.changed)
        box.admin.optimove.change_customers(n_changed, empty=n_changed // 10)
        box.admin.optimove.export(str(export))
        run(
            f"2. full refresh, {a.changed:.0%} changed (diff of all customers)",
            {"full_refresh": True, "export_path": str(export)},
        )
        box.admin.optimove.change_customers(n_changed, empty=n_changed // 10)
        run(f"3. incremental (changers API), {a.changed:.0%} changed", {})
        run("4. incremental, nothing changed", {})
        if a.initial_api:
            fresh = a.state_db or f"sqlite:///{home}/state-api.db"
            if fresh == state_db:
                print("\n(--initial-api needs the default SQLite state DB; skipped)")
            else:
                env2 = env | {"OPTIMOVE_NETMERA_STATE_DB_URL": fresh}
                state_db = fresh
                env = env2
                run("5. first sync through the changers API (extraction rate)", {})
    finally:
        box.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


def scale(sizes: list[int], floor: float, concurrency: int) -> int:
    """A first sync (full refresh from an export) at each size, each in a fresh sandbox and state DB."""
    from optimove_netmera.settings import load_settings

    s = load_settings()
    print(f"# user-sync scale curve: first sync (full refresh) of {', '.join(f'{n:,}' for n in sizes)} customers")
    print(f"# memory_budget_mb={s.sync.memory_budget_mb}, load_concurrency={concurrency}, batch_size 1000")
    print(f"# machine: {machine_line()}")
    print(f"# bare local HTTP peer: {floor:,.0f} profiles/s (1000 a request, {concurrency} in flight)")
    attributes = [m.model_dump() for m in s.attributes] + EXTRA_ATTRIBUTES
    rows = []
    for n in sizes:
        home = Path(tempfile.mkdtemp(prefix="onm-bench-sync-"))
        (home / "plugins").mkdir()
        state_db = f"sqlite:///{home}/state.db"
        box = start_sandbox(customers=n, log_path=home / "sandbox.log", timeout=1800)
        try:
            box.admin.netmera.config(profile_attributes="*")
            env = airflow_env(home, box, state_db, attributes)
            airflow = str(Path(sys.executable).with_name("airflow"))
            subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
            export = home / "customers.parquet"
            box.admin.optimove.export(str(export))
            before = counts(box)
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            conf = {"full_refresh": True, "export_path": str(export)}
            wall, peak, state = dag_test(env, "2026-11-10T03:00:00+00:00", conf, home / "dag-test.log")
            after = counts(box)
            out = report(
                f"first sync of {n:,} customers",
                wall,
                peak,
                state,
                last_run(state_db),
                {k: after[k] - before[k] for k in after},
                0,
                floor,
            )
            print(f"   machine load before the run: {uptime}")
            rows.append((n, out))
        finally:
            box.stop()
            shutil.rmtree(home, ignore_errors=True)
    print("\n## scale curve (first sync, full refresh)")
    print(f"{'customers':>10} {'wall s':>8} {'plan s':>8} {'peak RSS MiB':>13} {'load profiles/s':>16} {'of floor':>9}")
    for n, o in rows:
        print(
            f"{n:>10,} {o['wall']:>8.1f} {o['plan']:>8.1f} {o['peak'] / 2**20:>13.0f} {o['load_rate']:>16,.0f} "
            f"{o['load_rate'] / floor:>9.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
