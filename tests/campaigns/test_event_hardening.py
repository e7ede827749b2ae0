"""Hostile input at the event endpoint, in process: ``create_app()`` under FastAPI's TestClient, on both state DBs.

The app runs without its lifespan (no start-up sweep, no ``gc.freeze``), with the inbound key from the env and a
recording DAG trigger instead of Airflow's, so these tests need neither an API server nor the metadata database.
The same endpoint over real HTTP is tested in ``test_event_endpoint.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optimove_netmera.campaigns import api, events
from optimove_netmera.store import Event, get_engine, migrate

KEY = "test-hardening-key"
APP_KEY = "optimove-netmera"  # inbound.app_key in config/optimove_netmera.yaml
CHANNEL = 506  # campaigns.channels in config/optimove_netmera.yaml
CUSTOMER = "CUST-SECRET-0042"  # must never reach a log


@dataclass
class RecordingTrigger:
    """A DAG trigger that records the runs it was asked for (never touches Airflow)."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **_: Any) -> bool:
        self.calls.append((dag_id, run_id))
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return False


@dataclass
class App:
    client: TestClient
    engine: sa.Engine
    trigger: RecordingTrigger

    def post(self, content: bytes | str | dict[str, Any]) -> httpx.Response:
        if isinstance(content, dict):
            content = json.dumps(content)
        headers = {"X-netmera-api-key": KEY, "Content-Type": "application/json"}
        return self.client.post(f"/event/{APP_KEY}", content=content, headers=headers)

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.scalar(sa.select(sa.func.count()).select_from(Event)) or 0)


@pytest.fixture
def app(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The endpoint app on an empty, migrated state database of the test's backend."""
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", db_url)
    monkeypatch.setenv("OPTIMOVE_NETMERA_INBOUND_API_KEY", KEY)
    monkeypatch.setattr(api, "_read_variable", lambda key: None)
    trigger = RecordingTrigger()
    monkeypatch.setattr(events, "AirflowDagTrigger", lambda: trigger)
    migrate(db_url)
    client = TestClient(api.create_app())  # no `with`: the lifespan (sweeper, gc.freeze) stays off
    yield App(client, get_engine(db_url), trigger)
    client.close()


def now_stamp(delta: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.UTC) + delta).strftime("%Y-%m-%d %H:%M:%S")


def ok13(**changes: Any) -> dict[str, Any]:
    return {"eventTypeId": 13, "timeStamp": now_stamp(), "campaignId": 777, "channelId": CHANNEL, **changes}


def ok11(**changes: Any) -> dict[str, Any]:
    body = {"eventTypeId": 11, "timeStamp": now_stamp(), "campaignId": 777, "channelId": CHANNEL}
    return {**body, "customerID": CUSTOMER, "templateID": 1, "promoCode": "SAVE10", **changes}


def raw_body(payload: dict[str, Any], **literals: str) -> str:
    """``payload`` as JSON with each ``"@name@"`` string replaced by the literal JSON text ``literals[name]``."""
    text = json.dumps(payload)
    for name, literal in literals.items():
        text = text.replace(f'"@{name}@"', literal)
    return text


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# (id, body, status, field named, words the message must hold)
HOSTILE: list[tuple[str, str, int, str, str]] = [
    ("surrogate-customer", raw_body(ok11(customerID="@x@"), x='"C1\\ud800"'), 422, "customerID", "surrogate"),
    ("surrogate-unknown-key-value", raw_body(ok13(Note="@x@"), x='"\\udfff"'), 422, "Note", "surrogate"),
    ("surrogate-in-a-key", raw_body(ok13()).replace("{", '{"\\ud800": 1, ', 1), 422, "\\ud800", "surrogate"),
    ("surrogate-timestamp", raw_body(ok13(timeStamp="@x@"), x='"2026-01-01\\ud800"'), 422, "timeStamp", "surrogate"),
    ("surrogate-in-promo-list", raw_body(ok11(promoCode=["A", "@x@"]), x='"\\ud83d"'), 422, "promoCode[1]",
     "surrogate"),
    ("nul-customer", raw_body(ok11(customerID="@x@"), x='"C1\\u0000"'), 422, "customerID", "NUL"),
    ("nul-nested", raw_body(ok13(Meta={"note": "@x@"}), x='"a\\u0000b"'), 422, "Meta.note", "NUL"),
    ("nul-under-an-empty-key", raw_body(ok13()).replace("{", '{"": "\\u0000", ', 1), 422, '""', "NUL"),
    ("nul-in-nested-key", raw_body(ok13(Meta="@x@"), x='{"a\\u0000": 1}'), 422, "Meta.a\\u0000", "NUL"),
    ("30-digit-campaign", raw_body(ok13(campaignId="@x@"), x="1" * 30), 422, "campaignId", "30 digits"),
    ("5000-digit-extra", raw_body(ok13(Extra="@x@"), x="9" * 5000), 422, "Extra", "5000 digits"),
    ("int-over-64-bits", raw_body(ok13(Extra="@x@"), x=str(2**64)), 422, "Extra", "64-bit"),
    ("float-overflow", raw_body(ok13(Extra="@x@"), x="1e999"), 422, "Extra", "too large"),
    ("nested-20-levels", json.dumps(ok13(Deep=nested(20))), 422, "Deep" + "[0]" * 15, "levels"),
    ("nested-5000-levels", raw_body(ok13(Deep="@x@"), x="[" * 5000 + "]" * 5000), 400, "body", "nested"),
    ("campaign-object", json.dumps(ok13(campaignId={"id": 1})), 422, "campaignId", "an object"),
    ("campaign-array", json.dumps(ok13(campaignId=[1])), 422, "campaignId", "an array"),
    ("promo-empty-object", json.dumps(ok11(promoCode={})), 422, "promoCode", "an object"),
    ("promo-list-of-objects", json.dumps(ok11(promoCode=[{}])), 422, "promoCode", "an object"),
    ("event-type-null", json.dumps(ok13(eventTypeId=None)), 422, "eventTypeId", "null"),
    ("timestamp-array", json.dumps(ok13(timeStamp=["2026-01-01 00:00:00"])), 422, "timeStamp", "an array"),
    ("year-9999", json.dumps(ok13(timeStamp="9999-12-31 23:59:59")), 422, "timeStamp", "2100-01-01"),
    ("year-1", json.dumps(ok13(timeStamp="0001-01-01 00:00:00")), 422, "timeStamp", "2000-01-01"),
    ("event3-year-9999", json.dumps({"eventTypeId": 3, "timeStamp": "9999-12-31 23:59:59"}), 422, "timeStamp", "2100"),
    ("pascal-year-1", json.dumps({"EventTypeID": 4, "TimeStamp": "0001-01-01 00:00", "CampaignID": 1}), 422,
     "TimeStamp", "2000-01-01"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "status", "field_name", "words"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_bodies_get_a_4xx_naming_the_field_and_store_nothing(
    app: App, caplog: pytest.LogCaptureFixture, case: str, body: str, status: int, field_name: str, words: str
) -> None:
    caplog.set_level(logging.DEBUG)
    response = app.post(body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["status"] == "rejected"
    assert answer["field"] == field_name
    assert words in answer["error"]
    assert field_name in answer["error"] or field_name == "body"
    assert app.count() == 0
    assert app.trigger.calls == []
    assert CUSTOMER not in caplog.text and "C1" not in caplog.text and KEY not in caplog.text


def test_a_body_json_can_parse_but_python_cannot_recurse_is_still_refused() -> None:
    """``json.loads`` may accept nesting deeper than the recursion limit: nothing after it may recurse that deep."""
    deep: Any = 1
    for _ in range(50_000):
        deep = api._Pairs([("k", [deep])])
    pairs = api._Pairs([("eventTypeId", 13), ("Deep", deep)])
    with pytest.raises(events.EventValidationError) as caught:
        events.parse_event([(k, api._plain(v, 1)) for k, v in pairs])
    assert caught.value.field.startswith("Deep.k[0]") and "levels" in str(caught.value)


# Window for 13, 4 and 11 (module docstring of events.parse): 30 days back, 2 days ahead of now.
WINDOW_CASES = [
    pytest.param(13, -dt.timedelta(days=31), 422, id="13-31-days-ago"),
    pytest.param(13, -dt.timedelta(days=29), 200, id="13-29-days-ago"),
    pytest.param(13, dt.timedelta(days=3), 422, id="13-3-days-ahead"),
    pytest.param(13, dt.timedelta(days=1), 200, id="13-1-day-ahead"),
    pytest.param(4, -dt.timedelta(days=45), 422, id="4-45-days-ago"),
    pytest.param(11, dt.timedelta(days=10), 422, id="11-10-days-ahead"),
    pytest.param(3, -dt.timedelta(days=400), 200, id="3-is-not-windowed"),
]


@pytest.mark.parametrize(("event_type", "offset", "status"), WINDOW_CASES)
def test_campaign_events_outside_the_time_window_are_refused(
    app: App, event_type: int, offset: dt.timedelta, status: int
) -> None:
    body: dict[str, Any] = {"eventTypeId": event_type, "timeStamp": now_stamp(offset)}
    if event_type != 3:
        body.update(ok11(timeStamp=body["timeStamp"], eventTypeId=event_type))
    response = app.post(body)
    assert response.status_code == status, response.text
    if status == 422:
        answer = response.json()
        assert answer["field"] == "timeStamp"
        assert "outside the accepted window" in answer["error"] and "30 days before" in answer["error"]
        assert app.count() == 0
    else:
        assert app.count() == 1


def test_a_storage_bug_answers_500_without_logging_the_event(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: an unexpected error while storing logs its type only (its text can carry values)."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.StatementError(f"cannot bind {CUSTOMER}", "INSERT ...", {"customer_id": CUSTOMER}, None)

    monkeypatch.setattr(events, "store_events", broken)  # the group commit's batch insert
    monkeypatch.setattr(events, "store_event", broken)  # and the retry of each event on its own
    caplog.set_level(logging.DEBUG)
    response = app.post(ok11())
    assert response.status_code == 500
    assert response.json()["status"] == "error"
    assert CUSTOMER not in caplog.text and CUSTOMER not in response.text
    assert "StatementError" in caplog.text


# --------------------------------------------------------------------------------------------------
# Group commit: requests arriving together share one transaction, each answered after its commit
# --------------------------------------------------------------------------------------------------

N_TOGETHER = 6


@dataclass
class GatedStore:
    """``events.store_events`` held at a gate: the test decides when the batches may be written."""

    real: Any
    gate: threading.Event = field(default_factory=threading.Event)
    entered: list[int] = field(default_factory=list)  # sizes of the batches waiting at the gate
    committed: set[int] = field(default_factory=set)  # event ids whose batch has been committed

    def __call__(self, engine: sa.Engine, items: Any, **kwargs: Any) -> Any:
        self.entered.append(len(items))
        assert self.gate.wait(60), "the test never opened the gate"
        stored = self.real(engine, items, **kwargs)  # returns after its commit
        self.committed.update(s.event_id for s in stored)
        return stored


def _post_together(app: App, bodies: list[dict[str, Any]], gated: GatedStore) -> list[tuple[int, Any, bool]]:
    """POST ``bodies`` at once on one event loop; open the gate once every one is in a batch or waiting for one.

    Returns (status, answer, whether its row was committed when the answer came) per body, in order.
    """
    group = app.client.app.state.group_commit  # type: ignore[attr-defined]
    headers = {"X-netmera-api-key": KEY, "Content-Type": "application/json"}

    async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, Any, bool]:
        response = await client.post(f"/event/{APP_KEY}", content=json.dumps(body), headers=headers)
        answer = response.json()
        return response.status_code, answer, answer.get("event_id") in gated.committed

    async def run() -> list[tuple[int, Any, bool]]:
        transport = httpx.ASGITransport(app=app.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tasks = [asyncio.create_task(post(client, body)) for body in bodies]
            deadline = time.monotonic() + 60
            while sum(gated.entered) + group.waiting() < len(bodies):
                assert time.monotonic() < deadline, (gated.entered, group.waiting())
                assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
                await asyncio.sleep(0.01)
            assert not any(t.done() for t in tasks), "answered before its batch was written"
            assert app.count() == 0
            gated.gate.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    return asyncio.run(run())


def test_group_commit_answers_each_request_only_after_its_batch_committed(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedStore(events.store_events)
    monkeypatch.setattr(events, "store_events", gated)
    bodies = [ok11(customerID=f"G{i}") for i in range(N_TOGETHER)]
    answers = _post_together(app, bodies, gated)
    assert [(status, answer["status"], committed) for status, answer, committed in answers] == [
        (200, "accepted", True)
    ] * N_TOGETHER
    assert app.count() == N_TOGETHER
    assert max(gated.entered) > 1  # requests that arrived together shared a transaction


def test_a_failed_batch_commit_answers_each_request_503_and_stores_none_of_it(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database fails at COMMIT: every request of the batch is refused (Optimove retries), nothing is kept."""
    gated = GatedStore(events.store_events)
    monkeypatch.setattr(events, "store_events", gated)

    def refuse_commit(_connection: Any) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    sa.event.listen(app.engine, "commit", refuse_commit)
    bodies = [ok13(campaignId=9100 + i) for i in range(N_TOGETHER)]
    try:
        answers = _post_together(app, bodies, gated)
    finally:
        sa.event.remove(app.engine, "commit", refuse_commit)
    assert [(status, answer["status"]) for status, answer, _ in answers] == [(503, "unavailable")] * N_TOGETHER
    assert max(gated.entered) > 1
    assert app.count() == 0
    assert "storing each on its own" not in caplog.text  # an outage is not retried event by event
    assert app.trigger.calls == []  # nothing was handed to the dispatcher
    for body in bodies:  # Optimove's retry: stored now, as new events (nothing of the failed batch was kept)
        assert app.post(body).json()["status"] == "accepted"
    assert app.count() == N_TOGETHER


def test_an_event_the_database_refuses_fails_alone_not_its_batch(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    real_many, real_one = events.store_events, events.store_event

    def refused(bad: bool) -> None:
        if bad:
            raise sa.exc.DataError("INSERT INTO events ...", {}, Exception("value the column cannot hold"))

    def many(engine: sa.Engine, items: Any, **kwargs: Any) -> Any:
        refused(any(event.customer_id == "BAD" for event, _ in items))
        return real_many(engine, items, **kwargs)

    def one(engine: sa.Engine, event: events.OptimoveEvent, **kwargs: Any) -> Any:
        refused(event.customer_id == "BAD")
        return real_one(engine, event, **kwargs)

    gated = GatedStore(many)
    monkeypatch.setattr(events, "store_events", gated)
    monkeypatch.setattr(events, "store_event", one)
    bodies = [ok11(customerID="BAD" if i == 2 else f"G{i}") for i in range(N_TOGETHER)]
    answers = _post_together(app, bodies, gated)
    statuses = [status for status, _, _ in answers]
    assert statuses == [500 if i == 2 else 200 for i in range(N_TOGETHER)], answers
    assert app.count() == N_TOGETHER - 1
    assert max(gated.entered) > 1


def test_a_flush_that_fails_answers_every_request_of_its_batch(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the flush itself (not in one event): each request gets its answer (500), none waits forever."""
    gated = GatedStore(events.store_events)
    monkeypatch.setattr(events, "store_events", gated)
    real_batch = api._store_batch

    def broken(runtime: Any, pending: Any) -> Any:
        real_batch(runtime, pending)  # goes through the gate
        raise RuntimeError("a bug after the flush")

    monkeypatch.setattr(api, "_store_batch", broken)
    answers = _post_together(app, [ok11(customerID=f"G{i}") for i in range(N_TOGETHER)], gated)
    assert [status for status, _, _ in answers] == [500] * N_TOGETHER


# --------------------------------------------------------------------------------------------------
# Authenticated routes: bounded query parameters
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def user_app(app: App) -> App:
    from airflow.api_fastapi.core_api.security import get_user

    app.client.app.dependency_overrides[get_user] = lambda: object()  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"event_type_id": "99999999999999999999"}, "event_type_id"),
        ({"event_type_id": str(2**31)}, "event_type_id"),
        ({"campaign_id": str(2**63)}, "campaign_id"),
        ({"campaign_id": "0"}, "campaign_id"),
        ({"limit": "1001"}, "limit"),
        ({"status": "nope\x00"}, "status"),
    ],
)
def test_listing_query_parameters_are_bounded(user_app: App, params: dict[str, str], field_name: str) -> None:
    response = user_app.client.get("/events", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["status"] == "rejected"
    assert response.json()["field"] == field_name


def test_listing_filters_by_in_range_parameters(user_app: App) -> None:
    assert user_app.post(ok13(campaignId=2**62)).status_code == 200
    deadline = time.monotonic() + 60  # dispatched off the request path
    while True:
        response = user_app.client.get("/events", params={"campaign_id": str(2**62), "status": "dispatched"})
        assert response.status_code == 200, response.text
        if response.json()["events"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [e["campaign_id"] for e in response.json()["events"]] == [2**62]


# --------------------------------------------------------------------------------------------------
# Stored events that can never be dispatched: failed once, with the reason, never retried
# --------------------------------------------------------------------------------------------------


def _insert_received(engine: sa.Engine, event_type: int, when: dt.datetime) -> int:
    values = {
        "dedup_key": f"e{event_type}:test:{when.isoformat()}",
        "event_type_id": event_type,
        "campaign_id": 4711 if event_type != 3 else None,
        "channel_id": CHANNEL if event_type != 3 else None,
        "event_time": when,
        "source": "manual",
        "status": "received",
    }
    with engine.begin() as connection:
        return int(
            connection.execute(sa.insert(Event.__table__).values(values).returning(Event.__table__.c.id)).scalar()
        )


def _row(engine: sa.Engine, event_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(Event.__table__).where(Event.__table__.c.id == event_id)).one()


@pytest.mark.parametrize(
    ("event_type", "when"),
    [
        pytest.param(3, dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), id="3-year-9999"),
        pytest.param(13, dt.datetime(1, 1, 1, tzinfo=dt.UTC), id="13-year-1"),
    ],
)
def test_an_undispatchable_stored_event_is_failed_once_not_retried(
    app: App, caplog: pytest.LogCaptureFixture, event_type: int, when: dt.datetime
) -> None:
    event_id = _insert_received(app.engine, event_type, when)
    trigger = RecordingTrigger()
    caplog.set_level(logging.ERROR)
    first = events.dispatch_pending(app.engine, older_than_seconds=0, trigger=trigger)
    second = events.dispatch_pending(app.engine, older_than_seconds=0, trigger=trigger)
    assert (first.checked, first.failed) == (1, 1)
    assert second.checked == 0  # the sweep does not pick it up again
    assert trigger.calls == []  # nothing was started for it
    row = _row(app.engine, event_id)
    assert row.status == "failed"
    assert "never be dispatched" in row.note
    assert sum(f"event {event_id} " in r.getMessage() for r in caplog.records) == 1


class RefusingTrigger(RecordingTrigger):
    """Airflow refuses the run for good (as ``trigger_dag`` does with a ValueError for a bad logical date)."""

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **_: Any) -> bool:
        raise events.PermanentDispatchError(f"Airflow refused run {run_id}: ValueError: bad logical date")


def test_a_permanent_dispatch_failure_is_failed_once_and_a_transient_one_retried(app: App) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    permanent = _insert_received(app.engine, 13, now)
    events.dispatch_pending(app.engine, older_than_seconds=0, trigger=RefusingTrigger())
    assert _row(app.engine, permanent).status == "failed"
    assert "bad logical date" in _row(app.engine, permanent).note
    assert events.dispatch_pending(app.engine, older_than_seconds=0, trigger=RefusingTrigger()).checked == 0


def test_airflow_refusing_a_run_is_a_permanent_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AirflowDagTrigger`` classifies what ``trigger_dag`` raises: invalid run -> permanent, DB error -> retry."""
    import airflow.api.common.trigger_dag as trigger_dag_module

    trigger = events.triggers.AirflowDagTrigger()
    for raised, expected in (
        (OverflowError("date value out of range"), events.PermanentDispatchError),
        (ValueError("logical date before start"), events.PermanentDispatchError),
        (sa.exc.OperationalError("SELECT", {}, Exception("database is locked")), events.DispatchError),
    ):

        def fail(*args: Any, _raised: Exception = raised, **kwargs: Any) -> None:
            raise _raised

        monkeypatch.setattr(trigger_dag_module, "trigger_dag", fail)
        with pytest.raises(expected) as caught:
            trigger.trigger("optimove_campaign_send", "optimove_c1_ch506_20260101T000000", {})
        assert (type(caught.value) is events.PermanentDispatchError) == (expected is events.PermanentDispatchError)


# --------------------------------------------------------------------------------------------------
# The OpenAPI document
# --------------------------------------------------------------------------------------------------


def test_openapi_document_is_served_under_the_plugin_prefix_and_complete(app: App) -> None:
    outer = FastAPI()
    outer.mount(api.URL_PREFIX, app.client.app)  # as the Airflow API server mounts the plugin
    doc = TestClient(outer).get(f"{api.URL_PREFIX}/openapi.json")
    assert doc.status_code == 200, doc.text
    spec = doc.json()
    assert spec["openapi"].startswith("3.")
    assert {"url": api.URL_PREFIX} in spec["servers"]
    post = spec["paths"]["/event/{app_key}"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert post["requestBody"]["required"] is True
    assert {"eventTypeId", "timeStamp", "campaignId", "channelId", "customerID", "templateID", "promoCode"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"eventTypeId", "timeStamp"}
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "503"} <= set(post["responses"])
    for path in ("/events", "/status"):
        assert {"200", "401", "422"} <= set(spec["paths"][path]["get"]["responses"])
    listing = {p["name"]: p["schema"] for p in spec["paths"]["/events"]["get"]["parameters"]}
    assert listing["event_type_id"]["anyOf"][0]["maximum"] == 2**31 - 1


def _validator(spec: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


# --------------------------------------------------------------------------------------------------
# Property-based fuzz: no server error, nothing stored on any 4xx, every answer matches the document
# --------------------------------------------------------------------------------------------------

_FIELDS = ["eventTypeId", "timeStamp", "campaignId", "channelId", "customerID", "templateID", "promoCode"]
_NASTY_TEXT = ["\ud800", "\udfff", "a\x00b", "\x00", "\U0001f600", "", " ", "🙂\ud83d", "NaN", "2026-02-30 00:00:00"]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(_NASTY_TEXT),
)
_values = st.one_of(
    _scalars,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=12,
    ),
    st.integers(min_value=1, max_value=40).map(nested),
    st.sampled_from(["@overlong@", "@huge-float@", "@deep@"]),
)
_LITERALS = {"overlong": "7" * 400, "huge-float": "-1e999", "deep": "[" * 2000 + "]" * 2000}
_stamps = st.one_of(
    st.integers(min_value=-40 * 24 * 60, max_value=4 * 24 * 60).map(
        lambda minutes: now_stamp(dt.timedelta(minutes=minutes))
    ),
    st.sampled_from(["9999-12-31 23:59:59", "0001-01-01 00:00:00", "1999-12-31 23:59:59", "2100-01-01 00:00:00"]),
)


@st.composite
def event_bodies(draw: st.DrawFn) -> str:
    """A valid-ish event (any type, camel- or PascalCase) with some fields mutated, dropped or added."""
    event_type = draw(st.sampled_from([13, 4, 11, 3, 1, 14]))
    body: dict[str, Any] = {
        "eventTypeId": event_type,
        "timeStamp": draw(_stamps),
        "campaignId": draw(st.integers(min_value=1, max_value=2**40)),
        "channelId": draw(st.sampled_from([CHANNEL, 999])),
        "customerID": f"C{draw(st.integers(min_value=0, max_value=99_999)):07d}",
        "templateID": draw(st.integers(min_value=1, max_value=300)),
        "promoCode": draw(st.one_of(st.none(), st.just("SAVE10"), st.lists(st.just("VIP"), max_size=2))),
    }
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            del body[name]
        else:
            body[name] = draw(_values)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        body[draw(st.text(alphabet=st.characters(exclude_categories=()), max_size=6))] = draw(_values)
    if draw(st.booleans()):
        body = {(k[0].upper() + k[1:] if k in _FIELDS else k): v for k, v in body.items()}
    text = json.dumps(body, ensure_ascii=True)
    for name, literal in _LITERALS.items():
        text = text.replace(f'"@{name}@"', literal)
    return text


def test_fuzzed_event_bodies_never_get_a_server_error(app: App) -> None:
    spec = app.client.get("/openapi.json").json()
    answers = {
        "rejected": _validator(spec, "RejectedAnswer"),
        "ok": _validator(spec, "EventAnswer"),
    }
    seen: dict[int, int] = {}

    @settings(
        max_examples=250,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=event_bodies())
    def check(body: str) -> None:
        before = app.count()
        response = app.post(body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body[:300], response.text)
        answer = response.json()
        if response.status_code >= 400:
            answers["rejected"].validate(answer)
            assert answer["field"], answer
            assert app.count() == before, (body[:300], answer)
        else:
            answers["ok"].validate(answer)

    check()
    assert seen.get(200, 0) > 0 and seen.get(422, 0) > 0, seen  # the generator reaches both sides
