"""Airflow provider metadata: the Optimove and Netmera connection types and their forms in the Connections UI.

Airflow 3.3 reads the forms declaratively (``conn-fields`` for the extra fields, ``ui-field-behaviour`` for the
standard ones) without importing the hooks. Extra fields are stored under their plain names in the connection's
``extra`` JSON, which is where :mod:`optimove_netmera.hooks` reads them.
"""

from __future__ import annotations

from typing import Any

from optimove_netmera import __version__

_INT = {"type": ["integer", "null"]}
_NUMBER = {"type": ["number", "null"]}


def _retry_fields() -> dict[str, Any]:
    return {
        "timeout": {
            "label": "Read timeout (s)",
            "description": "Seconds to wait for an answer (default 60).",
            "schema": _NUMBER,
        },
        "max_attempts": {
            "label": "Attempts",
            "description": "Tries per request on 429, 5xx and network errors, with backoff (default 6).",
            "schema": {**_INT, "minimum": 1},
        },
        "retry_base_delay": {"label": "First retry delay (s)", "description": "Default 0.5.", "schema": _NUMBER},
        "retry_max_delay": {"label": "Longest retry delay (s)", "description": "Default 30.", "schema": _NUMBER},
    }


OPTIMOVE_FIELDS: dict[str, Any] = {
    "api_key": {
        "label": "API key",
        "description": "Optimove API key (Settings > API Key Management, access type Integrations), sent as "
        "X-API-KEY. Leave empty to use User and Password (the legacy general/login token flow) instead.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "page_size": {
        "label": "Page size",
        "description": "Rows per page ($top) of paged calls, at most 10000 (default 10000).",
        "schema": {**_INT, "minimum": 1, "maximum": 10000},
    },
    "rate_limit_calls": {
        "label": "Rate limit: calls",
        "description": "Requests allowed per period, shared by every task of a worker (Optimove: 50 per 10 s).",
        "schema": {**_INT, "minimum": 1},
    },
    "rate_limit_period": {"label": "Rate limit: period (s)", "description": "Default 10.", "schema": _NUMBER},
    **_retry_fields(),
}

NETMERA_FIELDS: dict[str, Any] = {
    "max_batch": {
        "label": "Max extIds per request",
        "description": "Netmera accepts at most 1000 (default 1000).",
        "schema": {**_INT, "minimum": 1, "maximum": 1000},
    },
    "rate_limit_calls": {
        "label": "Rate limit: calls",
        "description": "Requests allowed per period (Netmera documents no limit: empty = off).",
        "schema": {**_INT, "minimum": 1},
    },
    "rate_limit_period": {"label": "Rate limit: period (s)", "description": "Default 10.", "schema": _NUMBER},
    **_retry_fields(),
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider info read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "optimove-netmera",
        "name": "Optimove to Netmera",
        "description": "Optimove (CRM) to Netmera (mobile push): nightly profile sync and campaign sends.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "optimove",
                "hook-class-name": "optimove_netmera.hooks.OptimoveHook",
                "hook-name": "Optimove",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "Base URL",
                        "login": "User (legacy login, when no API key)",
                        "password": "Password (legacy login)",
                    },
                    "placeholders": {"host": "https://api5.optimove.net/", "login": "only with the legacy login"},
                },
                "conn-fields": OPTIMOVE_FIELDS,
            },
            {
                "connection-type": "netmera",
                "hook-class-name": "optimove_netmera.hooks.NetmeraHook",
                "hook-name": "Netmera",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "REST API URL", "password": "REST API key"},
                    "placeholders": {"host": "https://restapi.netmera.com"},
                },
                "conn-fields": NETMERA_FIELDS,
            },
        ],
    }
