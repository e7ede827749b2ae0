"""Airflow hooks: an Airflow Connection in, a configured API client out (nothing more).

``optimove_default`` (conn type ``optimove``)
    host: the tenant's base URL, e.g. ``https://api5.optimove.net/``.
    Auth, first match wins: ``extra.api_key`` -> ``X-API-KEY``; else ``login`` + ``password`` -> the legacy
    ``general/login`` token flow; else ``password`` alone -> used as the API key.
    Optional extras: ``timeout`` (seconds), ``rate_limit_calls`` (50), ``rate_limit_period`` (10),
    ``page_size`` (10000).
``netmera_default`` (conn type ``netmera``)
    host: ``https://restapi.netmera.com`` (or a self-hosted one); password (or ``extra.api_key``): the REST API key.
    Optional extras: ``timeout``, ``max_batch`` (1000), ``rate_limit_calls`` + ``rate_limit_period`` (off).
Both: ``max_attempts`` (6), ``retry_base_delay`` (0.5 s), ``retry_max_delay`` (30 s) for 429/5xx/network retries.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook, Connection

from optimove_netmera.http import ApiError, RetryPolicy
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.optimove import OptimoveClient


def _base_url(host: str | None, schema: str | None, port: int | None, conn_id: str) -> str:
    if not host:
        raise ValueError(f"Connection {conn_id!r} has no host: set it to the API's base URL (https://...)")
    if "://" not in host:
        host = f"{schema or 'https'}://{host}"
    if port and host.count(":") < 2:
        host = f"{host.rstrip('/')}:{port}"
    return host.rstrip("/")


def _timeout(extra: dict[str, Any]) -> tuple[float, float]:
    read = float(extra.get("timeout", 60))
    return (min(read, 10.0), read)


def _retry(extra: dict[str, Any]) -> RetryPolicy:
    defaults = RetryPolicy()
    return RetryPolicy(
        max_attempts=int(extra.get("max_attempts", defaults.max_attempts)),
        base_delay=float(extra.get("retry_base_delay", defaults.base_delay)),
        max_delay=float(extra.get("retry_max_delay", defaults.max_delay)),
    )


def _rate_limit(extra: dict[str, Any], default: tuple[int, float] | None) -> tuple[int, float] | None:
    if "rate_limit_calls" not in extra:
        return default
    return int(extra["rate_limit_calls"]), float(extra.get("rate_limit_period", 10))


class OptimoveHook(BaseHook):
    """Builds an :class:`~optimove_netmera.optimove.OptimoveClient` from an ``optimove`` Connection."""

    conn_name_attr = "optimove_conn_id"
    default_conn_name = "optimove_default"
    conn_type = "optimove"
    hook_name = "Optimove"

    def __init__(self, optimove_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.optimove_conn_id = optimove_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: relabel fields for Optimove."""
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {"host": "Base URL", "login": "User (legacy login)", "password": "Password or API key"},
            "placeholders": {
                "host": "https://api5.optimove.net/",
                "extra": '{"api_key": "<Optimove API key>", "timeout": 60}',
            },
        }

    @cached_property
    def client(self) -> OptimoveClient:
        """The client (built once per hook)."""
        return self.get_conn()

    def get_conn(self) -> OptimoveClient:
        """Read the Connection and build a new client."""
        return self.client_from_connection(self.get_connection(self.optimove_conn_id))

    @staticmethod
    def client_from_connection(conn: Connection) -> OptimoveClient:
        """Build a client from an ``optimove`` Connection (also used by triggers, which fetch it async)."""
        conn_id = conn.conn_id or OptimoveHook.default_conn_name
        extra = conn.extra_dejson
        base_url = _base_url(conn.host, conn.schema, conn.port, conn_id)
        kwargs: dict[str, Any] = {
            "timeout": _timeout(extra),
            "rate_limit": _rate_limit(extra, (50, 10.0)),
            "page_size": int(extra.get("page_size", 10_000)),
            "retry": _retry(extra),
        }
        if extra.get("api_key"):
            return OptimoveClient(base_url, api_key=str(extra["api_key"]), **kwargs)
        if conn.login:
            if not conn.password:
                raise ValueError(f"Connection {conn_id!r} has a login but no password")
            return OptimoveClient(base_url, username=conn.login, password=conn.password, **kwargs)
        if conn.password:
            return OptimoveClient(base_url, api_key=conn.password, **kwargs)
        raise ValueError(
            f"Connection {conn_id!r} has no credentials: set extra.api_key (X-API-KEY), "
            "or login + password for the legacy token flow"
        )

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and read ``general/GetLastDataUpdate``."""
        try:
            day = self.get_conn().get_last_data_update()
        except (ApiError, ValueError) as exc:
            return False, str(exc)
        return True, f"Connected to Optimove; last data update {day.isoformat()}"


class NetmeraHook(BaseHook):
    """Builds a :class:`~optimove_netmera.netmera.NetmeraClient` from a ``netmera`` Connection."""

    conn_name_attr = "netmera_conn_id"
    default_conn_name = "netmera_default"
    conn_type = "netmera"
    hook_name = "Netmera"

    def __init__(self, netmera_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.netmera_conn_id = netmera_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: relabel fields for Netmera."""
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"host": "REST API URL", "password": "REST API key"},
            "placeholders": {"host": "https://restapi.netmera.com", "extra": '{"timeout": 60, "max_batch": 1000}'},
        }

    @cached_property
    def client(self) -> NetmeraClient:
        """The client (built once per hook)."""
        return self.get_conn()

    def get_conn(self) -> NetmeraClient:
        """Read the Connection and build a new client."""
        conn = self.get_connection(self.netmera_conn_id)
        extra = conn.extra_dejson
        api_key = extra.get("api_key") or conn.password
        if not api_key:
            raise ValueError(f"Connection {self.netmera_conn_id!r} has no REST API key: set its password")
        return NetmeraClient(
            _base_url(conn.host, conn.schema, conn.port, self.netmera_conn_id),
            str(api_key),
            timeout=_timeout(extra),
            rate_limit=_rate_limit(extra, None),
            max_batch=int(extra.get("max_batch", 1000)),
            retry=_retry(extra),
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check the REST API key with a read that changes nothing (``getProfileAttributes`` of a probe id)."""
        try:
            client = self.get_conn()
            client.get_profile_attributes("optimove-netmera-connection-test")
        except ValueError as exc:
            return False, str(exc)
        except ApiError as exc:
            if exc.status in (401, 403):
                return False, str(exc)
        return True, "Connected to Netmera; the REST API key was accepted"
