"""Real runs of ``optimove_user_sync`` (``dag.test()``) against the sandbox over HTTP, on SQLite and PostgreSQL.

Expected Netmera state comes from an oracle independent of the code under test: Optimove's current values (a
sandbox export) mapped by ``sync_oracle`` (a separate reference implementation), for the users Netmera knows, plus
literal spot checks. Request counts come from the sandbox's own counters.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.sandbox.data import Dataset
from optimove_netmera.settings import load_settings
from optimove_netmera.store import get_engine
from optimove_netmera.store.models import CustomerSnapshot, DeadLetter, SyncRun
from sync_oracle import ext_id, profile, read_csv_export

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "optimove_user_sync"
SET = "POST /rest/3.0/setProfileAttributes"
UNSET = "POST /rest/3.0/unsetProfileAttributes"
PROBE = "POST /rest/3.0/untagUsers"
BATCH = 100
CUSTOMERS = 1000
KNOWN = Dataset(seed=7, customers=CUSTOMERS)
ALL_IDS = [f"C{i:07d}" for i in range(1, CUSTOMERS + 1)]
N_KNOWN = sum(KNOWN.netmera_known(c) for c in ALL_IDS)
MAPPED = {a.optimove for a in load_settings().attributes}

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def sync_env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Connections to the sandbox, a fresh state DB, small batches, no task retries (failures show at once).

    The Optimove window is widened to 1000 calls / 10 s on both sides so a test's several runs are not paced.
    Netmera is as strict as the real one: only the mapping's attributes are defined, with their types; any other
    key or a wrong type is dropped silently (200), which the sync's verify step must catch.
    """
    box = sandbox_reset
    box.admin.optimove.config(rate_limit={"calls": 1000, "period": 10})
    box.admin.netmera.config(profile_attributes={a.netmera: a.type for a in load_settings().attributes})
    fast = {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "max_attempts": 6}
    limits = {"rate_limit_calls": 1000, "rate_limit_period": 10}
    optimove = {"conn_type": "optimove", "host": box.optimove_url, "extra": {"api_key": box.optimove_api_key}}
    optimove["extra"] |= fast | limits
    netmera = {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key, "extra": fast}
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMOVE_DEFAULT", json.dumps(optimove))
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(netmera))
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", db_url)
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "0")
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__BATCH_SIZE", str(BATCH))
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__BATCHES_PER_TASK", "3")
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__DATA_READY_POKE_SECONDS", "1")
    return box


def run_sync(conf: dict[str, Any] | None = None, logical_date: dt.datetime | None = None) -> Any:
    """One real DAG run through ``dag.test()`` (the DAG file parsed fresh, with the test's environment)."""
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "optimove_user_sync.py"))
    assert bag.import_errors == {}, bag.import_errors
    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:  # the same logical date and run_after: the same run_id, i.e. the same DAG run
        kwargs["logical_date"] = kwargs["run_after"] = logical_date
    return bag.get_dag(DAG_ID).test(**kwargs)


def xcom(dr: Any, task_id: str) -> Any:
    """The return value of one (unmapped) task instance of the run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dr.run_id, key="return_value", task_ids=task_id, dag_ids=dr.dag_id, map_indexes=-1
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def states(dr: Any) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dr.get_task_instances()}


def calls(box: Any, endpoint: str, status: str = "200") -> int:
    return box.admin.netmera.requests()["counts"].get(endpoint, {}).get(status, 0)


def expected_profiles(box: Any, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Netmera's expected profiles by extId: Optimove's current rows through the oracle, for known users."""
    export = tmp_path / "expected.csv"
    box.admin.optimove.export(str(export))
    mapping = [(a.optimove, a.netmera, a.type) for a in load_settings().attributes]
    out = {}
    for cid, raw in read_csv_export(export).items():
        if KNOWN.netmera_known(cid):
            out[ext_id(cid)] = profile(raw, mapping)
    return out


def netmera_profiles(box: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    while True:
        page = box.admin.netmera.profiles(offset=len(out), limit=1000)
        out |= {p["extId"]: p["profile"] for p in page["profiles"]}
        if len(out) >= page["total"] or not page["profiles"]:
            return out


def assert_netmera_matches(box: Any, tmp_path: Path) -> None:
    want, got = expected_profiles(box, tmp_path), netmera_profiles(box)
    assert set(got) == set(want), (len(got), len(want))
    diffs = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not diffs, list(diffs.items())[:3]


# Literal spot checks (the seed-7 sandbox's first customers, converted by hand; dates: `date -u -d DAY +%s`).
SPOT_CHECKS: dict[str, dict[str, Any]] = {
    "C0000001": {  # Gender is "NULL" in Optimove: absent
        "name": "Lucas", "surname": "Demir", "country": "FR", "city": "Paris", "language": "fr",
        "segment": "Platinum", "favoriteCategory": "Travel", "age": 73, "ltv": 23989.94, "score": 99,
        "totalOrders": 124, "isVip": False, "optIn": False, "pushEnabled": False,
        "dateOfBirth": 105840000000, "registrationDate": 1503532800000, "lastOrderDate": 1674345600000,
    },
    "C0000003": {  # City is "NULL" in Optimove: absent
        "name": "Noah", "surname": "Fischer", "country": "NL", "language": "nl", "gender": "M",
        "segment": "Bronze", "favoriteCategory": "Home", "age": 37, "ltv": 1168.18, "score": 99,
        "totalOrders": 203, "isVip": False, "optIn": True, "pushEnabled": True,
        "dateOfBirth": 987724800000, "registrationDate": 1594857600000, "lastOrderDate": 1686614400000,
    },
}  # fmt: skip


def last_run(db_url: str) -> dict[str, Any]:
    with get_engine(db_url).connect() as conn:
        return dict(conn.execute(sa.select(SyncRun).order_by(SyncRun.id.desc()).limit(1)).one()._mapping)


def snapshot_size(db_url: str) -> int:
    with get_engine(db_url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(CustomerSnapshot)).scalar_one()


def first_sync(box: Any, db_url: str) -> None:
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert snapshot_size(db_url) == N_KNOWN


def test_first_run_then_no_change_then_k_changes(sync_env: Any, db_url: str, tmp_path: Path) -> None:
    box = sync_env
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert_netmera_matches(box, tmp_path)
    assert {c: profile_of(box, c) for c in SPOT_CHECKS} == SPOT_CHECKS
    first = last_run(db_url)
    assert first["status"] == "success" and first["params"]["mode"] == "initial"
    assert first["counts"]["plan"]["changed"] == CUSTOMERS
    assert first["counts"]["changes"] == {"delivered": N_KNOWN, "not_found": CUSTOMERS - N_KNOWN}
    assert calls(box, SET) == math.ceil(N_KNOWN / BATCH)  # batches hold only users Netmera knows
    assert calls(box, PROBE) == math.ceil(CUSTOMERS / 1000)  # new extIds are checked 1000 per call
    assert calls(box, UNSET) == 0
    assert snapshot_size(db_url) == N_KNOWN
    assert first["counts"]["verify"]["profiles_read"] == N_KNOWN  # the first run of the mapping: read back
    k = next(c for c in ALL_IDS if KNOWN.netmera_known(c))
    with NetmeraClient(box.netmera_url, box.netmera_api_key) as netmera:  # the fixture's Netmera is strict
        netmera.set_profile_attributes([{"extId": k, "profile": {"notMapped": "x", "ltv": "not a number"}}])
    assert "notMapped" not in profile_of(box, k) and profile_of(box, k).get("ltv") != "not a number"

    before = {e: calls(box, e) for e in (SET, UNSET, PROBE)}
    dr = run_sync()
    assert dr.state == "success", states(dr)
    second = last_run(db_url)
    assert second["params"]["mode"] == "incremental"
    assert second["counts"]["plan"]["changed"] == 0
    assert second["counts"]["plan"]["carried_over"] == CUSTOMERS - N_KNOWN
    assert calls(box, SET) == before[SET] and calls(box, UNSET) == before[UNSET]  # zero profile writes
    assert calls(box, PROBE) == before[PROBE] + 1  # the unknown customers are checked again, in one batch

    changed = box.admin.optimove.change_customers(20, empty=5)
    touched = [c for c in changed["changed"] if KNOWN.netmera_known(c)]
    to_unset = [c for c, attrs in changed["emptied"].items() if KNOWN.netmera_known(c) and set(attrs) & MAPPED]
    before = {e: calls(box, e) for e in (SET, UNSET)}
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert_netmera_matches(box, tmp_path)
    third = last_run(db_url)
    assert third["counts"]["plan"]["changed"] == 20
    assert third["counts"]["plan"]["unset_entries"] == len(to_unset)
    assert third["counts"]["changes"]["delivered"] == len(touched)
    assert calls(box, SET) - before[SET] == math.ceil(len(touched) / BATCH)
    assert calls(box, UNSET) - before[UNSET] == (1 if to_unset else 0)


def test_faults_storms_resets_and_token_expiry(sync_env: Any, db_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    box = sync_env
    legacy = {
        "conn_type": "optimove",
        "host": box.optimove_url,
        "login": box.optimove_user,
        "password": box.optimove_password,
        "extra": {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "max_attempts": 8, "rate_limit_calls": 1000},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMOVE_DEFAULT", json.dumps(legacy))
    monkeypatch.setenv(
        "AIRFLOW_CONN_NETMERA_DEFAULT",
        json.dumps(
            {
                "conn_type": "netmera",
                "host": box.netmera_url,
                "password": box.netmera_api_key,
                "extra": {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "max_attempts": 10},
            }
        ),
    )
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__BATCH_SIZE", "50")
    box.admin.netmera.set_faults(
        [
            {"endpoint": "/rest/3.0/*", "error_rate": 0.1, "error_status": 503},
            {"endpoint": "/rest/3.0/setProfileAttributes", "storm_429": 5, "after": 3},
            {"endpoint": "/rest/3.0/*", "reset_rate": 0.05},
        ]
    )
    box.admin.optimove.set_faults(
        [
            {"endpoint": "/current/customers/*", "error_rate": 0.1, "error_status": 500},
            {"endpoint": "/current/customers/*", "storm_429": 4, "after": 5},
            {"endpoint": "*", "reset_rate": 0.05},
        ]
    )
    stop = threading.Event()

    def expire_tokens() -> None:  # Optimove tokens expire mid-run: the client must log in again, transparently
        while not stop.wait(1.5):
            box.admin.optimove.expire_tokens()

    expirer = threading.Thread(target=expire_tokens, daemon=True)
    expirer.start()
    try:
        dr = run_sync()
    finally:
        stop.set()
        expirer.join()
    assert dr.state == "success", states(dr)
    injected_n = box.admin.netmera.faults()["injected"]
    injected_o = box.admin.optimove.faults()["injected"]
    assert injected_n.get("error") and injected_n.get("429") and injected_n.get("reset"), injected_n
    assert injected_o.get("error") and injected_o.get("429"), injected_o
    assert box.admin.optimove.count("/current/general/login", status=200, method="POST") >= 2  # re-logged in
    box.admin.netmera.clear_faults()
    box.admin.optimove.clear_faults()
    assert_netmera_matches(box, tmp_path)
    assert last_run(db_url)["counts"]["changes"] == {"delivered": N_KNOWN, "not_found": CUSTOMERS - N_KNOWN}


def test_failure_mid_load_then_clear_resumes_without_resending(sync_env: Any, db_url: str, tmp_path: Path) -> None:
    box = sync_env
    # Netmera accepts 4 profile writes, then is down for good (every attempt of every later request fails).
    box.admin.netmera.set_faults(
        [{"endpoint": "/rest/3.0/setProfileAttributes", "after": 4, "error_rate": 1.0, "error_status": 503}]
    )
    when = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    dr = run_sync(logical_date=when)
    assert dr.state == "failed", states(dr)
    assert states(dr)["report[-1]"] != "success"
    assert calls(box, SET) == 4
    with get_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CustomerSnapshot)).scalar_one() > 0
    assert last_run(db_url)["status"] == "failed"  # finding 7: not left "running"
    assert states(dr)["record_failure[-1]"] == "failed"

    box.admin.netmera.clear_faults()
    dr = run_sync(logical_date=when)  # the same DAG run, every task cleared (what "Clear" does in the UI)
    assert dr.state == "success", states(dr)
    assert calls(box, SET) == math.ceil(N_KNOWN / BATCH)  # the 4 delivered batches were not sent again
    assert_netmera_matches(box, tmp_path)
    run = last_run(db_url)
    assert run["status"] == "success"
    assert run["counts"]["batches"] == {"delivered": math.ceil(N_KNOWN / BATCH)}


def test_guard_param_and_dry_run_never_ask(sync_env: Any, db_url: str) -> None:
    """Over the limit, a dry run only reports the guard, and a run whose max_change_ratio allows it sends at once.

    (A tripped guard waiting for Approve/Reject is tested in ``test_sync_guard.py`` with a real API server.)
    """
    box = sync_env
    first_sync(box, db_url)
    box.admin.optimove.change_customers(600)
    before = calls(box, SET)
    dr = run_sync({"dry_run": True})
    assert dr.state == "success", states(dr)
    guard = last_run(db_url)["counts"]["plan"]["guard"]
    assert guard["tripped"] and guard["changed"] / guard["known"] > 0.5
    assert xcom(dr, "approve_changes") == {"decision": "not needed", "tripped": True}
    assert calls(box, SET) == before
    dr = run_sync({"max_change_ratio": 1.0})
    assert dr.state == "success", states(dr)
    assert xcom(dr, "approve_changes") == {"decision": "not needed", "tripped": False}
    assert calls(box, SET) > before


def test_dry_run_sends_nothing_and_keeps_the_snapshot(sync_env: Any, db_url: str) -> None:
    box = sync_env
    dr = run_sync({"dry_run": True})
    assert dr.state == "success", states(dr)
    assert box.admin.netmera.write_calls() == 0 and calls(box, PROBE) == 0
    assert snapshot_size(db_url) == 0
    run = last_run(db_url)
    assert run["status"] == "dry_run"
    plan = run["counts"]["plan"]
    assert plan["changed"] == CUSTOMERS and plan["set_batches"] == math.ceil(CUSTOMERS / BATCH)
    assert set(plan["attributes_changed"]) <= {a.netmera for a in load_settings().attributes}
    assert all(isinstance(v, int) for v in plan["attributes_changed"].values())  # counts, never values
    # A dry run does not count as a sync: the next real run is still the initial one.
    dr = run_sync()
    assert dr.state == "success" and last_run(db_url)["params"]["mode"] == "initial"


def test_full_refresh_from_an_export_file(sync_env: Any, db_url: str, tmp_path: Path) -> None:
    box = sync_env
    export = tmp_path / "customers.parquet"
    box.admin.optimove.export(str(export))
    dr = run_sync({"full_refresh": True, "export_path": str(export)})
    assert dr.state == "success", states(dr)
    assert last_run(db_url)["params"]["mode"] == "export"
    assert_netmera_matches(box, tmp_path)
    dr = run_sync({"full_refresh": True})  # no export_path: fails with a message naming the param
    assert dr.state == "failed"


def test_unknown_attribute_fails_the_first_task_naming_it(sync_env: Any, monkeypatch: Any) -> None:
    box = sync_env
    monkeypatch.setenv(
        "OPTIMOVE_NETMERA__ATTRIBUTES",
        '[{"optimove": "FirstName", "netmera": "name"}, {"optimove": "Nope", "netmera": "x"}]',
    )
    dr = run_sync()
    assert dr.state == "failed"
    st = states(dr)
    assert st["open_run[-1]"] == "failed" and st["extract[-1]"] != "success"
    assert box.admin.netmera.write_calls() == 0


def test_permanent_rejection_is_dead_lettered_and_the_run_is_not_green(
    sync_env: Any, db_url: str, monkeypatch: Any
) -> None:
    """A 400 is not retried: the batch is dead-lettered, everyone else delivered, the run fails naming the replay."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    first_sync(box, db_url)
    k1, k2, k3 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:3]
    # Netmera rejects the whole request when one entry holds a wrong type (the panel's "reject invalid" setting)
    box.admin.netmera.config(
        reject_invalid_entries=True, profile_attributes={"name": "string", "ltv": "number", "isVip": "string"}
    )
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__BATCH_SIZE", "1")  # one customer per request
    set_values(
        box,
        {
            k1: {"FirstName": "Rej", "LTV": "1", "IsVIP": "yes"},  # isVip is a boolean: rejected
            k2: {"FirstName": "Ok", "LTV": "5", "IsVIP": None},
            k3: {"FirstName": "Ok3", "LTV": "6", "IsVIP": None},
        },
    )
    dr = run_sync()
    assert dr.state == "failed", states(dr)
    st = states(dr)
    assert st["report[-1]"] == "failed" and st["verify[-1]"] == "success"
    assert all(v == "success" for k, v in st.items() if k.startswith("load["))
    run = last_run(db_url)
    assert run["status"] == "failed"
    assert run["error"].startswith("1 customers dead-lettered") and "Replay" in run["error"]
    assert run["counts"]["batches"] == {"dead": 1, "delivered": 4}  # k2 and k3: a set and an unset each
    assert profile_of(box, k2) == {"name": "Ok", "ltv": 5} and profile_of(box, k3) == {"name": "Ok3", "ltv": 6}
    with get_engine(db_url).connect() as conn:
        letters = conn.execute(sa.select(DeadLetter.id, DeadLetter.kind, DeadLetter.reason)).all()
    assert len(letters) == 1 and letters[0].kind == "profile_set" and "400" in letters[0].reason

    # The replay path the error names: fix the cause, Replay the letter, the next run delivers it and is green.
    from optimove_netmera.ui.actions import replay_dead_letters

    box.admin.netmera.config(profile_attributes={"name": "string", "ltv": "number", "isVip": "boolean"})
    replay_dead_letters(get_engine(db_url), [letters[0].id], "tester")
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert profile_of(box, k1) == {"name": "Rej", "ltv": 1, "isVip": True}


def test_a_value_netmera_drops_fails_the_check_then_clear_delivers(
    sync_env: Any, db_url: str, monkeypatch: Any, tmp_path: Path
) -> None:
    """Netmera answers 200 and drops an undefined key: the verify step fails naming it; fix, clear, exact."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    box.admin.netmera.config(profile_attributes={"name": "string", "ltv": "number"})  # isVip not defined
    k1, k2 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:2]
    set_values(
        box,
        {
            k1: {"FirstName": "Ada", "LTV": "12.50", "IsVIP": "yes"},
            k2: {"FirstName": "Grace", "LTV": "7", "IsVIP": "false"},
        },
    )
    when = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
    dr = run_sync(logical_date=when)
    assert dr.state == "failed", states(dr)
    st = states(dr)
    assert st["verify[-1]"] == "failed" and st["report[-1]"] != "success"
    assert calls(box, "POST /rest/3.0/setProfileAttributes", "400") == 0  # a silent drop: every write was a 200
    run = last_run(db_url)
    assert run["status"] == "failed"
    assert "define `isVip` as boolean in Netmera, then clear" in run["error"]
    assert "`name`" not in run["error"] and "`ltv`" not in run["error"]
    verify = run["counts"]["verify"]
    assert verify["first_run"] is True and verify["profiles_read"] == N_KNOWN  # the whole first run, under the cap
    assert set(verify["not_kept"]) == {"isVip"} and verify["checked"]["name"] == N_KNOWN
    assert profile_of(box, k1) == {"name": "Ada", "ltv": 12.5}  # nothing else lost
    assert profile_of(box, k2) == {"name": "Grace", "ltv": 7}
    netmera_calls = sum(sum(v.values()) for v in box.admin.netmera.requests()["counts"].values())
    assert run["counts"]["netmera_calls"] == netmera_calls  # the read-back counts as API calls
    assert calls(box, "GET /rest/3.0/getProfileAttributes") == N_KNOWN

    box.admin.netmera.config(profile_attributes={"name": "string", "ltv": "number", "isVip": "boolean"})
    dr = run_sync(logical_date=when)  # the same DAG run, cleared
    assert dr.state == "success", states(dr)
    assert profile_of(box, k1) == {"name": "Ada", "ltv": 12.5, "isVip": True}
    assert profile_of(box, k2) == {"name": "Grace", "ltv": 7, "isVip": False}
    assert_netmera_matches(box, tmp_path)
    run = last_run(db_url)
    assert run["status"] == "success" and run["counts"]["verify"]["not_kept"] == {}

    set_values(box, {k1: {"LTV": "13"}})  # a later run of the same mapping reads a sample, every attribute once
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__VERIFY_SAMPLE", "0")
    dr = run_sync()
    assert dr.state == "success", states(dr)
    verify = last_run(db_url)["counts"]["verify"]
    assert verify["first_run"] is False and verify["profiles_read"] == 1 and verify["written"] == 1
    assert verify["checked"] == {"isVip": 1, "ltv": 1, "name": 1}


def test_waits_for_optimove_data_then_proceeds(sync_env: Any, db_url: str) -> None:
    box = sync_env
    today = dt.datetime.now(dt.UTC).date()
    box.admin.optimove.config(last_data_update=(today - dt.timedelta(days=3)).isoformat())

    pokes = "/current/general/GetLastDataUpdate"
    arrived = threading.Event()

    def data_arrives() -> None:  # once the sensor has seen the stale date twice (a condition, not a timer)
        deadline = time.monotonic() + 240
        while box.admin.optimove.count(pokes) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        box.admin.optimove.config(last_data_update=(today - dt.timedelta(days=1)).isoformat())
        arrived.set()

    threading.Thread(target=data_arrives, daemon=True).start()
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert arrived.is_set() and box.admin.optimove.count(pokes) >= 3  # stale twice, then the fresh date
    assert last_run(db_url)["window_end"] == today - dt.timedelta(days=1)


def test_data_wait_times_out_with_a_clear_failure(sync_env: Any, monkeypatch: Any) -> None:
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__DATA_READY_TIMEOUT_HOURS", "0.001")
    box.admin.optimove.config(last_data_update="2020-01-01")
    dr = run_sync()
    assert dr.state == "failed"
    assert states(dr)["wait_for_optimove_data[-1]"] == "failed"
    assert box.admin.netmera.write_calls() == 0


def test_bad_netmera_key_fails_without_discarding_anything(sync_env: Any, db_url: str, monkeypatch: Any) -> None:
    box = sync_env
    bad = {"conn_type": "netmera", "host": box.netmera_url, "password": "not-the-key"}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(bad))
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__CHECK_UNKNOWN_EXT_IDS", "false")  # reach the load with a bad key
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "2")  # what an outage would get ...
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRY_DELAY_SECONDS", "0")
    when = dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC)
    dr = run_sync(logical_date=when)
    assert dr.state == "failed"
    tries = {ti.task_id: ti.try_number for ti in dr.get_task_instances() if ti.state == "failed"}
    assert tries.get("load") == 1, f"a wrong key is a configuration fault: no retries ({tries})"
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "0")
    run = last_run(db_url)
    assert run["status"] == "failed" and run["counts"].get("batches") is None
    with get_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar_one() == 0
    assert calls(box, SET, "403") >= 1 and calls(box, SET) == 0
    good = {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(good))
    dr = run_sync(logical_date=when)  # the key fixed, the run cleared: it resumes and delivers everyone
    assert dr.state == "success", states(dr)
    assert calls(box, SET) == math.ceil(CUSTOMERS / BATCH)  # no probe here: unknown users are sent and dropped


def test_existence_answer_without_the_list_is_unknown_and_carried(sync_env: Any, db_url: str, tmp_path: Path) -> None:
    """Finding 4: a checkExistence answer with no ``notExist`` list never counts as "everyone exists"."""
    box = sync_env
    box.admin.netmera.config(existence_answer="empty")  # Netmera ignores checkExistence: 200, no body
    dr = run_sync()
    assert dr.state == "success", states(dr)
    run = last_run(db_url)
    assert run["counts"]["changes"] == {"not_found": CUSTOMERS}  # nobody recorded delivered
    assert run["status"] == "success"  # expected in normal operation: green, and the report says so plainly
    statement = f"{CUSTOMERS} customers not delivered: unknown to Netmera, carried to the next run"
    assert xcom(dr, "report")["undelivered"].startswith(statement)
    assert run["counts"]["plan"]["existence_unknown"] == CUSTOMERS
    assert calls(box, SET) == 0 and calls(box, PROBE) == 1
    assert snapshot_size(db_url) == 0 and netmera_profiles(box) == {}

    box.admin.netmera.config(existence_answer="list")  # the documented answer again: the carried customers go out
    dr = run_sync()
    assert dr.state == "success", states(dr)
    run = last_run(db_url)
    assert run["counts"]["plan"]["carried_over"] == CUSTOMERS and run["counts"]["plan"]["existence_unknown"] == 0
    assert run["counts"]["changes"] == {"delivered": N_KNOWN, "not_found": CUSTOMERS - N_KNOWN}
    assert snapshot_size(db_url) == N_KNOWN
    assert_netmera_matches(box, tmp_path)


SMALL_MAPPING = json.dumps(
    [
        {"optimove": "FirstName", "netmera": "name", "type": "string"},
        {"optimove": "LTV", "netmera": "ltv", "type": "number"},
        {"optimove": "IsVIP", "netmera": "isVip", "type": "boolean"},
    ]
)
UNKNOWN_IDS = [c for c in ALL_IDS if not KNOWN.netmera_known(c)]


def profile_of(box: Any, ext_id: str) -> dict[str, Any]:
    stored = box.admin.netmera.profile(ext_id)
    return stored["profile"] if stored else {}


def set_values(box: Any, values: dict[str, dict[str, Any]], date: str | None = None) -> None:
    changes = [{"customer_id": cid, "attributes": attrs} for cid, attrs in values.items()]
    box.admin.optimove.change_customers(changes=changes, date=date)


def test_unknown_customer_receives_the_attributes_after_registering(
    sync_env: Any, db_url: str, monkeypatch: Any
) -> None:
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    u = UNKNOWN_IDS[0]
    set_values(box, {u: {"FirstName": "Ada", "LTV": "12.50", "IsVIP": "yes"}})
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert box.admin.netmera.user(u) is None and profile_of(box, u) == {}
    box.admin.netmera.add_users([u])  # the customer installs the app: Netmera knows the extId now
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert profile_of(box, u) == {"name": "Ada", "ltv": 12.5, "isVip": True}
    assert last_run(db_url)["counts"]["plan"]["not_found"] == len(UNKNOWN_IDS) - 1  # the others are still carried


def test_resync_param_resends_customers_the_snapshot_says_were_delivered(
    sync_env: Any, db_url: str, monkeypatch: Any
) -> None:
    """Finding 4: customers recorded delivered while Netmera did not know them are recovered by ``resync``."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    u1, u2 = UNKNOWN_IDS[:2]
    k, k2, k3 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:3]
    set_values(
        box,
        {
            u1: {"FirstName": "Ada", "LTV": "12.50", "IsVIP": "yes"},
            u2: {"FirstName": "Grace", "LTV": "7", "IsVIP": "false"},
            k: {"FirstName": "Linus", "LTV": "3", "IsVIP": "true"},
            k2: {"FirstName": "Alan", "LTV": None, "IsVIP": "false"},
        },
    )
    five_days_ago = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=5)).isoformat()
    set_values(box, {k3: {"FirstName": None, "LTV": None, "IsVIP": None}}, five_days_ago)  # no page lists k3
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__CHECK_UNKNOWN_EXT_IDS", "false")  # how customers got lost
    dr = run_sync()
    assert dr.state == "success", states(dr)
    # u1, u2 "delivered" (Netmera dropped them); k3 has no value, so no changers page lists it
    assert last_run(db_url)["counts"]["changes"] == {"delivered": CUSTOMERS - 1}
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__CHECK_UNKNOWN_EXT_IDS", "true")
    box.admin.netmera.add_users([u1, u2])
    box.admin.netmera.config(existence_answer="list")
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert profile_of(box, u1) == {} and profile_of(box, u2) == {}  # the snapshot says delivered: nothing sent

    set_values(box, {k: {"LTV": None}})  # k's value is emptied in Optimove: an ordinary change
    # Netmera holds values the snapshot knows nothing of (written by someone else): a resync clears them.
    with NetmeraClient(box.netmera_url, box.netmera_api_key) as netmera:
        netmera.set_profile_attributes([{"extId": k2, "profile": {"ltv": 99}}, {"extId": k3, "profile": {"name": "x"}}])
    sets, unsets = calls(box, SET), calls(box, UNSET)
    dr = run_sync({"resync": [u1, k3]})
    assert dr.state == "success", states(dr)
    assert profile_of(box, u1) == {"name": "Ada", "ltv": 12.5, "isVip": True}
    assert profile_of(box, u2) == {}
    assert profile_of(box, k) == {"name": "Linus", "isVip": True}  # the ordinary change went out too
    assert profile_of(box, k3) == {}  # listed, in no page: every mapped attribute is empty, so all are unset
    assert profile_of(box, k2) == {"name": "Alan", "isVip": False, "ltv": 99}
    plan = last_run(db_url)["counts"]["plan"]
    assert plan["resynced"] == 2 and plan["changed"] == 3
    assert calls(box, SET) - sets == 1 and calls(box, UNSET) - unsets == 1

    dr = run_sync({"resync": "all", "max_change_ratio": 0.01})  # a resync never trips the guard
    assert dr.state == "success", states(dr)
    assert profile_of(box, u2) == {"name": "Grace", "ltv": 7, "isVip": False}
    assert profile_of(box, u1) == {"name": "Ada", "ltv": 12.5, "isVip": True}
    assert profile_of(box, k) == {"name": "Linus", "isVip": True}
    assert profile_of(box, k2) == {"name": "Alan", "isVip": False}
    assert profile_of(box, k3) == {}
    run = last_run(db_url)
    assert run["counts"]["plan"]["resynced"] == CUSTOMERS  # the snapshot's customers, k3 included
    assert run["counts"]["changes"] == {"delivered": N_KNOWN + 2, "not_found": CUSTOMERS - N_KNOWN - 2}

    dr = run_sync({"resync": "C1,C2"})
    assert dr.state == "failed" and states(dr)["open_run[-1]"] == "failed"


def test_a_failed_run_is_recorded_failed_and_counts_every_try(sync_env: Any, db_url: str, monkeypatch: Any) -> None:
    """Finding 7: the sync_runs row ends ``failed``; the report counts the calls and 429s of every try."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "1")
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRY_DELAY_SECONDS", "0")
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__EXTRACT_CONCURRENCY", "1")  # one request at a time: exact counts
    # The first try's first changers request gets 429 on all 6 attempts (the client gives up, the task fails);
    # the second try finds Optimove well again. Same for the probe (Netmera) in the plan task.
    box.admin.optimove.set_faults([{"endpoint": "/current/customers/*", "rate_429": 1.0, "count": 6}])
    box.admin.netmera.set_faults([{"endpoint": "/rest/3.0/untagUsers", "rate_429": 1.0, "count": 6}])
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert states(dr)["record_failure[-1]"] == "skipped"
    run = last_run(db_url)
    assert run["status"] == "success"
    assert run["counts"]["optimove_429s"] == 6 and run["counts"]["netmera_429s"] == 6
    changers = box.admin.optimove.count("/current/customers/GetCustomerAttributeChangers")
    assert run["counts"]["optimove_calls"] == changers  # every request, the first try's included
    netmera_calls = sum(sum(v.values()) for v in box.admin.netmera.requests()["counts"].values())
    assert run["counts"]["netmera_calls"] == netmera_calls

    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "0")
    bad = {"conn_type": "netmera", "host": box.netmera_url, "password": "not-the-key"}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(bad))
    box.admin.optimove.change_customers(5)
    dr = run_sync()
    assert dr.state == "failed"
    st = states(dr)
    assert st["plan[-1]"] == "failed" and st["record_failure[-1]"] == "failed"
    run = last_run(db_url)
    assert run["status"] == "failed" and run["error"] and run["finished_at"] is not None
    assert run["counts"]["netmera_calls"] >= 1  # the failed try's 403 is counted


def test_change_and_revert_across_three_days_leaves_netmera_exact(sync_env: Any, db_url: str, monkeypatch: Any) -> None:
    """Finding 3: a value changed on day D and reverted on D+1 is reverted in Netmera; exact after every run.

    Optimove's changers compare the value at the start of StartDate with the value at the end of EndDate (the
    sandbox does exactly that); each run's data date is the next day.
    """
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    c1, c2, c3, c4 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:4]
    y = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    day = [(y + dt.timedelta(days=n)).isoformat() for n in range(4)]  # day[0]: the initial data date

    def run_day(n: int, changes: list[dict[str, dict[str, Any]]], expected: dict[str, dict[str, Any]]) -> None:
        for values in changes:  # in order, all dated day n (several on one day: only the last one stands)
            set_values(box, values, day[n])
        box.admin.optimove.config(last_data_update=day[n])
        dr = run_sync()
        assert dr.state == "success", states(dr)
        assert last_run(db_url)["window_end"].isoformat() == day[n]
        assert {c: profile_of(box, c) for c in expected} == expected, f"after the run for {day[n]}"

    orig = {
        c1: {"FirstName": "Orig1", "LTV": "10", "IsVIP": "true"},
        c2: {"FirstName": "Orig2", "LTV": "20", "IsVIP": "false"},
        c3: {"FirstName": "Orig3", "LTV": "30", "IsVIP": "true"},
        c4: {"FirstName": "Orig4", "LTV": "40", "IsVIP": "false"},
    }
    run_day(
        0,
        [orig],
        {
            c1: {"name": "Orig1", "ltv": 10, "isVip": True},
            c2: {"name": "Orig2", "ltv": 20, "isVip": False},
            c3: {"name": "Orig3", "ltv": 30, "isVip": True},
            c4: {"name": "Orig4", "ltv": 40, "isVip": False},
        },
    )
    run_day(  # c1 and c3 change; c2 changes and reverts within the day
        1,
        [{c1: {"FirstName": "Ada"}, c3: {"LTV": "31"}, c2: {"FirstName": "Tmp"}}, {c2: {"FirstName": "Orig2"}}],
        {
            c1: {"name": "Ada", "ltv": 10, "isVip": True},
            c2: {"name": "Orig2", "ltv": 20, "isVip": False},
            c3: {"name": "Orig3", "ltv": 31, "isVip": True},
            c4: {"name": "Orig4", "ltv": 40, "isVip": False},
        },
    )
    set_values(box, {c4: {"LTV": "41"}}, day[1])  # recorded late for day 1, after its run: the next run finds it
    run_day(  # c1 and c3 revert what changed yesterday; c2 and c3 change something else
        2,
        [{c1: {"FirstName": "Orig1"}, c3: {"LTV": "30", "IsVIP": "false"}, c2: {"IsVIP": "true"}}],
        {
            c1: {"name": "Orig1", "ltv": 10, "isVip": True},
            c2: {"name": "Orig2", "ltv": 20, "isVip": True},
            c3: {"name": "Orig3", "ltv": 30, "isVip": False},
            c4: {"name": "Orig4", "ltv": 41, "isVip": False},
        },
    )
    run_day(  # c2 and c3 revert yesterday's change; c1's LTV is emptied (unset in Netmera)
        3,
        [{c2: {"IsVIP": "false"}, c3: {"IsVIP": "true"}, c1: {"LTV": None}}],
        {
            c1: {"name": "Orig1", "isVip": True},
            c2: {"name": "Orig2", "ltv": 20, "isVip": False},
            c3: {"name": "Orig3", "ltv": 30, "isVip": True},
            c4: {"name": "Orig4", "ltv": 41, "isVip": False},
        },
    )


def test_an_invalid_value_is_absent_in_netmera_on_every_path(
    sync_env: Any, db_url: str, monkeypatch: Any, tmp_path: Path
) -> None:
    """Finding 8: a value that cannot be coerced ends absent, whether it was valid before or never was."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    c1, c2 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:2]
    y = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    set_values(
        box, {c1: {"FirstName": "N1", "LTV": "12", "IsVIP": "true"}, c2: {"FirstName": "N2", "LTV": "x", "IsVIP": "no"}}
    )
    dr = run_sync()  # fresh: c2's invalid LTV is never sent
    assert dr.state == "success", states(dr)
    assert profile_of(box, c2) == {"name": "N2", "isVip": False}
    assert profile_of(box, c1) == {"name": "N1", "ltv": 12, "isVip": True}

    nxt = (y + dt.timedelta(days=1)).isoformat()
    set_values(box, {c1: {"LTV": "twelve", "IsVIP": "maybe"}}, nxt)  # valid before, invalid now
    box.admin.optimove.config(last_data_update=nxt)
    dr = run_sync()  # incremental: the old valid values are unset, not kept
    assert dr.state == "success", states(dr)
    assert profile_of(box, c1) == {"name": "N1"}
    assert last_run(db_url)["counts"]["plan"]["dropped"]["invalid_boolean"] == 1  # counted by reason

    export = tmp_path / "customers.csv"
    box.admin.optimove.export(str(export))
    dr = run_sync({"full_refresh": True, "export_path": str(export), "resync": [c1, c2]})  # full row again
    assert dr.state == "success", states(dr)
    assert profile_of(box, c1) == {"name": "N1"} and profile_of(box, c2) == {"name": "N2", "isVip": False}
