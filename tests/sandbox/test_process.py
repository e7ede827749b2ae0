"""Starting the sandbox: ports nobody else can take, and a fast, readable failure when it cannot start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from optimove_netmera.sandbox import process


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_the_sandbox_listens_on_ports_it_bound_itself(
    tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI once lost 300 tests to a port that was free when chosen and taken by the time the sandbox bound it.

    The sandbox binds port 0 and reports what it got: a port picked beforehand (here one that is always taken)
    plays no part.
    """
    monkeypatch.setattr(process, "free_port", lambda: held_port)
    box = process.start_sandbox(customers=3, log_path=tmp_path / "sandbox.log", timeout=120)
    try:
        ports = {int(url.rsplit(":", 1)[1]) for url in (box.optimove_url, box.netmera_url)}
        assert len(ports) == 2 and held_port not in ports and 0 not in ports
        for url in (box.optimove_url, box.netmera_url):
            assert requests.get(f"{url}/_sandbox/health", timeout=10).status_code == 200
    finally:
        box.stop()


def test_a_sandbox_that_exits_before_it_is_ready_fails_at_once_with_its_log(tmp_path: Path) -> None:
    """No waiting out the timeout on a dead process: the error carries the process's own last words."""
    with pytest.raises(RuntimeError, match=r"exited with code 2 before it was ready(.|\n)*--customers must be >= 0"):
        process.start_sandbox(customers=-1, log_path=tmp_path / "sandbox.log", timeout=60)


def test_the_cli_says_which_port_it_could_not_bind(held_port: int) -> None:
    """A fixed port that is taken ends the process with exit code 1 and a one-line reason, not a traceback."""
    cmd = [sys.executable, "-m", "optimove_netmera.sandbox", "--optimove-port", "0", "--netmera-port", str(held_port)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"('127.0.0.1', {held_port}): address already in use" in done.stderr
    assert "sandbox could not listen on 127.0.0.1 (port in use?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may pick a just-released port again; two servers told the same port would race for it."""
    picks = iter([8080, 41001, 41001, 41001, 41003])

    class Picked:
        def __enter__(self) -> Picked:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(picks)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(process, "_HANDED_OUT", set())
    monkeypatch.setattr(process.socket, "socket", Picked)
    assert [process.free_port(), process.free_port()] == [41001, 41003]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_sandbox_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """A test session killed hard (SIGKILL: no fixture teardown) used to leave its sandbox running for good."""
    starter = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from optimove_netmera.sandbox.process import start_sandbox\n"
        f"box = start_sandbox(customers=3, log_path=Path({str(tmp_path / 'sandbox.log')!r}), timeout=120)\n"
        "print(box.process.pid, box.netmera_url, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    sandbox_pid = 0
    try:
        assert parent.stdout is not None
        pid, url = parent.stdout.readline().split()
        sandbox_pid = int(pid)
        assert requests.get(f"{url}/_sandbox/health", timeout=10).status_code == 200
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _running(sandbox_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(sandbox_pid), "the sandbox outlived the process that started it"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/_sandbox/health", timeout=10)
    finally:
        parent.kill()
        if sandbox_pid and _running(sandbox_pid):
            os.kill(sandbox_pid, signal.SIGKILL)
