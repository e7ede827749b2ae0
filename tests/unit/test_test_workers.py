"""The suite's own isolation: `make test` splits the run across pytest-xdist workers (tests/conftest.py).

Each worker is a process of its own that inherits the controller's environment. Had the workers kept the Airflow
home the controller made (or one the shell exports), they would share one SQLite metadata database and one state
database: two workers' DAG runs would collide on a run_id, and a developer's own Airflow would be written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

PROBE = """
import json, os

import pytest

@pytest.mark.xdist_group("{name}")
def test_{name}():
    seen = {{k: os.environ.get(k) for k in ("PYTEST_XDIST_WORKER", "AIRFLOW_HOME", "OPTIMOVE_NETMERA_STATE_DB_URL",
                                             "OPTIMOVE_NETMERA_TEST_RUN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")}}
    with open(os.path.join(os.environ["PROBE_OUT"], "seen-{name}.json"), "w") as out:
        json.dump(seen, out)
"""


def test_each_worker_has_its_own_airflow_home_and_state_database(tmp_path: Path) -> None:
    """Two workers under a shell that exports its own Airflow home and metadata database: neither is used."""
    for name in ("one", "two"):
        (tmp_path / f"test_probe_{name}.py").write_text(PROBE.format(name=name))
    shell_home = tmp_path / "developers-airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(shell_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{shell_home}/airflow.db",
        "OPTIMOVE_NETMERA_STATE_DB_URL": f"sqlite:///{shell_home}/state.db",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "PROBE_OUT": str(tmp_path),
    }
    env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run in a worker: the probe run has its own
    basetemp = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:randomly", "-n", "2", "--dist", "loadgroup",
         "--basetemp", str(basetemp), "--rootdir", str(tmp_path), "-q", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("seen-*.json"))]
    assert len(seen) == 2, result.stdout[-2000:]
    assert {s["PYTEST_XDIST_WORKER"] for s in seen} == {"gw0", "gw1"}  # one probe on each worker
    homes = [s["AIRFLOW_HOME"] for s in seen]
    assert len(set(homes)) == 2 and str(shell_home) not in homes
    for s in seen:
        assert s["OPTIMOVE_NETMERA_STATE_DB_URL"] == f"sqlite:///{s['AIRFLOW_HOME']}/optimove_netmera_state.db"
    assert all(s["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] is None for s in seen)  # Airflow's default: inside the home
    assert len({s["OPTIMOVE_NETMERA_TEST_RUN"] for s in seen}) == 1  # one run id, the controller's
    assert not shell_home.exists()
