"""Run the sandbox as a subprocess on free ports (tests, benchmarks and tools share this)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from optimove_netmera.sandbox import server as defaults
from optimove_netmera.sandbox.admin import SandboxAdmin

AIRFLOW_PORTS = frozenset({8080, 8793, 8794})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (never one of Airflow's usual ports)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in AIRFLOW_PORTS:
            return port


@dataclass
class SandboxProcess:
    """A running sandbox subprocess, its URLs and credentials."""

    optimove_url: str
    netmera_url: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    optimove_api_key: str = defaults.DEFAULT_OPTIMOVE_API_KEY
    optimove_user: str = defaults.DEFAULT_OPTIMOVE_USER
    optimove_password: str = defaults.DEFAULT_OPTIMOVE_PASSWORD
    netmera_api_key: str = defaults.DEFAULT_NETMERA_API_KEY

    @property
    def admin(self) -> SandboxAdmin:
        """Admin clients for both sandbox APIs."""
        return SandboxAdmin(self.optimove_url, self.netmera_url)

    def stop(self) -> None:
        """Terminate the subprocess (kill it if it does not stop within 10 s)."""
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate ``process``; kill it if it has not exited after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_sandbox(
    customers: int = defaults.DEFAULT_CUSTOMERS,
    seed: int = defaults.DEFAULT_SEED,
    log_path: Path | None = None,
    timeout: float = 300.0,
) -> SandboxProcess:
    """Start ``python -m optimove_netmera.sandbox`` on free ports and wait until both APIs are healthy."""
    o_port, n_port = free_port(), free_port()
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - lives as long as the process
    cmd = [sys.executable, "-m", "optimove_netmera.sandbox", "--host", "127.0.0.1"]
    cmd += ["--optimove-port", str(o_port), "--netmera-port", str(n_port)]
    cmd += ["--customers", str(customers), "--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    box = SandboxProcess(f"http://127.0.0.1:{o_port}", f"http://127.0.0.1:{n_port}", proc, log_path)
    try:
        box.admin.wait_ready(timeout=timeout)
    except TimeoutError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"sandbox exited with code {proc.returncode}; see {log_path}")
    return box
