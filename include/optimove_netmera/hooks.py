"""Airflow hooks: an Airflow Connection in, a configured API client out (nothing more).

``optimove_default`` (conn type ``optimove``)
    host: the tenant's base URL, e.g. ``https://api5.optimove.net/``.
    Auth, first match wins: ``extra.api_key`` -> ``X-API-KEY``; else ``login`` + ``password`` -> the legacy
    ``general/login`` token flow; else ``password`` alone -> used as the API key.
    Optional extras: ``timeout`` (seconds), ``rate_limit_calls`` (50), ``rate_limit_period`` (10),
    ``page_size`` (10000). The Connections form shows them as labelled fields (``provider.py``).
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


def _extra(extra: dict[str, Any], key: str, default: Any = None) -> Any:
    """An extra's value; empty (``None`` or ``""``, as the connection form saves an unfilled field) = ``default``."""
    value = extra.get(key)
    return default if value is None or value == "" else value


def _timeout(extra: dict[str, Any]) -> tuple[float, float]:
    read = float(_extra(extra, "timeout", 60))
    return (min(read, 10.0), read)


def _retry(extra: dict[str, Any]) -> RetryPolicy:
    defaults = RetryPolicy()
    return RetryPolicy(
        max_attempts=int(_extra(extra, "max_attempts", defaults.max_attempts)),
        base_delay=float(_extra(extra, "retry_base_delay", defaults.base_delay)),
        max_delay=float(_extra(extra, "retry_max_delay", defaults.max_delay)),
    )


def _rate_limit(extra: dict[str, Any], default: tuple[int, float] | None) -> tuple[int, float] | None:
    calls = _extra(extra, "rate_limit_calls")
    if calls is None:
        return default
    return int(calls), float(_extra(extra, "rate_limit_period", 10))


class OptimoveHook(BaseHook):
    """Builds an :class:`~optimove_netmera.optimove.OptimoveClient` from an ``optimove`` Connection."""

    conn_name_attr = "optimove_conn_id"
    default_conn_name = "optimove_default"
    conn_type = "optimove"
    hook_name = "Optimove"

    def __init__(self, optimove_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.optimove_conn_id = optimove_conn_id

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
            "page_size": int(_extra(extra, "page_size", 10_000)),
            "retry": _retry(extra),
        }
        if _extra(extra, "api_key"):
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
        """Authenticate, then say what the key reaches: the data date, the mapped attributes, the channels.

        Per channel it also compares Optimove's templates with ``campaigns.templates``: a mapped template missing
        from the channel fails the test (run ``optimove_setup``); unmapped ones are listed (their recipients are
        skipped).

        Optimove scopes integration keys to chosen attributes and channels, so a key can authenticate and still
        miss what the integration needs: the test fails, naming what is missing.
        """
        from optimove_netmera.settings import SettingsError, get_settings

        try:
            client = self.get_conn()
            day = client.get_last_data_update()
            names = {a.name for a in client.get_customer_attribute_list()}
            channels = {c.channel_id: c.name for c in client.get_execution_channels()}
        except (ApiError, ValueError) as exc:
            return False, str(exc)
        parts = [f"Connected to Optimove; last data update {day.isoformat()}; {len(names)} customer attributes"]
        try:
            settings = get_settings()
        except SettingsError as exc:
            return False, f"{parts[0]}; but the integration settings do not load: {exc}"
        missing = [a for a in settings.optimove_attributes if a not in names]
        parts.append(
            f"mapped attributes: all {len(settings.optimove_attributes)} present"
            if not missing
            else f"mapped attributes NOT reachable with this key: {', '.join(missing)}"
        )
        unknown_channels = [c for c in settings.campaigns.channels if c not in channels]
        mapped = set(settings.campaigns.templates)
        templates_missing = False
        for channel in settings.campaigns.channels:
            if channel in channels:
                try:
                    templates = client.get_channel_templates(channel)
                except ApiError as exc:
                    return False, "; ".join(parts) + f"; channel {channel}: its templates cannot be read ({exc})"
                listed = {t.template_id for t in templates}
                part = f"channel {channel} ({channels[channel] or 'unnamed'}): {len(templates)} template(s)"
                absent = sorted(mapped - listed)
                unmapped = sorted(listed - mapped)
                if absent:
                    templates_missing = True
                    part += (
                        f", mapped template(s) NOT on the channel: {', '.join(map(str, absent))} (run optimove_setup)"
                    )
                if unmapped:
                    part += f", unmapped (their recipients are skipped): {', '.join(map(str, unmapped))}"
                parts.append(part)
        if unknown_channels:
            parts.append(f"configured channel(s) NOT available to this key: {', '.join(map(str, unknown_channels))}")
        return not missing and not unknown_channels and not templates_missing, "; ".join(parts)


class NetmeraHook(BaseHook):
    """Builds a :class:`~optimove_netmera.netmera.NetmeraClient` from a ``netmera`` Connection."""

    conn_name_attr = "netmera_conn_id"
    default_conn_name = "netmera_default"
    conn_type = "netmera"
    hook_name = "Netmera"

    def __init__(self, netmera_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.netmera_conn_id = netmera_conn_id

    @cached_property
    def client(self) -> NetmeraClient:
        """The client (built once per hook)."""
        return self.get_conn()

    def get_conn(self) -> NetmeraClient:
        """Read the Connection and build a new client."""
        conn = self.get_connection(self.netmera_conn_id)
        extra = conn.extra_dejson
        api_key = _extra(extra, "api_key") or conn.password
        if not api_key:
            raise ValueError(f"Connection {self.netmera_conn_id!r} has no REST API key: set its password")
        return NetmeraClient(
            _base_url(conn.host, conn.schema, conn.port, self.netmera_conn_id),
            str(api_key),
            timeout=_timeout(extra),
            rate_limit=_rate_limit(extra, None),
            max_batch=int(_extra(extra, "max_batch", 1000)),
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
