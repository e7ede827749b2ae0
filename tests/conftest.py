"""Shared fixtures: an isolated Airflow home, and the sandbox servers as a real subprocess over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optimove_netmera.sandbox.process import SandboxProcess, start_sandbox
from optimove_netmera.store import dispose_engines, redact_url, scratch  # no Airflow: safe before the env setup

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import time: isolate it before anything imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="onm-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("OPTIMOVE_NETMERA_STATE_DB_URL", f"sqlite:///{_AIRFLOW_HOME}/optimove_netmera_state.db")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """The sandbox (1000 customers, seed 7) for the whole test session; its log is kept in a temp dir."""
    box = start_sandbox(log_path=tmp_path_factory.mktemp("sandbox") / "sandbox.log")
    yield box
    box.stop()


@pytest.fixture
def sandbox_reset(sandbox: SandboxProcess) -> SandboxProcess:
    """The sandbox, reset to the seed's state before the test."""
    sandbox.admin.reset()
    return sandbox


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) in the session's isolated AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return home


# --- state database backends: every state-DB test runs on a SQLite file and on the local PostgreSQL -----------
# PostgreSQL: $OPTIMOVE_NETMERA_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432/postgres, trust auth) is the admin
# connection; one throwaway database onm_test_<random> is created per session and dropped at the end; each test gets
# it with an empty public schema. If the server is unreachable the postgres tests fail, unless
# OPTIMOVE_NETMERA_SKIP_POSTGRES=1.

PG_ADMIN_URL = scratch.admin_url()
SKIP_POSTGRES_ENV = "OPTIMOVE_NETMERA_SKIP_POSTGRES"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def hitl_api(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``airflow api-server`` on the session's metadata database, for answering human-in-the-loop
    questions through the REST API (as Required Actions does): the answer resumes the waiting ``dag.test()`` task."""
    from api_server import reserialize, start_server, stop_server, wait_healthy

    home = reserialize(airflow_db)
    server = start_server(os.environ["OPTIMOVE_NETMERA_STATE_DB_URL"], home, tmp_path_factory.mktemp("hitl") / "a.log")
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database for this session (dropped afterwards)."""
    reason = scratch.check_reachable(PG_ADMIN_URL)
    if reason is not None:
        if os.environ.get(SKIP_POSTGRES_ENV) == "1":
            pytest.skip(f"PostgreSQL unreachable at {redact_url(PG_ADMIN_URL)} and {SKIP_POSTGRES_ENV}=1")
        pytest.fail(
            f"PostgreSQL is not reachable at {redact_url(PG_ADMIN_URL)} ({reason}). The postgres tests need it: "
            f"start it (CI runs one), point {scratch.ADMIN_URL_ENV} at one, or set {SKIP_POSTGRES_ENV}=1 to skip them.",
            pytrace=False,
        )
    with scratch.throwaway_database("onm_test", PG_ADMIN_URL) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgres"``."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an empty state database (no tables) on the test's backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
        yield url
        dispose_engines()
        return
    url = request.getfixturevalue("postgres_database")
    dispose_engines()
    scratch.empty_schema(url)
    yield url
    dispose_engines()
    scratch.empty_schema(url)


# --- figures and skips ----------------------------------------------------------------------------------------------
# End-to-end tests record their figures (seconds to finish, recovery times) with ``figures``; they are printed at the
# end of the run, whatever the capture mode. With OPTIMOVE_NETMERA_FORBID_SKIPS=1 (as .ci/run sets it) a run that
# skipped any test fails: in CI every service is there, so a skip means a test that did not run.

FORBID_SKIPS_ENV = "OPTIMOVE_NETMERA_FORBID_SKIPS"
_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(pytestconfig: pytest.Config) -> list[str]:
    """Append ``"what: figure"`` lines to print in the run's summary."""
    return pytestconfig.stash.setdefault(_FIGURES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("figures (measured by the end-to-end tests; benchmarks are in tests/perf)")
        for line in lines:
            terminalreporter.write_line(line)
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and os.environ.get(FORBID_SKIPS_ENV) == "1":
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped while {FORBID_SKIPS_ENV}=1: every test must run here", red=True
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and os.environ.get(FORBID_SKIPS_ENV) == "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
