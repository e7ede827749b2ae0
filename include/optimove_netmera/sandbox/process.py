"""Run the sandbox as a subprocess on free ports (tests, benchmarks and tools share this)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from optimove_netmera.sandbox import server as defaults
from optimove_netmera.sandbox.admin import SandboxAdmin

AIRFLOW_PORTS = frozenset({8080, 8793, 8794})


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, never one of Airflow's usual ports nor one handed out before.

    Free *now*: another process may still take it before the caller binds it. Where the server can bind port 0
    itself and report what it got (as the sandbox does), prefer that.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in AIRFLOW_PORTS and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
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
    """Start ``python -m optimove_netmera.sandbox`` on free ports and wait until both APIs are healthy.

    The sandbox binds port 0 itself and names the ports it got in its ``sandbox ready`` line, so no other process
    can take a port between its choice and its bind. A sandbox that exits before it is ready fails at once, with
    the end of its log; one that is not ready within ``timeout`` seconds is killed. It stops by itself when this
    process exits without stopping it (``--exit-with-parent``: a test session killed hard leaves no sandbox).
    """
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="onm-sandbox-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    cmd = [sys.executable, "-m", "optimove_netmera.sandbox", "--host", "127.0.0.1", "--exit-with-parent"]
    cmd += ["--optimove-port", "0", "--netmera-port", "0"]
    cmd += ["--customers", str(customers), "--seed", str(seed)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        optimove_url, netmera_url = _ready_urls(proc, log_path, deadline, timeout)
        box = SandboxProcess(optimove_url, netmera_url, proc, log_path)
        box.admin.wait_ready(timeout=max(deadline - time.monotonic(), 10.0))
    except BaseException:
        stop_process(proc, timeout=5)
        raise
    return box


_READY_LINE = re.compile(rb"^sandbox ready: optimove=(\S+) netmera=(\S+) ", re.MULTILINE)


def _ready_urls(proc: subprocess.Popen[bytes], log_path: Path, deadline: float, timeout: float) -> tuple[str, str]:
    """The two base URLs of the sandbox's ``sandbox ready`` line, once it is in ``log_path``."""
    while True:
        found = _READY_LINE.search(log_path.read_bytes())
        if found:
            return found.group(1).decode(), found.group(2).decode()
        if proc.poll() is not None:
            tail = log_path.read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(
                f"sandbox exited with code {proc.returncode} before it was ready; {log_path} ends:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"sandbox did not print its ready line within {timeout:.0f}s; see {log_path}")
        time.sleep(0.05)
