"""Airflow provider metadata, so the Optimove and Netmera connection types show in the Connections UI."""

from __future__ import annotations

from typing import Any

from optimove_netmera import __version__


def get_provider_info() -> dict[str, Any]:
    """Return the provider info read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "optimove-netmera",
        "name": "Optimove to Netmera",
        "description": "Optimove (CRM) to Netmera (mobile push): nightly profile sync and campaign sends.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "optimove", "hook-class-name": "optimove_netmera.hooks.OptimoveHook"},
            {"connection-type": "netmera", "hook-class-name": "optimove_netmera.hooks.NetmeraHook"},
        ],
    }
