"""Airflow plugin: the Optimove event endpoint and the optimove-netmera page of the Airflow UI.

* ``POST /rest/optimove/event/{app_key}``: the event endpoint (:mod:`optimove_netmera.campaigns.api`).
* ``/optimove-netmera``: the page's JSON routes, its bundle and its icon (:mod:`optimove_netmera.ui.routes`), and a
  ``react_apps`` entry that puts the page in the UI's navigation (``/plugin/optimove-netmera``) with that icon.
* a root middleware that lets the Connections list's Test button work for our two connection types on Airflow 3.3.2
  (:mod:`optimove_netmera.ui.connection_test`).

The apps and the middleware are built on first access of ``fastapi_apps`` / ``fastapi_root_middlewares``, which only
the API server (and ``airflow plugins``) reads, so schedulers, dag-processors and workers that load plugins do not
import the FastAPI stack.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin

PAGE_PREFIX = "/optimove-netmera"  # optimove_netmera.ui.routes.URL_PREFIX (not imported: keep this file light)


class OptimoveNetmeraPlugin(AirflowPlugin):
    """Mounts the Optimove event endpoint at ``/rest/optimove`` and the page's app at ``/optimove-netmera``."""

    name = "optimove_netmera"

    # bundle_url and icon are relative: the UI resolves them against its base URL (<base href>), so they work
    # under an [api] base_url path too. The icon is shown as an <img> in the navigation.
    react_apps = [
        {
            "name": "Optimove Netmera",
            "bundle_url": f"{PAGE_PREFIX.lstrip('/')}/static/main.umd.cjs",
            "icon": f"{PAGE_PREFIX.lstrip('/')}/icon.svg",
            "destination": "nav",
            "url_route": "optimove-netmera",
        }
    ]

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The event endpoint app (``/rest/optimove``) and the page's app (``/optimove-netmera``)."""
        from optimove_netmera.campaigns.api import URL_PREFIX, create_app
        from optimove_netmera.ui import routes

        return [
            {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Optimove events"},
            {"app": routes.create_app(), "url_prefix": routes.URL_PREFIX, "name": "Optimove Netmera page"},
        ]

    @cached_property
    def fastapi_root_middlewares(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The Test button fix for portless Optimove / Netmera connections (apache/airflow#73298)."""
        from optimove_netmera.ui.connection_test import PortlessConnectionTestMiddleware

        return [{"middleware": PortlessConnectionTestMiddleware, "name": "Optimove Netmera connection test"}]
