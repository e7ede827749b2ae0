"""The event endpoint keeps serving when clients are slow: a body read timeout (408) and an in-progress cap (503).

In process (``create_app()`` through httpx's ASGI transport, which hands the app the request body chunk by chunk as
the client produces it), on both state databases. Stalled clients are simulated by a body that never finishes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import api, events
from optimove_netmera.store import Event, get_engine, migrate

KEY = "test-limits-key"
URL = "/event/optimove-netmera"
HEADERS = {"X-netmera-api-key": KEY, "Content-Type": "application/json"}


class RecordingTrigger:
    """Records runs instead of creating them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **_: Any) -> bool:
        self.calls.append(run_id)
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return False


@pytest.fixture
def app(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", db_url)
    monkeypatch.setenv("OPTIMOVE_NETMERA_INBOUND_API_KEY", KEY)
    monkeypatch.setattr(api, "_read_variable", lambda key: None)
    trigger = RecordingTrigger()
    monkeypatch.setattr(events, "AirflowDagTrigger", lambda: trigger)
    migrate(db_url)
    return api.create_app()


def event(campaign: int) -> bytes:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return json.dumps({"eventTypeId": 13, "timeStamp": stamp, "campaignId": campaign, "channelId": 506}).encode()


async def stalled(started: asyncio.Event) -> AsyncIterator[bytes]:
    """The first bytes of a body, then nothing more (a client that stalls or trickles)."""
    yield b'{"eventTypeId": 13, '
    started.set()
    await asyncio.Event().wait()  # never set: the rest never comes
    yield b"}"  # pragma: no cover


def stored(db_url: str) -> int:
    with get_engine(db_url).connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(Event)) or 0)


def test_a_stalled_body_is_answered_408_and_others_are_served_meanwhile(
    app: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_NETMERA__INBOUND__BODY_TIMEOUT_SECONDS", "2")

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint", timeout=60) as client:
            started = asyncio.Event()
            slow = asyncio.create_task(client.post(URL, content=stalled(started), headers=HEADERS))
            await asyncio.wait_for(started.wait(), timeout=60)
            quick = await client.post(URL, content=event(7001), headers=HEADERS)  # while the slow one waits
            return await asyncio.wait_for(slow, timeout=60), quick

    slow, quick = asyncio.run(scenario())
    assert quick.status_code == 200 and quick.json()["status"] == "accepted"
    assert slow.status_code == 408, slow.text
    assert slow.json()["field"] == "body" and "within 2 s" in slow.json()["error"]
    assert stored(db_url) == 1  # only the quick one


def test_requests_over_the_cap_are_answered_503_until_a_slot_frees(
    app: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_NETMERA__INBOUND__MAX_CONCURRENT_REQUESTS", "1")
    monkeypatch.setenv("OPTIMOVE_NETMERA__INBOUND__BODY_TIMEOUT_SECONDS", "3")

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint", timeout=60) as client:
            started = asyncio.Event()
            slow = asyncio.create_task(client.post(URL, content=stalled(started), headers=HEADERS))
            await asyncio.wait_for(started.wait(), timeout=60)  # it holds the one slot
            over = await client.post(URL, content=event(7002), headers=HEADERS)
            freed = await asyncio.wait_for(slow, timeout=60)  # its body timed out: the slot is free again
            after = await client.post(URL, content=event(7003), headers=HEADERS)
            return over, freed, after

    over, freed, after = asyncio.run(scenario())
    assert over.status_code == 503 and "already in progress" in over.json()["error"]
    assert over.headers.get("Retry-After")
    assert freed.status_code == 408
    assert after.status_code == 200 and after.json()["status"] == "accepted"
    assert stored(db_url) == 1
