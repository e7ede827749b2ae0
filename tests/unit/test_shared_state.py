"""One state for every process: no process uses a per-host SQLite state DB under a distributed executor, and an
installed (non-editable) package finds its settings only through ``OPTIMOVE_NETMERA_CONFIG``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from optimove_netmera import runtime
from optimove_netmera.settings import REPO_CONFIG, load_settings
from optimove_netmera.topology import SharedStateError, check_shared_state, configured_executors, is_distributed

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg2://airflow:secret@db:5432/optimove_netmera"


def test_celery_executor_imports_and_starts_with_the_pinned_celery() -> None:
    """celery 5.7.0 removed what providers-celery 3.26.0 imports; the pins must keep a working pair."""
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor

    executor = CeleryExecutor()
    executor.start()  # builds the Celery app and its sync pool from the pinned celery
    try:
        assert executor.bulk_state_fetcher is not None
    finally:
        executor.end()


@pytest.mark.parametrize(
    ("configured", "names", "distributed"),
    [
        ("LocalExecutor", ["LocalExecutor"], False),
        ("CeleryExecutor", ["CeleryExecutor"], True),
        ("airflow.providers.celery.executors.celery_executor.CeleryExecutor", ["CeleryExecutor"], True),
        ("LocalExecutor,my_celery:CeleryExecutor", ["LocalExecutor", "CeleryExecutor"], True),
        ("KubernetesExecutor", ["KubernetesExecutor"], True),
    ],
)
def test_executor_names(monkeypatch: pytest.MonkeyPatch, configured: str, names: list[str], distributed: bool) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", configured)
    assert configured_executors() == names
    assert is_distributed() is distributed


def test_sqlite_under_a_distributed_executor_is_refused_naming_the_variable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    with pytest.raises(SharedStateError) as err:
        check_shared_state(url, ["CeleryExecutor"])
    assert "OPTIMOVE_NETMERA_STATE_DB_URL" in str(err.value) and "CeleryExecutor" in str(err.value)
    check_shared_state(url, ["LocalExecutor"])  # one host: the file is shared
    check_shared_state(PG, ["CeleryExecutor"])  # a server database is shared


def test_a_malformed_url_is_left_to_the_engine_to_explain() -> None:
    check_shared_state("not a url", ["CeleryExecutor"])  # no crash here: get_engine names the setting


def test_the_error_never_shows_a_password() -> None:
    with pytest.raises(SharedStateError) as err:
        check_shared_state("sqlite:////tmp/state.db", ["CeleryExecutor"])
    check_shared_state(PG, ["CeleryExecutor"])
    assert "secret" not in str(err.value)


def test_settings_resolve_the_state_url_through_the_guard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPTIMOVE_NETMERA_STATE_DB_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    s = load_settings(REPO_CONFIG, env={})
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    assert s.resolved_state_db_url() == f"sqlite:///{tmp_path}/optimove_netmera_state.db"  # the one-host default
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    with pytest.raises(SharedStateError, match="OPTIMOVE_NETMERA_STATE_DB_URL"):
        s.resolved_state_db_url()
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", PG)
    assert s.resolved_state_db_url() == PG


def test_a_task_without_a_shared_state_db_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPTIMOVE_NETMERA_STATE_DB_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setattr(runtime, "get_runtime_settings", lambda: load_settings(REPO_CONFIG, env={}))
    with pytest.raises(AirflowFailException, match="OPTIMOVE_NETMERA_STATE_DB_URL"):  # no retries: a config error
        runtime.task_settings()
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", PG)
    assert runtime.task_settings().resolved_state_db_url() == PG


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed the way an image installs it: a normal, non-editable ``pip install``."""
    # built from a copy of the sources: pip builds in the source tree, and the checkout is not the test's to write
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "include", source / "include", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, "."],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"pip install failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return target


def _settings_in(site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMOVE_NETMERA")}
    code = "from optimove_netmera.settings import get_settings; print(len(get_settings().attributes))"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(site), **env},
        cwd=site,
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_installed_package_asks_for_the_settings_file(installed_package: Path) -> None:
    done = _settings_in(installed_package)
    assert done.returncode != 0
    assert "OPTIMOVE_NETMERA_CONFIG" in done.stderr and "no settings file" in done.stderr
    assert str(installed_package) in done.stderr  # it says where it looked


def test_an_installed_package_reads_the_file_the_variable_names(installed_package: Path) -> None:
    done = _settings_in(installed_package, OPTIMOVE_NETMERA_CONFIG=str(REPO / "config" / "optimove_netmera.yaml"))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == len(load_settings(REPO_CONFIG, env={}).attributes)
