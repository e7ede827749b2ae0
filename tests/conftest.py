"""Shared fixtures: an isolated Airflow home, and the sandbox servers as a real subprocess over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optimove_netmera.sandbox.process import SandboxProcess, start_sandbox
from optimove_netmera.store import dispose_engines, redact_url, scratch  # no Airflow: safe before the env setup

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import time: isolate it before anything imports airflow. Every test process
# gets its own Airflow home, metadata database and state database, whatever the shell exports: a developer's own
# AIRFLOW_HOME is never written, and each pytest-xdist worker (which inherits the controller's environment) has its
# own, so two workers never share a SQLite file, a DAG run or a run_id.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="onm-airflow-home-"))
for _name in ("AIRFLOW_CONFIG", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):  # both would lead outside the home
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "OPTIMOVE_NETMERA_STATE_DB_URL": f"sqlite:///{_AIRFLOW_HOME}/optimove_netmera_state.db",
    }
)
if "PYTEST_XDIST_WORKER" not in os.environ:  # one id for the whole run: the workers inherit the controller's
    os.environ["OPTIMOVE_NETMERA_TEST_RUN"] = uuid.uuid4().hex


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


# --- pytest-xdist: `make test` splits the run across worker processes (`-n`, `--dist loadgroup`) ------------------
# A test that uses a module-scoped fixture (an API server, a browser) runs on the same worker as the rest of its
# module, so that fixture starts once; the `slow` modules (whole Airflow deployments: `airflow standalone`, the Celery
# topology) form one group, so two deployments never compete for the cores at once. In a split run the groups are
# handed out first, the slow one leading, and the single tests fill in behind them, so no long test starts last
# (pytest-randomly's order is kept within each of those three classes).
SLOW_GROUP = "slow-deployments"


def _module_scoped(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the test's fixtures
    return info is not None and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values() if defs)


def _group(item: pytest.Item) -> str | None:
    if item.get_closest_marker("slow") is not None:
        return SLOW_GROUP
    return item.path.relative_to(REPO).as_posix() if _module_scoped(item) else None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[pytest.Item, str] = {}
    for item in items:
        group = _group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
            groups[item] = group
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: (groups.get(item) != SLOW_GROUP, item not in groups))


# --- figures and skips ----------------------------------------------------------------------------------------------
# End-to-end tests record their figures (seconds to finish, recovery times) with ``figures``; they are printed at the
# end of the run, whatever the capture mode. With OPTIMOVE_NETMERA_FORBID_SKIPS=1 (as .ci/run sets it) a run that
# skipped any test fails: in CI every service is there, so a skip means a test that did not run.

FORBID_SKIPS_ENV = "OPTIMOVE_NETMERA_FORBID_SKIPS"
_FIGURE = "figure"  # the user property a test's figures travel in (from a pytest-xdist worker to the controller)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Append ``"what: figure"`` lines to print in the run's summary."""
    lines: list[str] = []
    yield lines
    request.node.user_properties.extend((_FIGURE, line) for line in lines)  # sent with the test's teardown report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for name, value in getattr(report, "user_properties", ())
        if name == _FIGURE
    ]
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
