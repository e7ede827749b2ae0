"""Async, serialisable triggers (they run in the triggerer, so they live in the package, not in ``dags/``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from optimove_netmera.http import ApiError, AuthError, ClientError

log = logging.getLogger(__name__)


class OptimoveDataReadyTrigger(BaseTrigger):
    """Polls ``general/GetLastDataUpdate`` until Optimove's data covers ``target_date`` or ``deadline`` passes.

    Yields one event: ``{"status": "ready", "data_date": ...}``, ``{"status": "timeout", "data_date": ...}`` or
    ``{"status": "error", "message": ...}`` (bad credentials or another permanent error).
    """

    def __init__(self, conn_id: str, target_date: str, deadline: str, poke_interval: float = 300.0) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.target_date = target_date
        self.deadline = deadline
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs (no secrets: the connection is fetched again in the triggerer)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "target_date": self.target_date,
                "deadline": self.deadline,
                "poke_interval": self.poke_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until ready, timed out, or failed permanently."""
        from optimove_netmera.hooks import OptimoveHook

        target = dt.date.fromisoformat(self.target_date)
        deadline = dt.datetime.fromisoformat(self.deadline)
        last: dt.date | None = None
        try:
            conn = await BaseHook.aget_connection(self.conn_id)
            client = OptimoveHook.client_from_connection(conn)
        except Exception as exc:  # a missing or malformed connection is permanent
            yield TriggerEvent({"status": "error", "message": f"connection {self.conn_id!r}: {exc}"})
            return
        while True:
            try:
                last = await asyncio.to_thread(client.get_last_data_update)
            except (AuthError, ClientError) as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            except ApiError as exc:  # transient (5xx, 429, network): keep polling
                log.warning("GetLastDataUpdate failed, will poll again: %s", exc)
            if last is not None and last >= target:
                yield TriggerEvent({"status": "ready", "data_date": last.isoformat()})
                return
            if dt.datetime.now(dt.UTC) >= deadline:
                yield TriggerEvent({"status": "timeout", "data_date": last.isoformat() if last else None})
                return
            log.info("Optimove data date is %s, waiting for %s", last, target)
            await asyncio.sleep(self.poke_interval)
