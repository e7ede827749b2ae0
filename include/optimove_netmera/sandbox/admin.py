"""One handle on both sandbox admin APIs (used by tests, benchmarks and the demo)."""

from __future__ import annotations

import time

import requests

from optimove_netmera.sandbox.netmera_admin import NetmeraAdmin
from optimove_netmera.sandbox.optimove_admin import OptimoveAdmin


class SandboxAdmin:
    """``.optimove`` and ``.netmera`` admin clients, plus helpers that span both."""

    def __init__(self, optimove_url: str, netmera_url: str) -> None:
        self.optimove = OptimoveAdmin(optimove_url)
        self.netmera = NetmeraAdmin(netmera_url)
        self._urls = (optimove_url.rstrip("/"), netmera_url.rstrip("/"))

    def reset(self) -> None:
        """Put both sandboxes back to the seed's state (data, faults, counters, rate-limit windows)."""
        self.optimove.reset()
        self.netmera.reset()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until both ``/_sandbox/health`` endpoints answer 200; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        pending = list(self._urls)
        while pending:
            url = pending[0]
            try:
                if requests.get(f"{url}/_sandbox/health", timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox at {url} did not become healthy within {timeout:.0f}s")
            time.sleep(0.1)
