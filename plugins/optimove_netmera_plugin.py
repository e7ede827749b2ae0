"""Airflow plugin: the Optimove event endpoint ``POST /rest/optimove/event/{app_key}`` on the API server.

The app lives in :mod:`optimove_netmera.campaigns.api`; this file only registers it. It is built on first
access of ``fastapi_apps``, which only the API server (and ``airflow plugins``) reads, so schedulers,
dag-processors and workers that load plugins do not import the FastAPI stack.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin


class OptimoveNetmeraPlugin(AirflowPlugin):
    """Mounts the Optimove event endpoint at ``/rest/optimove``."""

    name = "optimove_netmera"

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The event endpoint app, mounted at ``/rest/optimove``."""
        from optimove_netmera.campaigns.api import URL_PREFIX, create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Optimove events"}]
