"""Dispatch off the request path: the dispatcher thread, retries, exactly-once, cancel order, the sweep as safety net.

In process (real state databases, real Airflow runs in the session's metadata database): the
:class:`~optimove_netmera.campaigns.events.EventDispatcher` retries a transient failure, two dispatches of one
event make one run, a cancel stored after its 13 wins whichever is dispatched first, a full queue refuses at once
and ``stop`` drains. Over real HTTP (per backend, two ``airflow api-server`` on one state database, both with
the re-dispatch sweep off): the run appears with no sweep, duplicate POSTs racing to both servers make one event
and one run, and an event stored by a server killed before dispatching it is dispatched by the next server's sweep.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_server import Server, reserialize, start_server, stop_server, wait_healthy
from optimove_netmera.campaigns import events
from optimove_netmera.store import Campaign, Event, dispose_engines, get_engine, migrate, scratch

SEND_DAG = events.CAMPAIGN_SEND_DAG_ID
CHANNEL, OTHER_CHANNEL = 506, 459  # both in campaigns.channels of config/optimove_netmera.yaml
NO_SWEEP = {"OPTIMOVE_NETMERA_API_SWEEP_SECONDS": "0"}

pytestmark = pytest.mark.usefixtures("airflow_db")

_ids = iter(range(secrets.randbelow(10**6) * 1000 + 5 * 10**11, 10**13))


def new_id() -> int:
    """A campaign id no other test of this session uses."""
    return next(_ids)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``condition()`` once it is truthy (polled); fails naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(0.05)


def event_row(engine: sa.Engine, event_id: int) -> Any:
    table = Event.__table__
    with engine.connect() as connection:
        return connection.execute(sa.select(table).where(table.c.id == event_id)).one()


def wait_status(engine: sa.Engine, event_id: int, status: str = "dispatched", timeout: float = 60) -> Any:
    return wait_for(
        lambda: (r := event_row(engine, event_id)).status == status and r, f"event {event_id} {status}", timeout
    )


def campaign_state(engine: sa.Engine, campaign_id: int, channel_id: int) -> str | None:
    table = Campaign.__table__
    with engine.connect() as connection:
        return connection.scalar(
            sa.select(table.c.state).where(table.c.campaign_id == campaign_id, table.c.channel_id == channel_id)
        )


def send_runs(campaign_id: int) -> list[str]:
    """Run ids of the send DAG for ``campaign_id`` in the session's metadata database."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted(
            session.scalars(
                sa.select(DagRun.run_id).where(
                    DagRun.dag_id == SEND_DAG, DagRun.run_id.like(f"optimove_c{campaign_id}_%")
                )
            ).all()
        )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)


def stored(engine: sa.Engine, body: dict[str, Any]) -> int:
    """Store an event as the endpoint does (no dispatch); its id."""
    result = events.store_event(engine, events.parse_event(body), raw=body)
    assert result.created and result.status == "received", result
    return result.event_id


def event13(campaign: int, channel: int = CHANNEL, when: dt.datetime | None = None) -> dict[str, Any]:
    return {
        "eventTypeId": 13,
        "timeStamp": f"{when or now():%Y-%m-%d %H:%M:%S}",
        "campaignId": campaign,
        "channelId": channel,
    }


@pytest.fixture(scope="module")
def reserialized(airflow_db: Path) -> Path:
    """The repo's DAGs serialized into the session's metadata database (runs need them)."""
    return reserialize(airflow_db)


@pytest.fixture
def engine(db_url: str, reserialized: Path) -> sa.Engine:
    migrate(db_url)
    return get_engine(db_url)


# --------------------------------------------------------------------------------------------------
# In process
# --------------------------------------------------------------------------------------------------


@dataclass
class FlakyTrigger:
    """Airflow's trigger, down for the first ``failures`` calls."""

    failures: int
    calls: int = 0
    inner: Any = field(default_factory=lambda: events.AirflowDagTrigger())

    def trigger(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise events.DispatchError("Airflow is down for a moment")
        return bool(self.inner.trigger(*args, **kwargs))

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return bool(self.inner.has_run_on(dag_id, day))


def test_a_transient_dispatch_failure_is_retried_by_the_dispatcher(engine: sa.Engine) -> None:
    campaign = new_id()
    event_id = stored(engine, event13(campaign))
    flaky = FlakyTrigger(failures=2)
    dispatcher = events.EventDispatcher(
        lambda i: events.dispatch_event(engine, i, trigger=flaky), retry_delays=(0.05, 0.1, 0.2)
    )
    try:
        assert dispatcher.submit(event_id)
        row = wait_status(engine, event_id)
    finally:
        dispatcher.stop()
    assert flaky.calls == 3
    assert send_runs(campaign) == [row.dag_run_id]
    assert dispatcher.backlog() == 0


class BarrierTrigger:
    """Airflow's trigger, but every caller waits until ``parties`` have reached it (all past the status check)."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)
        self.inner = events.AirflowDagTrigger()
        self.created: list[bool] = []

    def trigger(self, *args: Any, **kwargs: Any) -> bool:
        self.barrier.wait()
        created = bool(self.inner.trigger(*args, **kwargs))
        self.created.append(created)
        return created

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return bool(self.inner.has_run_on(dag_id, day))


def test_two_dispatches_of_one_event_at_once_make_one_run(engine: sa.Engine) -> None:
    """As when the dispatcher of one server and the sweep of another pick up the same ``received`` row."""
    campaign = new_id()
    event_id = stored(engine, event13(campaign))
    trigger = BarrierTrigger(2)
    results: list[events.DispatchResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(events.dispatch_event(engine, event_id, trigger=trigger)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(trigger.created) == [False, True]  # both tried; Airflow made one
    assert [r.status for r in results] == ["dispatched", "dispatched"]
    row = event_row(engine, event_id)
    assert row.status == "dispatched"
    assert send_runs(campaign) == [row.dag_run_id]


@pytest.mark.parametrize("first", ["cancel", "bulk"])
def test_a_cancel_stored_after_its_13_wins_whichever_is_dispatched_first(engine: sa.Engine, first: str) -> None:
    """A campaign executed on two channels; the 13 of the second is still waiting when the cancel arrives."""
    campaign = new_id()
    earlier = stored(engine, event13(campaign, OTHER_CHANNEL))
    assert events.dispatch_event(engine, earlier).status == "dispatched"  # the campaign has a row on 459
    bulk = stored(engine, event13(campaign, CHANNEL))
    cancel = stored(engine, {"eventTypeId": 4, "timeStamp": f"{now():%Y-%m-%d %H:%M:%S}", "campaignId": campaign})
    order = [cancel, bulk] if first == "cancel" else [bulk, cancel]
    for event_id in order:
        assert events.dispatch_event(engine, event_id).status == "dispatched"
    assert campaign_state(engine, campaign, CHANNEL) == "cancelled"
    assert campaign_state(engine, campaign, OTHER_CHANNEL) == "cancelled"
    assert len(send_runs(campaign)) == 2  # the runs still start (visible) and find the campaign cancelled


def test_a_full_queue_refuses_at_once_and_the_event_waits_for_the_sweep(engine: sa.Engine) -> None:
    blocker = threading.Event()
    seen: list[int] = []

    def slow(event_id: int) -> events.DispatchResult:
        seen.append(event_id)
        assert blocker.wait(60)
        return events.dispatch_event(engine, event_id)

    ids = [stored(engine, event13(new_id())) for _ in range(3)]
    dispatcher = events.EventDispatcher(slow, max_queue=1)
    try:
        assert dispatcher.submit(ids[0])
        wait_for(lambda: seen == [ids[0]], "the first event taken by the thread")
        assert dispatcher.submit(ids[1])  # queued
        assert not dispatcher.submit(ids[2])  # full: refused at once, never blocks the request
        assert dispatcher.submit(ids[1])  # already held: accepted, not queued twice
    finally:
        blocker.set()
        assert dispatcher.stop() == 0
    assert seen == ids[:2]
    assert event_row(engine, ids[2]).status == "received"
    report = events.dispatch_pending(engine, older_than_seconds=0, trigger=events.AirflowDagTrigger())
    assert ids[2] in report.event_ids


def test_stop_dispatches_what_is_queued_in_order(engine: sa.Engine) -> None:
    seen: list[int] = []
    ids = [stored(engine, event13(new_id())) for _ in range(4)]

    def record(event_id: int) -> events.DispatchResult:
        seen.append(event_id)
        return events.dispatch_event(engine, event_id)

    dispatcher = events.EventDispatcher(record)
    for event_id in ids:
        assert dispatcher.submit(event_id)
    assert dispatcher.stop(timeout=120) == 0
    assert seen == ids
    assert [event_row(engine, i).status for i in ids] == ["dispatched"] * 4
    assert not dispatcher.submit(ids[0])  # stopped: refused, left to the sweep


# --------------------------------------------------------------------------------------------------
# Batches: the 13s the dispatcher takes at once get their runs in one Airflow transaction
# --------------------------------------------------------------------------------------------------


@dataclass
class CountingTrigger:
    """Airflow's trigger, counting runs created one by one and batches."""

    single: int = 0
    batches: list[int] = field(default_factory=list)
    inner: Any = field(default_factory=lambda: events.AirflowDagTrigger())

    def trigger(self, *args: Any, **kwargs: Any) -> bool:
        self.single += 1
        return bool(self.inner.trigger(*args, **kwargs))

    def trigger_many(self, dag_id: str, runs: Any) -> dict[str, bool]:
        self.batches.append(len(runs))
        return dict(self.inner.trigger_many(dag_id, runs))

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return bool(self.inner.has_run_on(dag_id, day))


def test_a_batch_of_13s_makes_one_run_each_in_one_pass_even_when_one_exists(engine: sa.Engine) -> None:
    when = now()
    campaigns = [new_id() for _ in range(4)]
    ids = [stored(engine, event13(c, when=when)) for c in campaigns]
    existing = events.campaign_run_id(campaigns[1], CHANNEL, when)
    conf = events.campaign_conf(campaigns[1], CHANNEL, when, ids[1], "webhook")
    assert events.AirflowDagTrigger().trigger(SEND_DAG, existing, conf)  # another server got there first
    trigger = CountingTrigger()
    results = events.dispatch_events(engine, ids, trigger=trigger)
    assert [r.status for r in results] == ["dispatched"] * 4
    assert (trigger.batches, trigger.single) == ([4], 0)  # one Airflow transaction, no fallback
    assert results[1].dag_run_id == existing and "already existed" in (results[1].note or "")
    assert [send_runs(c) for c in campaigns] == [[r.dag_run_id] for r in results]
    again = events.dispatch_events(engine, ids, trigger=trigger)  # a repeat (another server, the sweep)
    assert [r.status for r in again] == ["dispatched"] * 4
    assert [send_runs(c) for c in campaigns] == [[r.dag_run_id] for r in results]
    assert trigger.single == 0


@pytest.mark.parametrize("first", ["cancel", "bulk", "together"])
def test_a_cancel_wins_over_a_13_dispatched_in_a_batch(engine: sa.Engine, first: str) -> None:
    """As one by one: the campaign on two channels, the 13 of the second dispatched in a batch with others."""
    campaign = new_id()
    earlier = stored(engine, event13(campaign, OTHER_CHANNEL))
    assert events.dispatch_event(engine, earlier).status == "dispatched"  # the campaign has a row on 459
    batch = [stored(engine, event13(campaign, CHANNEL)), *(stored(engine, event13(new_id())) for _ in range(2))]
    cancel = stored(engine, {"eventTypeId": 4, "timeStamp": f"{now():%Y-%m-%d %H:%M:%S}", "campaignId": campaign})
    trigger = CountingTrigger()
    if first == "cancel":
        assert events.dispatch_event(engine, cancel, trigger=trigger).status == "dispatched"
    ids = [cancel, *batch] if first == "together" else batch
    assert {r.status for r in events.dispatch_events(engine, ids, trigger=trigger)} == {"dispatched"}
    if first == "bulk":
        assert events.dispatch_event(engine, cancel, trigger=trigger).status == "dispatched"
    assert trigger.batches == [3] and trigger.single == 0
    assert campaign_state(engine, campaign, CHANNEL) == "cancelled"
    assert campaign_state(engine, campaign, OTHER_CHANNEL) == "cancelled"
    assert len(send_runs(campaign)) == 2  # the runs still start (visible) and find the campaign cancelled


def test_the_dispatcher_takes_what_queued_up_as_one_batch_and_retries_a_failed_one(engine: sa.Engine) -> None:
    blocker = threading.Event()
    calls: list[list[int]] = []
    failures = [RuntimeError("the state database went away")]

    def one(event_id: int) -> events.DispatchResult:
        calls.append([event_id])
        assert blocker.wait(60)
        return events.dispatch_event(engine, event_id)

    def many(event_ids: list[int]) -> list[events.DispatchResult]:
        calls.append(list(event_ids))
        if failures:
            raise failures.pop()
        return events.dispatch_events(engine, event_ids, trigger=events.AirflowDagTrigger())

    first, *rest = [stored(engine, event13(new_id())) for _ in range(4)]
    dispatcher = events.EventDispatcher(one, dispatch_many=many, retry_delays=(0.05, 0.1, 0.2))
    try:
        assert dispatcher.submit(first)
        wait_for(lambda: calls == [[first]], "the first event taken by the thread")
        for event_id in rest:
            assert dispatcher.submit(event_id)
        blocker.set()
        for event_id in [first, *rest]:
            wait_status(engine, event_id)
    finally:
        blocker.set()
        dispatcher.stop()
    assert calls[:2] == [[first], rest]  # the rest queued together and was dispatched together (and failed)
    assert sorted(i for call in calls[2:] for i in call) == sorted(rest)  # each retried, once
    assert dispatcher.backlog() == 0 and dispatcher.dispatched == 4


# --------------------------------------------------------------------------------------------------
# Real API servers on one state database
# --------------------------------------------------------------------------------------------------

SERVER_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def shared_state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated state database for this module's servers (PostgreSQL: a throwaway database of its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dispatch-state') / 'state.db'}"
        migrate(url)
        yield url
        dispose_engines()
        return
    reason = scratch.check_reachable()
    if reason is not None:
        pytest.fail(f"PostgreSQL is not reachable ({reason})", pytrace=False)
    with scratch.throwaway_database("onm_dispatch") as url:
        migrate(url)
        yield url
        dispose_engines()


@dataclass
class Pair:
    first: Server
    second: Server
    home: Path
    tmp: Path


@pytest.fixture(scope="module")
def pair(shared_state: str, reserialized: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two API servers on the same state database, both with the re-dispatch sweep off."""
    tmp = tmp_path_factory.mktemp("dispatch-servers")
    servers = [start_server(shared_state, reserialized, tmp / f"api-{n}.log", env=NO_SWEEP) for n in (1, 2)]
    try:
        for server in servers:
            wait_healthy(server)
        yield Pair(servers[0], servers[1], reserialized, tmp)
    finally:
        for server in servers:
            stop_server(server)


def stamp(moment: dt.datetime | None = None) -> str:
    return f"{moment or now():%Y-%m-%d %H:%M:%S}"


def dispatched_lines(server: Server, event_id: int) -> list[str]:
    return [
        line
        for line in server.log().splitlines()
        if f"Optimove event {event_id} (type" in line and "dispatched:" in line
    ]


def test_the_run_appears_with_no_sweep_running(pair: Pair, shared_state: str) -> None:
    engine = get_engine(shared_state)
    campaign = new_id()
    response = pair.first.post_event(event13(campaign))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "accepted" and answer["dispatch"] == "queued"
    row = wait_status(engine, answer["event_id"])
    assert row.dag_run_id == answer["dag_run_id"]
    assert send_runs(campaign) == [answer["dag_run_id"]]
    wait_for(lambda: dispatched_lines(pair.first, row.id), "the server's own dispatch logged")
    assert dispatched_lines(pair.second, row.id) == []


def test_duplicate_posts_racing_to_two_servers_make_one_event_and_one_run(pair: Pair, shared_state: str) -> None:
    engine = get_engine(shared_state)
    campaign = new_id()
    body = json.dumps(event13(campaign)).encode()
    start = threading.Barrier(16, timeout=60)
    answers: list[httpx.Response] = []

    def post(server: Server) -> None:
        start.wait()
        answers.append(server.post_event(body))

    threads = [threading.Thread(target=post, args=(s,)) for s in [pair.first, pair.second] * 8]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers]
    statuses = sorted(a.json()["status"] for a in answers)
    assert statuses == ["accepted"] + ["duplicate"] * 15
    event_ids = {a.json()["event_id"] for a in answers}
    assert len(event_ids) == 1
    event_id = event_ids.pop()
    row = wait_status(engine, event_id)
    assert send_runs(campaign) == [row.dag_run_id]
    table = Event.__table__
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).where(table.c.campaign_id == campaign)) == 1
    assert len(dispatched_lines(pair.first, event_id) + dispatched_lines(pair.second, event_id)) == 1


def test_an_event_stored_by_a_killed_server_is_dispatched_by_the_next_ones_sweep(pair: Pair, shared_state: str) -> None:
    """A server with its dispatcher off stores a 13 and is killed; the cancel that follows (to another server)
    is dispatched first; a restarted server's sweep then dispatches the 13, and the campaign stays cancelled."""
    engine = get_engine(shared_state)
    campaign = new_id()
    earlier = pair.first.post_event(event13(campaign, OTHER_CHANNEL))
    wait_status(engine, earlier.json()["event_id"])
    mute = start_server(
        shared_state,
        pair.home,
        pair.tmp / f"api-mute-{campaign}.log",
        env={**NO_SWEEP, "OPTIMOVE_NETMERA_API_DISPATCHER": "0"},
    )
    try:
        wait_healthy(mute)
        bulk = mute.post_event(event13(campaign, CHANNEL))
        assert bulk.status_code == 200, bulk.text
        assert bulk.json()["dispatch"] == "pending"
    finally:
        mute.process.kill()  # SIGKILL: no shutdown, nothing drained
        mute.process.wait()
    bulk_id = bulk.json()["event_id"]
    cancel = pair.first.post_event({"eventTypeId": 4, "timeStamp": stamp(), "campaignId": campaign})
    assert cancel.status_code == 200, cancel.text
    wait_status(engine, cancel.json()["event_id"])
    assert event_row(engine, bulk_id).status == "received"  # no sweep anywhere yet: the 13 waits

    sweeper = start_server(
        shared_state,
        pair.home,
        pair.tmp / f"api-sweeper-{campaign}.log",
        env={"OPTIMOVE_NETMERA_API_SWEEP_SECONDS": "0.5", "OPTIMOVE_NETMERA_API_REDISPATCH_AFTER_SECONDS": "0"},
    )
    try:
        wait_healthy(sweeper)
        row = wait_status(engine, bulk_id)
        assert dispatched_lines(sweeper, bulk_id)
    finally:
        stop_server(sweeper)
    assert row.dag_run_id == bulk.json()["dag_run_id"]
    assert row.dag_run_id in send_runs(campaign)
    assert campaign_state(engine, campaign, CHANNEL) == "cancelled"
    assert campaign_state(engine, campaign, OTHER_CHANNEL) == "cancelled"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OPTIMOVE_NETMERA_API_SWEEP_SECONDS", "soon"),
        ("OPTIMOVE_NETMERA_API_REDISPATCH_AFTER_SECONDS", "-1"),
        ("OPTIMOVE_NETMERA_API_DISPATCHER", "yes"),
    ],
)
def test_a_bad_dispatch_setting_fails_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    from optimove_netmera.campaigns import api

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        api.create_app()
