"""Every DAG file parses with no network or database access (both refused) and without importing pandas or pyarrow,
and bad settings fail at parse by name.

How fast parsing is belongs to the benchmarks; here the I/O is blocked, so a DAG file that reached for the
network or a database at parse time fails the test whatever the machine's load.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))

PROBE = r"""
import json, runpy, socket, sqlite3, sys
import airflow.sdk  # the framework's own import is not the DAG file's concern
import optimove_netmera.settings, optimove_netmera.sensors  # nor is the package's
import psycopg2, sqlalchemy
HEAVY = ("pandas", "pyarrow")
assert not [m for m in HEAVY if m in sys.modules], "imported before the DAG file"
calls = []
def refuse(*args, **kwargs):
    calls.append("network")
    raise OSError("network access while parsing a DAG file")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
def no_db(*a, **k):
    calls.append("database")
    raise RuntimeError("database access while parsing a DAG file")
sqlalchemy.engine.Engine.connect = no_db
sqlalchemy.engine.Engine.raw_connection = no_db
sqlite3.connect = no_db
psycopg2.connect = no_db
ns = runpy.run_path(sys.argv[1])
from airflow.sdk import DAG
dags = [v.dag_id for v in ns.values() if isinstance(v, DAG)]
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"dags": dags, "calls": calls, "heavy": heavy}))
"""


def parse(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_parses_without_io(path: Path) -> None:
    result = parse(path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["calls"] == [], f"{path.name} reached for {report['calls']} while parsing"
    assert report["dags"], f"{path.name} defines no DAG"
    # Airflow parses the file every min_file_process_interval and again at every task's start on a worker: the
    # sync's extract and plan import pandas and pyarrow (~0.7 s) in the tasks that use them, never at parse time
    assert report["heavy"] == [], f"{path.name} imports {report['heavy']} at parse time"


def test_the_io_probe_catches_a_dag_file_that_connects(tmp_path: Path) -> None:
    """The probe itself: a DAG file that opens a database or a socket at parse time is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text(
        "import socket, sqlalchemy\n"
        "from airflow.sdk import DAG\n"
        "for reach in (lambda: sqlalchemy.create_engine('sqlite://').connect(),\n"
        "              lambda: socket.create_connection(('127.0.0.1', 9))):\n"
        "    try:\n"
        "        reach()\n"
        "    except Exception:\n"
        "        pass\n"
        "dag = DAG('bad_dag', schedule=None)\n"
    )
    report = json.loads(parse(bad).stdout.strip().splitlines()[-1])
    assert report["calls"] == ["database", "network"] and report["dags"] == ["bad_dag"]


@pytest.mark.usefixtures("airflow_db")
def test_dagbag_has_no_import_errors() -> None:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert "optimove_user_sync" in bag.dag_ids
    dag = bag.get_dag("optimove_user_sync")
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.get_task("load").pool == "netmera_api"
    assert set(dag.params) == {"full_refresh", "dry_run", "since", "until", "max_change_ratio", "export_path", "resync"}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OPTIMOVE_NETMERA__SYNC__SCHEDULE": "nightly"}, "sync.schedule"),
        (
            {"OPTIMOVE_NETMERA__ATTRIBUTES": '[{"optimove": "Age", "netmera": "age", "type": "int"}]'},
            "attributes.0.type",
        ),
        ({"OPTIMOVE_NETMERA__SYNC__BATCH_SIZE": "2000"}, "sync.batch_size"),
    ],
)
def test_bad_settings_fail_at_parse_naming_the_setting(env: dict[str, str], needle: str) -> None:
    result = parse(REPO / "dags" / "optimove_user_sync.py", **env)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr[-2000:]


@pytest.mark.usefixtures("airflow_db")
def test_bad_params_are_rejected() -> None:
    from airflow.models import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    dag = DagBag(dag_folder=str(REPO / "dags" / "optimove_user_sync.py")).get_dag("optimove_user_sync")
    assert copy.deepcopy(dag.params).validate()["max_change_ratio"] == 0.5
    for bad in ({"max_change_ratio": 2}, {"dry_run": "yes"}, {"since": "yesterday"}, {"full_refresh": 1}):
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params.update(bad)
            params.validate()


@pytest.mark.usefixtures("airflow_db")
def test_every_param_declares_draft_7_and_uses_only_keywords_that_mean_the_same_there() -> None:
    """``runtime.param``'s draft 7 makes run creation cheaper; a keyword draft 7 does not know would check nothing."""
    from airflow.models import DagBag
    from optimove_netmera.runtime import PARAM_KEYWORDS, PARAM_SCHEMA_DRAFT

    bag = DagBag(dag_folder=str(REPO / "dags"))
    seen = 0
    for dag in bag.dags.values():
        for name in dag.params:
            schema = dict(dag.params.get_param(name).schema)
            assert schema.pop("$schema", None) == PARAM_SCHEMA_DRAFT, f"{dag.dag_id}.{name}: not made with param()"
            unknown = set(schema) - PARAM_KEYWORDS - {"format"}
            assert not unknown, f"{dag.dag_id}.{name} uses {sorted(unknown)}: add a keyword only if draft 7 has it"
            seen += 1
    assert seen >= 20


@pytest.mark.usefixtures("airflow_db")
def test_the_campaign_send_refuses_bad_params_where_runs_are_created() -> None:
    """The API server validates a run's conf against the serialized DAG's params (draft 7): bad values are refused."""
    from airflow.exceptions import ParamValidationError
    from airflow.models import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    sdk_dag = DagBag(dag_folder=str(REPO / "dags" / "optimove_campaign_send.py")).get_dag("optimove_campaign_send")
    served = DagSerialization.from_dict(DagSerialization.to_dict(sdk_dag))
    good = {"campaign_id": 7, "channel_id": 506, "event_time": "2026-12-07 10:00:00", "source": "webhook"}
    assert served.params.deep_merge(good).validate()["campaign_id"] == 7
    for bad in (
        {"campaign_id": 0},  # minimum
        {"campaign_id": "7"},  # type
        {"event_time": "2026-12-07T10:00:00"},  # pattern
        {"source": "optimove"},  # enum
        {"dry_run": "no"},  # boolean
        {"event_id": 1.5},  # integer or null
    ):
        with pytest.raises(ParamValidationError):
            served.params.deep_merge({**good, **bad}).validate()
