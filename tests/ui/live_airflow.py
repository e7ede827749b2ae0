"""``airflow standalone`` as a real process for the operator tests: the way ``make demo`` runs it.

One standalone (API server, scheduler with the LocalExecutor, DAG processor, triggerer) on SQLite in a throwaway
``AIRFLOW_HOME``, with the repo's DAGs and plugin, the sandbox as Optimove and Netmera, and free ports for
everything (never 8080/8793/8794). Every process carries a marker in its environment; :meth:`LiveAirflow.stop`
kills every process that has it (task processes start sessions of their own), also when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from optimove_netmera.sandbox.process import SandboxProcess, free_port
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MARKER = "OPTIMOVE_NETMERA_UI_LIVE_RUN"
INBOUND_APP_KEY = "optimove-netmera"
CHUNK = 100
"""Recipients per sendNotification request here (campaigns.chunk_size)."""
CLIENT_ATTEMPTS = 3
"""HTTP attempts per request of the clients (the connections' ``max_attempts``)."""
TASK_TRIES = 2
"""Tries per task (``sync.retries`` + 1, one second apart): a hiccup of the machine is retried, as in production."""


@dataclass
class LiveAirflow:
    """One ``airflow standalone`` and how to call its REST API and the event endpoint."""

    home: Path
    sandbox: SandboxProcess
    inbound_key: str = field(default_factory=lambda: "ui-inbound-" + secrets.token_hex(8))
    password: str = field(default_factory=lambda: "admin-" + secrets.token_hex(8))
    api_port: int = field(default_factory=free_port)
    run_token: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen[bytes] | None = None
    _jwt: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.home / 'optimove_netmera_state.db'}"

    @property
    def log_path(self) -> Path:
        return self.home / "standalone.log"

    def connection(self, kind: str, **changes: Any) -> dict[str, Any]:
        """The sandbox's connection of ``kind`` (``optimove`` / ``netmera``) as JSON, with quick retries."""
        fast = {"retry_base_delay": 0.2, "retry_max_delay": 1, "max_attempts": CLIENT_ATTEMPTS}
        box = self.sandbox
        if kind == "optimove":
            extra = {"api_key": box.optimove_api_key, **fast}
            return {"conn_type": "optimove", "host": box.optimove_url, "extra": extra} | changes
        key = box.netmera_api_key
        return {"conn_type": "netmera", "host": box.netmera_url, "password": key, "extra": fast} | changes

    def env(self) -> dict[str, str]:
        """The standalone's environment: what ``make demo`` sets, on free ports, with quick task retries."""
        passwords = self.home / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({"admin": self.password}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPTIMOVE_NETMERA"))}
        env.update(
            {
                MARKER: self.run_token,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": "ui-live-" + self.run_token * 2,
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # The DAG files do not change during a test: each is parsed once, not every 30 s (CPU the test's
                # processes need), and a parse slowed by a busy machine is not cut off (one took 32 s on 2 shared
                # cores, over the 30 s default: its DAG was marked stale and the API answered 404 for it).
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "600",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW_CONN_OPTIMOVE_DEFAULT": json.dumps(self.connection("optimove")),
                "AIRFLOW_CONN_NETMERA_DEFAULT": json.dumps(self.connection("netmera")),
                "OPTIMOVE_NETMERA_STATE_DB_URL": self.state_url,
                "OPTIMOVE_NETMERA_INBOUND_API_KEY": self.inbound_key,
                "OPTIMOVE_NETMERA_API_GC_FREEZE": "0",
                "OPTIMOVE_NETMERA__SYNC__RETRIES": str(TASK_TRIES - 1),
                "OPTIMOVE_NETMERA__SYNC__RETRY_DELAY_SECONDS": "1",
                "OPTIMOVE_NETMERA__SYNC__DATA_READY_POKE_SECONDS": "2",
                "OPTIMOVE_NETMERA__SYNC__SCHEDULE": "0 0 29 2 *",  # unpausing starts no scheduled run
                "OPTIMOVE_NETMERA__CAMPAIGNS__CHUNK_SIZE": str(CHUNK),
                # one request at a time: the outage walk counts Netmera's 429s per task try
                "OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT": "1",
                "PYTHONUNBUFFERED": "1",
                # standalone starts its components as `airflow ...` from PATH
                "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        return env

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Start ``airflow standalone`` and wait until its API server answers and the DAGs are parsed."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [AIRFLOW, "standalone"], env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for("airflow standalone's API server", self._healthy, 300)

    def _healthy(self) -> bool:
        self.assert_alive()
        return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assert_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"airflow standalone exited with {self.process.returncode}:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """Stop the standalone: TERM its process group, then KILL whatever still carries the marker."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        for _ in range(3):
            marked = [p for p in psutil.process_iter(["pid"]) if self._marked(p)]
            if not marked:
                break
            for p in marked:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(marked, timeout=10)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _marked(self, p: psutil.Process) -> bool:
        try:
            return p.pid != os.getpid() and p.environ().get(MARKER) == self.run_token
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return False

    # ------------------------------------------------------------------ REST API
    def token(self) -> str:
        if self._jwt is None:
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"username": "admin", "password": self.password}, timeout=30
            )
            assert response.status_code in (200, 201), response.text
            self._jwt = str(response.json()["access_token"])
        return self._jwt

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Airflow's REST API (``/api/v2/...``) as admin."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def wait_parsed(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            wait_for(
                f"{dag_id} to be parsed",
                lambda d=dag_id: self.assert_alive() or self.api("GET", f"/api/v2/dags/{d}").status_code == 200,
                300,
            )

    def unpause(self, dag_id: str) -> None:
        self.api_json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        self.api_json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)

    def post_event(self, body: dict[str, Any]) -> httpx.Response:
        """An Optimove event at the endpoint, as Optimove sends it."""
        return httpx.post(
            f"{self.base_url}/rest/optimove/event/{INBOUND_APP_KEY}",
            content=json.dumps(body),
            headers={"X-netmera-api-key": self.inbound_key, "Content-Type": "application/json"},
            timeout=60,
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100"
        return self.api_json("GET", path)["task_instances"]

    def failure_logs(self, dag_id: str, run_id: str) -> str:
        """The warning and error lines of every task log of the run (for an assertion's message)."""
        lines = []
        for path in sorted((self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if '"level":"error"' in line or '"level":"warning"' in line:
                    lines.append(f"{path.parent.name}/{path.name}: {line[:1500]}")
        return "\n".join(lines) or "(no task logs)"

    def wait_run_finished(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it is ``success`` or ``failed`` (an event's run is created just after the 200: it may not
        exist yet)."""

        def finished() -> dict[str, Any] | None:
            self.assert_alive()
            answer = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if answer.status_code == 404:
                return None
            assert answer.status_code == 200, answer.text[:500]
            run = answer.json()
            return run if run["state"] in ("success", "failed") else None

        return wait_for(f"{dag_id} run {run_id} to finish", finished, timeout, interval=2)
