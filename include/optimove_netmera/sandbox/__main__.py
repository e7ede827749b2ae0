"""``python -m optimove_netmera.sandbox``: serve a contract-faithful Optimove and Netmera on localhost."""

from __future__ import annotations

import argparse
import asyncio
import logging

from optimove_netmera.sandbox import server as s


def parse_args(argv: list[str] | None = None) -> s.SandboxConfig:
    """Parse the CLI flags into a :class:`SandboxConfig`."""
    p = argparse.ArgumentParser(
        prog="python -m optimove_netmera.sandbox",
        description=(
            "Serve sandbox copies of the Optimove and Netmera REST APIs (real contracts and quirks, in-memory "
            "state, deterministic for a seed). Admin and inspection endpoints live under /_sandbox/ on each port."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=s.DEFAULT_HOST, help="interface to bind")
    p.add_argument(
        "--optimove-port", type=int, default=s.DEFAULT_OPTIMOVE_PORT, help="Optimove API port (0: a free one)"
    )
    p.add_argument("--netmera-port", type=int, default=s.DEFAULT_NETMERA_PORT, help="Netmera API port (0: a free one)")
    p.add_argument("--customers", type=int, default=s.DEFAULT_CUSTOMERS, help="number of Optimove customers")
    p.add_argument("--seed", type=int, default=s.DEFAULT_SEED, help="seed for data and faults")
    p.add_argument("--optimove-api-key", default=s.DEFAULT_OPTIMOVE_API_KEY, help="accepted X-API-KEY")
    p.add_argument("--optimove-user", default=s.DEFAULT_OPTIMOVE_USER, help="legacy general/login user")
    p.add_argument("--optimove-password", default=s.DEFAULT_OPTIMOVE_PASSWORD, help="legacy login password")
    p.add_argument("--netmera-api-key", default=s.DEFAULT_NETMERA_API_KEY, help="accepted X-netmera-api-key")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started the sandbox exits (tests and tools that start it use this)",
    )
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    a = p.parse_args(argv)
    if a.customers < 0:
        p.error("--customers must be >= 0")
    if a.optimove_port == a.netmera_port != 0:
        p.error("--optimove-port and --netmera-port must differ")
    return s.SandboxConfig(
        host=a.host,
        optimove_port=a.optimove_port,
        netmera_port=a.netmera_port,
        customers=a.customers,
        seed=a.seed,
        optimove_api_key=a.optimove_api_key,
        optimove_user=a.optimove_user,
        optimove_password=a.optimove_password,
        netmera_api_key=a.netmera_api_key,
        log_level=a.log_level,
        exit_with_parent=a.exit_with_parent,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(s.serve(config))


if __name__ == "__main__":
    main()
