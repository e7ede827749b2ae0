"""Airflow's distributed topology as real processes on this machine, for the topology test.

``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and ``celery worker`` processes share one
``AIRFLOW_HOME`` (for logs only), a throwaway PostgreSQL metadata database, a throwaway PostgreSQL state database
and a Redis broker (a database number and a Celery queue of their own, so parallel runs never share work). Every
process carries a marker in its environment; :meth:`Topology.stop` kills every process that has it, whatever
process group it moved into (task supervisors start their own), also when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from optimove_netmera.sandbox.process import SandboxProcess, free_port
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MARKER = "OPTIMOVE_NETMERA_TOPOLOGY_RUN"

# What a deployment of this project needs beyond Airflow's defaults to notice a dead worker in about a minute
# (README "Running on several machines"); the test uses shorter values of the same settings.
HEARTBEAT_TIMEOUT_S = 20
HEARTBEAT_DETECTION_S = 3
CHUNK = 100
IN_FLIGHT = 4  # sendNotification requests a send task keeps in flight (campaigns.requests_in_flight)
"""Recipients per sendNotification request in this deployment (campaigns.chunk_size)."""


@dataclass
class Topology:
    """The processes of one distributed Airflow deployment and how to call its REST API."""

    home: Path
    meta_url: str
    state_url: str
    broker_url: str
    queue: str
    sandbox: SandboxProcess
    inbound_key: str = field(default_factory=lambda: "topology-inbound-" + secrets.token_hex(8))
    password: str = field(default_factory=lambda: "admin-" + secrets.token_hex(8))
    api_port: int = field(default_factory=free_port)
    run_token: str = field(default_factory=lambda: secrets.token_hex(8))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _jwt: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every process of the deployment shares (plus ``extra``)."""
        passwords = self.home / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({"admin": self.password}))
        fast = {"retry_base_delay": 0.2, "retry_max_delay": 2, "max_attempts": 4}
        box = self.sandbox
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPTIMOVE_NETMERA"))}
        env.update(
            {
                MARKER: self.run_token,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__FERNET_KEY": "",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.meta_url,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": "topology-" + self.run_token * 2,
                "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.meta_url.replace("+psycopg2", ""),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(HEARTBEAT_DETECTION_S),
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
                "AIRFLOW_CONN_OPTIMOVE_DEFAULT": json.dumps(
                    {
                        "conn_type": "optimove",
                        "host": box.optimove_url,
                        "extra": {"api_key": box.optimove_api_key, **fast},
                    }
                ),
                "AIRFLOW_CONN_NETMERA_DEFAULT": json.dumps(
                    {"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key, "extra": fast}
                ),
                "OPTIMOVE_NETMERA_STATE_DB_URL": self.state_url,
                "OPTIMOVE_NETMERA_INBOUND_API_KEY": self.inbound_key,
                "OPTIMOVE_NETMERA__SYNC__RETRY_DELAY_SECONDS": "1",
                "OPTIMOVE_NETMERA__SYNC__DATA_READY_POKE_SECONDS": "2",
                "OPTIMOVE_NETMERA__SYNC__SCHEDULE": "0 0 29 2 *",  # unpausing starts no scheduled run
                "OPTIMOVE_NETMERA__CAMPAIGNS__CHUNK_SIZE": str(CHUNK),
                "OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT": str(IN_FLIGHT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    # ------------------------------------------------------------------ processes
    def run(self, *args: str, timeout: float = 600) -> str:
        """Run one ``airflow`` CLI command to completion; its output, or an AssertionError with it."""
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
        return done.stdout

    def start(self, name: str, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` as the process ``name`` (log: ``<home>/<name>.log``)."""
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [AIRFLOW, *args], env=self.env(**extra_env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """A Celery worker on the deployment's queue, with a log-server port of its own."""
        return self.start(
            name,
            "celery",
            "worker",
            "--queues",
            self.queue,
            "--celery-hostname",
            f"{name}-{self.run_token}@%h",
            "--concurrency",
            "4",
            "--skip-serve-logs",
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        )

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def assert_alive(self) -> None:
        """Every process still running (a dead one's log tail in the message)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and not name.startswith("killed-"):
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def kill_worker(self, name: str, task_pid: int | None = None) -> list[int]:
        """SIGKILL worker ``name`` and every process under it (task supervisors and tasks), as a lost machine."""
        proc = self.procs.pop(name)
        victims = [psutil.Process(proc.pid)]
        victims += victims[0].children(recursive=True)
        if task_pid is not None and psutil.pid_exists(task_pid):
            task = psutil.Process(task_pid)
            victims += [task, *task.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.procs[f"killed-{name}"] = proc
        return [v.pid for v in victims]

    def tree_pids(self, name: str) -> set[int]:
        """Pids of process ``name`` and everything under it."""
        root = psutil.Process(self.procs[name].pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}

    def stop(self) -> None:
        """Stop every process of this deployment: TERM, then KILL whatever carries the marker."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(0.5)
        for _ in range(3):
            marked = [p for p in psutil.process_iter(["pid"]) if self._marked(p)]
            if not marked:
                break
            for p in marked:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(marked, timeout=10)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

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
            self._jwt = response.json()["access_token"]
        return self._jwt

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Airflow's REST API (``/api/v2/...``) as admin."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def post_event(self, body: dict[str, Any], base_url: str | None = None) -> httpx.Response:
        """An Optimove event at the endpoint, as Optimove sends it."""
        return httpx.post(
            f"{base_url or self.base_url}/rest/optimove/event/optimove-netmera",
            content=json.dumps(body),
            headers={"X-netmera-api-key": self.inbound_key, "Content-Type": "application/json"},
            timeout=60,
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]

    def wait_run_finished(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it is ``success`` or ``failed`` (processes checked alive while waiting)."""

        def finished() -> dict[str, Any] | None:
            self.assert_alive()
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return wait_for(f"{dag_id} run {run_id} to finish", finished, timeout, interval=2)
