"""A real ``airflow api-server`` for tests: the repo's plugin and DAGs, the session's metadata database.

Shared by the endpoint tests and the tests that answer human-in-the-loop questions through Airflow's REST API.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from optimove_netmera.sandbox.process import free_port

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
KEY = "test-inbound-" + secrets.token_hex(8)
APP_KEY = "optimove-netmera"  # inbound.app_key in config/optimove_netmera.yaml
PASSWORD = "admin-" + secrets.token_hex(6)


@dataclass
class Server:
    """A running ``airflow api-server`` and how to call it."""

    base_url: str
    state_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _token: str | None = None

    @property
    def event_url(self) -> str:
        return f"{self.base_url}/rest/optimove/event/{APP_KEY}"

    def token(self) -> str:
        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"username": "admin", "password": PASSWORD}, timeout=30
            )
            assert response.status_code in (200, 201), response.text
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the Airflow REST API (``/api/v2...``) as admin."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)

    def post_event(self, body: Any, **kwargs: Any) -> httpx.Response:
        """POST a JSON event with the right key and content type (override with ``headers=``)."""
        headers = {"X-netmera-api-key": KEY, "Content-Type": "application/json", **kwargs.pop("headers", {})}
        content = body if isinstance(body, bytes) else json.dumps(body)
        return httpx.post(kwargs.pop("url", self.event_url), content=content, headers=headers, timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _server_env(state_url: str, home: Path) -> dict[str, str]:
    passwords = home / "onm_endpoint_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": PASSWORD}))
    env = os.environ.copy()
    env.update(
        {
            "OPTIMOVE_NETMERA_STATE_DB_URL": state_url,
            "OPTIMOVE_NETMERA_INBOUND_API_KEY": KEY,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": "onm-endpoint-tests-" + "0" * 16,
        }
    )
    return env


def start_server(state_url: str, home: Path, log_path: Path, env: dict[str, str] | None = None) -> Server:
    """Start an API server (returns at once; see :func:`wait_healthy`); ``env`` adds or overrides variables."""
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**_server_env(state_url, home), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Server(f"http://127.0.0.1:{port}", state_url, process, log_path)


def wait_healthy(server: Server, timeout: float = 90) -> None:
    """Block until ``/api/v2/monitor/health`` answers 200 (fail with the server's log otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"api-server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"api-server did not become healthy in {timeout:.0f}s:\n{server.log()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def reserialize(airflow_db: Path) -> Path:
    """Serialize the repo's DAGs into the session's metadata database; returns its Airflow home."""
    result = subprocess.run(
        [AIRFLOW, "dags", "reserialize"],
        env={
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return airflow_db


class Responder(threading.Thread):
    """Answer one human-in-the-loop question through the REST API, as a person in Required Actions would.

    Polls ``GET /api/v2/dags/{dag_id}/dagRuns/~/hitlDetails`` until ``task_id`` asks (no response yet), calls
    ``before_answer(detail)`` (what the test wants to check while the run waits), then PATCHes ``choice``.
    Start it before the (blocking) ``dag.test()``; ``join_and_check()`` afterwards re-raises what went wrong.
    """

    def __init__(
        self,
        server: Server,
        dag_id: str,
        task_id: str,
        choice: str | None,
        before_answer: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 600,
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.dag_id, self.task_id, self.choice = server, dag_id, task_id, choice
        self.before_answer, self.timeout = before_answer, timeout
        self.detail: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.run_over = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while self.detail is None:
                if self.run_over.is_set():
                    return  # the run ended without asking: join_and_check says so
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.task_id} did not ask within {self.timeout:.0f} s")
                answer = self.server.api(
                    "GET",
                    f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                    params={"task_id": self.task_id, "response_received": "false"},
                )
                assert answer.status_code == 200, answer.text
                # only a question its task still waits on: an earlier run's unanswered (timed-out) one stays listed
                pending = [
                    d
                    for d in answer.json()["hitl_details"]
                    if d["task_instance"]["state"] in ("awaiting_input", "deferred")
                ]
                if pending:
                    self.detail = pending[0]
                else:
                    time.sleep(0.5)
            if self.before_answer is not None:
                try:
                    self.before_answer(self.detail)
                except BaseException as exc:  # still answer below, so the run ends and the test sees the failure
                    self.error = exc
            if self.choice is None:
                return
            ti = self.detail["task_instance"]
            answer = self.server.api(
                "PATCH",
                f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{self.task_id}/"
                f"{ti['map_index']}/hitlDetails",
                json={"chosen_options": [self.choice]},
            )
            assert answer.status_code == 200, answer.text
        except BaseException as exc:  # handed to the test thread by join_and_check
            self.error = self.error or exc

    def join_and_check(self) -> dict[str, Any]:
        """Call once the run has ended: re-raise the thread's failure; return the question it answered."""
        self.run_over.set()  # a question is answered before its run can end: none now means none was asked
        self.join(timeout=self.timeout)
        if self.error is not None:
            raise self.error
        assert self.detail is not None, f"{self.task_id} never asked"
        return self.detail


class TimeoutSweeper(threading.Thread):
    """Runs Airflow's own scheduler sweep for timed-out human-in-the-loop tasks (``dag.test()`` has no scheduler)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

            runner = SimpleNamespace(log=logging.getLogger("timeout-sweep"))
            while not self.stop.is_set():
                SchedulerJobRunner.check_awaiting_input_timeouts(runner)  # type: ignore[arg-type]
                time.sleep(0.5)
        except BaseException as exc:  # handed to the test by finish()
            self.error = exc

    def finish(self) -> None:
        """Stop sweeping; re-raise what went wrong in the thread."""
        self.stop.set()
        self.join(timeout=60)
        if self.error is not None:
            raise self.error
