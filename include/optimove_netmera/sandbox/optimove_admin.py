"""A tiny requests-based client for the Optimove sandbox admin endpoints (``/_sandbox/...``)."""

from __future__ import annotations

from typing import Any

import requests

__all__ = ["OptimoveAdmin", "OptimoveAdminError"]


class OptimoveAdminError(requests.HTTPError):
    """An admin endpoint answered with an error status (``status`` and ``body`` kept)."""

    def __init__(self, method: str, path: str, response: requests.Response) -> None:
        super().__init__(
            f"{method} /_sandbox/{path} -> HTTP {response.status_code}: {response.text[:500]}", response=response
        )
        self.status = response.status_code
        self.body = response.text


class OptimoveAdmin:
    """One method per Optimove sandbox admin endpoint; errors raise :class:`OptimoveAdminError`."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._session.request(method, f"{self.base_url}/_sandbox/{path}", json=body, timeout=self.timeout)
        if response.status_code >= 400:
            raise OptimoveAdminError(method, path, response)
        return response.json() if response.content else None

    @staticmethod
    def _given(**values: Any) -> dict[str, Any]:
        return {key: value for key, value in values.items() if value is not None}

    # ------------------------------------------------------------------ general
    def health(self) -> dict[str, Any]:
        """``GET /_sandbox/health``."""
        return self._call("GET", "health")

    def reset(self) -> None:
        """Back to the seed's state (data, listeners, tokens, metrics, counters, windows, config, faults)."""
        self._call("POST", "reset")

    def config(self, **changes: Any) -> dict[str, Any]:
        """Change runtime knobs (``rate_limit``, ``token_ttl_seconds``, ...) if given; returns the full config."""
        if changes:
            return self._call("POST", "config", changes)
        return self._call("GET", "config")

    def get_config(self) -> dict[str, Any]:
        """The full runtime config."""
        return self._call("GET", "config")

    def requests(self) -> dict[str, Any]:
        """``{"counts": {"<METHOD> <path>": {"<status>": n}}, "total": n}`` for the real endpoints."""
        return self._call("GET", "requests")

    def count(self, endpoint: str, status: int | str | None = None, method: str = "GET") -> int:
        """Requests seen for ``/current/{category}/{Function}`` (optionally only with ``status``)."""
        per = self.requests()["counts"].get(f"{method} {endpoint}", {})
        return sum(per.values()) if status is None else per.get(str(status), 0)

    def expire_tokens(self) -> int:
        """Expire every issued legacy token now; returns how many there were."""
        return int(self._call("POST", "tokens/expire")["expired"])

    # ---------------------------------------------------------------- customers
    def attributes(self) -> list[dict[str, str]]:
        """``[{"name", "type", "description"}]`` of the dataset's attributes."""
        return self._call("GET", "attributes")

    def change_customers(
        self,
        count: int | None = None,
        *,
        empty: int = 0,
        attributes: list[str] | None = None,
        date: str | None = None,
        changes: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Change ``count`` random customers (or the explicit ``changes``) on ``date``.

        Returns ``{"date", "changed": [ids], "emptied": {id: [attribute names]}}``.
        """
        body: dict[str, Any] = self._given(count=count, attributes=attributes, date=date, changes=changes)
        if empty:
            body["empty"] = empty
        return self._call("POST", "customers/change", body)

    def customer(self, customer_id: str) -> dict[str, Any]:
        """``{"customer_id", "attributes": {name: value or None}}``."""
        return self._call("GET", f"customers/{customer_id}")

    def export(self, path: str) -> dict[str, Any]:
        """Write every customer's current attributes to ``path`` (.csv or .parquet); ``{"rows", "path"}``."""
        return self._call("POST", "export", {"path": path})

    # ---------------------------------------------------------------- campaigns
    def create_campaign(
        self,
        *,
        campaign_id: int | None = None,
        channel_id: int = 506,
        recipients: int = 100,
        control_fraction: float = 0.1,
        templates: list[int] | None = None,
        scheduled_time: str | None = None,
        duplicates: int = 0,
        missing_data_fraction: float = 0.0,
        date: str | None = None,
    ) -> dict[str, Any]:
        """Create a campaign executed on ``date`` (default today); its summary incl. ``campaign_id`` and ``rows``."""
        body = self._given(campaign_id=campaign_id, templates=templates, scheduled_time=scheduled_time, date=date)
        body.update(
            channel_id=channel_id,
            recipients=recipients,
            control_fraction=control_fraction,
            duplicates=duplicates,
            missing_data_fraction=missing_data_fraction,
        )
        return self._call("POST", "campaigns", body)

    def campaigns(self) -> list[dict[str, Any]]:
        """Every campaign's summary."""
        return self._call("GET", "campaigns")["campaigns"]

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        """One campaign's summary."""
        return self._call("GET", f"campaigns/{campaign_id}")

    def cancel_campaign(self, campaign_id: int, customers: int | None = None) -> dict[str, Any]:
        """Cancel the campaign for all (or ``customers``) of its recipients; ``{"campaign_id", "cancelled", ...}``."""
        return self._call("POST", f"campaigns/{campaign_id}/cancel", {"customers": customers})

    # ----------------------------------------------------------------- webhooks
    def fire_webhook(
        self,
        event_type_id: int,
        campaign_id: int | None = None,
        channel_id: int | None = None,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        style: str = "netmera",
        customer_id: str | None = None,
        template_id: int | None = None,
        promo_code: str | None = None,
        time_stamp: str | None = None,
    ) -> dict[str, Any]:
        """POST an event to ``url`` or to every registered listener; ``{"body", "deliveries": [...]}``.

        ``time_stamp`` (``YYYY-MM-DD HH:MM:SS``, default now) lets a test send the very same event twice.
        """
        body = self._given(
            event_type_id=event_type_id,
            campaign_id=campaign_id,
            channel_id=channel_id,
            url=url,
            headers=headers,
            style=style,
            customer_id=customer_id,
            template_id=template_id,
            promo_code=promo_code,
            time_stamp=time_stamp,
        )
        return self._call("POST", "webhooks/fire", body)

    def listeners(self) -> list[dict[str, Any]]:
        """Registered event listeners ``[{"EventTypeID", "ListenerURL", "ChannelID"}]``."""
        return self._call("GET", "listeners")["listeners"]

    def metrics(self) -> list[dict[str, Any]]:
        """Rows received by ``integrations/UpdateCampaignMetrics`` (each with ``received_at``)."""
        return self._call("GET", "metrics")["rows"]

    def metric_aggregates(self) -> list[dict[str, Any]]:
        """Optimove's aggregate per (campaign, channel, template, MetricID): the sum of the values received."""
        return self._call("GET", "metrics")["aggregates"]

    # ------------------------------------------------------------------- faults
    def set_faults(self, rules: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace the fault rules (see ``sandbox/faults.py``)."""
        return self._call("POST", "faults", {"rules": rules})

    def clear_faults(self) -> dict[str, Any]:
        """Remove every fault rule."""
        return self._call("DELETE", "faults")

    def faults(self) -> dict[str, Any]:
        """Current fault rules and injected counts."""
        return self._call("GET", "faults")
