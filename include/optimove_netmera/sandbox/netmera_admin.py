"""Tiny requests-based client for the Netmera sandbox's ``/_sandbox/`` admin endpoints (tests, demo, benchmarks)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

__all__ = ["WRITE_ENDPOINTS", "NetmeraAdmin", "SandboxAdminError"]

#: The Netmera write endpoints counted by :meth:`NetmeraAdmin.write_calls`.
WRITE_ENDPOINTS: tuple[str, ...] = tuple(
    f"POST /rest/3.0/{name}"
    for name in (
        "setProfileAttributes",
        "unsetProfileAttributes",
        "registerUsers",
        "sendNotification",
        "createNotificationDefinition",
        "fireEvents",
    )
)


class SandboxAdminError(RuntimeError):
    """An admin endpoint answered with an error status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class NetmeraAdmin:
    """One method per Netmera sandbox admin endpoint; every call returns the decoded JSON answer."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/_sandbox{path}"
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        resp = self._session.request(method, url, json=json, params=clean or None, timeout=self.timeout)
        if resp.status_code >= 400:
            raise SandboxAdminError(method, url, resp.status_code, resp.text)
        return resp.json()

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", path)
        except SandboxAdminError as exc:
            if exc.status == 404:
                return None
            raise

    # ---- lifecycle and counters --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /_sandbox/health``."""
        return self._call("GET", "/health")

    def reset(self) -> dict[str, Any]:
        """Back to the seed's state: profiles, users, deliveries, definitions, config, counters, faults."""
        return self._call("POST", "/reset")

    def config(self, **changes: Any) -> dict[str, Any]:
        """Read the config (no arguments) or change some keys, e.g. ``config(reject_invalid_entries=True)``.

        Keys: ``max_ext_ids`` (1000), ``reject_invalid_entries`` (False), ``profile_attributes`` ("*" | "dataset" |
        {name: "string"|"number"|"boolean"|"date"|"array"}), ``notification_keys`` ([101..105]),
        ``unknown_target_error`` (True), ``existence_answer`` ("list" | "empty" | "object": how ``checkExistence``
        is answered; only "list" carries ``notExist``). Returns the whole config after the change.
        """
        if not changes:
            return self._call("GET", "/config")
        return self._call("POST", "/config", json=changes)

    def requests(self) -> dict[str, Any]:
        """``{"counts": {"POST /rest/3.0/sendNotification": {"200": n}}, "total": n}`` (injected faults included)."""
        return self._call("GET", "/requests")

    def write_calls(self) -> int:
        """How many requests to the write endpoints (:data:`WRITE_ENDPOINTS`) were answered with status 200."""
        counts = self.requests()["counts"]
        return sum(counts.get(endpoint, {}).get("200", 0) for endpoint in WRITE_ENDPOINTS)

    def stats(self) -> dict[str, Any]:
        """Totals plus per-endpoint ingest counters (entries applied, unknown extIds, dropped keys by reason)."""
        return self._call("GET", "/stats")

    def attributes(self) -> dict[str, Any]:
        """The defined profile attributes: ``{"standard": {..}, "defined": {..}, "any_custom_key": bool}``."""
        return self._call("GET", "/attributes")

    # ---- profiles and users ------------------------------------------------------------------------------------

    def profile(self, ext_id: str) -> dict[str, Any] | None:
        """``{"extId": .., "profile": {..}}`` as stored, or None when nothing is stored for ``ext_id``."""
        return self._get_or_none(f"/profiles/{quote(ext_id, safe='')}")

    def profiles(self, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``{"total": n, "profiles": [{"extId": .., "profile": {..}}]}`` in insertion order."""
        return self._call("GET", "/profiles", params={"offset": offset, "limit": limit})

    def add_users(self, ext_ids: list[str]) -> dict[str, Any]:
        """Make ``ext_ids`` known Netmera users; ``{"added": new, "ext_ids": n}``."""
        return self._call("POST", "/users", json={"ext_ids": list(ext_ids)})

    def remove_users(self, ext_ids: list[str]) -> dict[str, Any]:
        """Make ``ext_ids`` unknown to Netmera (their stored profiles go too); ``{"removed": n, "ext_ids": n}``."""
        return self._call("POST", "/users", json={"ext_ids": list(ext_ids), "known": False})

    def user(self, ext_id: str) -> dict[str, Any] | None:
        """``{"extId", "known", "registered", "platform", "tags", ...}`` or None when not a Netmera user."""
        return self._get_or_none(f"/users/{quote(ext_id, safe='')}")

    # ---- notifications and events ------------------------------------------------------------------------------

    def deliveries(
        self,
        ext_id: str | None = None,
        notification_key: str | int | None = None,
        status: str = "delivered",
        offset: int = 0,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``{"total": n, "deliveries": [{"extId", "notificationKey", "params", "received_at", "request_seq",
        "platform", "status", "text", ["reason"]}]}``; ``status`` is ``delivered`` | ``failed`` | ``all``."""
        params = {
            "extId": ext_id,
            "notificationKey": None if notification_key is None else str(notification_key),
            "status": status,
            "offset": offset,
            "limit": limit,
        }
        return self._call("GET", "/deliveries", params=params)

    def notifications(self) -> dict[str, Any]:
        """Notification definitions: ``{"101": {"notificationKey": 101, "source": "panel", ...}}``."""
        return self._call("GET", "/notifications")

    def events(self) -> dict[str, Any]:
        """Events received by ``fireEvents``: ``{"total": n, "events": [{"received_at", "event"}]}``."""
        return self._call("GET", "/events")

    # ---- faults ------------------------------------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        """Current fault rules and injected counts."""
        return self._call("GET", "/faults")

    def set_faults(self, rules: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace the fault rules (see :class:`~optimove_netmera.sandbox.faults.FaultInjector`)."""
        return self._call("POST", "/faults", json=rules)

    def clear_faults(self) -> dict[str, Any]:
        """Remove every fault rule."""
        return self._call("DELETE", "/faults")

    def close(self) -> None:
        """Close the underlying HTTP session."""
        self._session.close()
