"""Run the Optimove and Netmera sandbox apps side by side in one process (two uvicorn servers, one loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("optimove_netmera.sandbox")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_OPTIMOVE_PORT = 8301
DEFAULT_NETMERA_PORT = 8302
DEFAULT_CUSTOMERS = 1000
DEFAULT_SEED = 7
DEFAULT_OPTIMOVE_API_KEY = "sandbox-optimove-key"
DEFAULT_OPTIMOVE_USER = "sandbox"
DEFAULT_OPTIMOVE_PASSWORD = "sandbox-password"
DEFAULT_NETMERA_API_KEY = "sandbox-netmera-key"


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox needs to start; the defaults are the documented CLI defaults."""

    host: str = DEFAULT_HOST
    optimove_port: int = DEFAULT_OPTIMOVE_PORT
    netmera_port: int = DEFAULT_NETMERA_PORT
    customers: int = DEFAULT_CUSTOMERS
    seed: int = DEFAULT_SEED
    optimove_api_key: str = DEFAULT_OPTIMOVE_API_KEY
    optimove_user: str = DEFAULT_OPTIMOVE_USER
    optimove_password: str = DEFAULT_OPTIMOVE_PASSWORD
    netmera_api_key: str = DEFAULT_NETMERA_API_KEY
    log_level: str = "warning"
    exit_with_parent: bool = False

    @property
    def optimove_url(self) -> str:
        """Base URL of the Optimove sandbox."""
        return f"http://{self.host}:{self.optimove_port}"

    @property
    def netmera_url(self) -> str:
        """Base URL of the Netmera sandbox."""
        return f"http://{self.host}:{self.netmera_port}"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`serve` (two servers share one process)."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn exits the process when it cannot bind; here the server just stops, and :func:`serve` says why."""
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            self.should_exit = True


def build_apps(config: SandboxConfig) -> tuple[FastAPI, FastAPI]:
    """Create the dataset, the fault injectors and both apps for ``config``."""
    from optimove_netmera.sandbox.data import Dataset
    from optimove_netmera.sandbox.faults import FaultInjector
    from optimove_netmera.sandbox.netmera_app import create_netmera_app
    from optimove_netmera.sandbox.optimove_app import create_optimove_app

    dataset = Dataset(seed=config.seed, customers=config.customers)
    optimove = create_optimove_app(
        dataset,
        api_key=config.optimove_api_key,
        username=config.optimove_user,
        password=config.optimove_password,
        faults=FaultInjector(seed=config.seed),
        seed=config.seed,
    )
    netmera = create_netmera_app(
        dataset, api_key=config.netmera_api_key, faults=FaultInjector(seed=config.seed + 1), seed=config.seed
    )
    return optimove, netmera


def _servers(config: SandboxConfig) -> Iterator[_Server]:
    optimove, netmera = build_apps(config)
    for app, port in ((optimove, config.optimove_port), (netmera, config.netmera_port)):
        yield _Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=port,
                log_level=config.log_level,
                access_log=False,
                lifespan="off",
                timeout_keep_alive=30,
                backlog=4096,
            )
        )


def _bound_port(server: _Server) -> int:
    """The port ``server`` listens on (the kernel's pick when it was configured with port 0)."""
    return int(server.servers[0].sockets[0].getsockname()[1])


PARENT_CHECK_SECONDS = 0.5


async def _stop_when_orphaned(stop: Callable[[], None]) -> None:
    """Call ``stop`` once the process that started this one is gone (this process is then re-parented)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_SECONDS)
    log.warning("the sandbox's parent process %s is gone: stopping", parent)
    stop()


async def serve(config: SandboxConfig) -> None:
    """Serve both sandbox APIs until SIGINT/SIGTERM; prints one ``sandbox ready`` line once both listen.

    A port of 0 lets the kernel pick a free one; the ready line names the ports actually bound. With
    ``exit_with_parent`` the sandbox also stops when the process that started it dies, even by SIGKILL (a test
    session killed hard leaves no sandbox behind).
    """
    servers = list(_servers(config))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    watch = asyncio.create_task(_stop_when_orphaned(stop)) if config.exit_with_parent else None
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            stop()
            break
        await asyncio.sleep(0.05)
    else:
        bound = replace(config, optimove_port=_bound_port(servers[0]), netmera_port=_bound_port(servers[1]))
        print(
            f"sandbox ready: optimove={bound.optimove_url} netmera={bound.netmera_url} "
            f"customers={config.customers} seed={config.seed}",
            flush=True,
        )
    await asyncio.gather(*tasks)
    if watch is not None:
        watch.cancel()
    failed = [s for s in servers if not s.started]
    if failed:
        raise SystemExit(f"sandbox could not listen on {config.host} (port in use?); see the log above")
