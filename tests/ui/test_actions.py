"""The page's actions on a real state database (SQLite and PostgreSQL): replay of sync dead letters, re-dispatch.

Replay is checked end to end through the sync's own planner: after replaying a letter, the next run's
:func:`~optimove_netmera.sync.plan.build_plan` puts that customer's attributes in a set batch.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.settings import get_settings
from optimove_netmera.store import (
    DeadLetter,
    Event,
    SyncChange,
    SyncRun,
    SyncStaging,
    get_engine,
    migrate,
)
from optimove_netmera.sync.plan import build_plan
from optimove_netmera.ui import actions, queries

NOW = dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    migrate(db_url)
    return get_engine(db_url)


def _run(conn: sa.Connection, run_id: int, status: str, **values: Any) -> None:
    conn.execute(
        sa.insert(SyncRun).values(
            id=run_id, dag_id="optimove_user_sync", dag_run_id=f"r{run_id}", status=status, params={}, **values
        )
    )


def _change(conn: sa.Connection, run_id: int, customer: str, status: str, name: str, reason: str | None = None) -> None:
    conn.execute(
        sa.insert(SyncChange).values(
            sync_run_id=run_id,
            customer_id=customer,
            ext_id=customer,
            new_hash="00000000000000ab",
            set_attrs={"name": name},
            unset_attrs=[],
            present_bits="1",
            set_batch_no=0,
            status=status,
            reason=reason,
        )
    )


def _letter(conn: sa.Connection, run_ref: str, customer: str, kind: str = "profile_set") -> int:
    return int(
        conn.execute(
            sa.insert(DeadLetter)
            .values(kind=kind, ref=run_ref, customer_id=customer, ext_id=customer, reason="400 refused", attempts=1)
            .returning(DeadLetter.id)
        ).scalar_one()
    )


def test_replay_queues_the_customer_for_the_next_sync_run(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _run(conn, 1, "success")
        _change(conn, 1, "C1", "dead", "Ann", "400 refused")
        _change(conn, 1, "C2", "delivered", "Bob")
        letter = _letter(conn, "sync_run:1", "C1")
        _run(conn, 2, "running")
        conn.execute(
            sa.insert(SyncStaging).values(
                sync_run_id=2, customer_id="C9", ext_id="C9", attributes={"v": {"FirstName": "Zed"}, "c": ["FirstName"]}
            )
        )

    result = actions.replay_dead_letters(engine, [letter], "alice", now=NOW)

    assert result.as_dict() == {"queued": [letter], "superseded": [], "refused": {}}
    with engine.connect() as conn:
        key = (SyncChange.sync_run_id == 1, SyncChange.customer_id == "C1")
        row = conn.execute(sa.select(SyncChange).where(*key)).one()
        replayed_at = conn.execute(sa.select(DeadLetter.replayed_at).where(DeadLetter.id == letter)).scalar_one()
    assert (row.status, row.reason) == ("not_found", f"replay of dead letter {letter} requested by alice")
    assert replayed_at == NOW
    # the page no longer offers it, and says it was replayed
    page = queries.dead_letters(engine)
    assert page["letters"] == [] and page["counts"] == {"profile_set": {"open": 0, "replayed": 1}}

    plan = build_plan(engine, 2, get_settings(), max_change_ratio=1.0, dry_run=False, probe=lambda ext_ids: set())

    assert (plan.carried_over, plan.set_entries, plan.set_batches) == (1, 2, 1)
    with engine.connect() as conn:
        planned = conn.execute(
            sa.select(SyncChange.customer_id, SyncChange.set_attrs, SyncChange.set_batch_no, SyncChange.status)
            .where(SyncChange.sync_run_id == 2)
            .order_by(SyncChange.customer_id)
        ).all()
    assert [tuple(r) for r in planned] == [("C1", {"name": "Ann"}, 0, "pending"), ("C9", {"name": "Zed"}, 0, "pending")]


def test_replay_superseded_refused_and_running_runs(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _run(conn, 1, "success")
        _change(conn, 1, "C1", "dead", "Ann")
        _change(conn, 1, "C3", "dead", "Cy")
        old = _letter(conn, "sync_run:1", "C1")
        open_letter = _letter(conn, "sync_run:1", "C3")
        send = _letter(conn, "77:506", "C5", kind="send")
        _run(conn, 2, "success")
        _change(conn, 2, "C1", "delivered", "Ann B.")  # a later run delivered C1: the old letter is superseded
        _run(conn, 3, "running", counts={"planned": True})  # planned already: its carry-over source is itself

    result = actions.replay_dead_letters(engine, [old, open_letter, send, 999_999], "bob", now=NOW)

    assert result.as_dict() == {
        "queued": [open_letter],
        "superseded": [old],
        "refused": {str(send): "campaign send letters are not replayed from the page", "999999": "no such dead letter"},
    }
    with engine.connect() as conn:
        carried = conn.execute(
            sa.select(SyncChange.sync_run_id, SyncChange.status, SyncChange.set_attrs)
            .where(SyncChange.customer_id == "C3")
            .order_by(SyncChange.sync_run_id)
        ).all()
    # copied into the latest successful run (2) and the planned running one (3); run 1 keeps its record
    assert [tuple(r) for r in carried] == [
        (1, "dead", {"name": "Cy"}),
        (2, "not_found", {"name": "Cy"}),
        (3, "not_found", {"name": "Cy"}),
    ]
    again = actions.replay_dead_letters(engine, [open_letter], "bob", now=NOW)
    assert again.refused == {open_letter: f"already replayed at {NOW.isoformat()}"}
    with pytest.raises(actions.ActionRefused, match="no dead letters selected"):
        actions.replay_dead_letters(engine, [], "bob")


class FakeTrigger:
    """Records DAG runs instead of creating them in Airflow."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], **kwargs: Any) -> bool:
        self.runs.append((dag_id, run_id))
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        return False


def _event(conn: sa.Connection, key: str, type_id: int, status: str, channel: int | None = 506) -> int:
    return int(
        conn.execute(
            sa.insert(Event)
            .values(
                dedup_key=key,
                event_type_id=type_id,
                campaign_id=4242,
                channel_id=channel,
                event_time=NOW,
                status=status,
                note=f"channel {channel} is not configured (campaigns.channels)"
                if status in ("ignored", "held")
                else None,
            )
            .returning(Event.id)
        ).scalar_one()
    )


def test_redispatch(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        received = _event(conn, "a", 13, "received")
        ignored = _event(conn, "b", 13, "ignored", channel=777)  # stored by an older version for a channel then
        held = _event(conn, "d", 13, "held", channel=778)
        sent = _event(conn, "c", 11, "sent")
    trigger = FakeTrigger()
    settings = get_settings()

    result = actions.redispatch_event(engine, received, "carol", settings, trigger=trigger)

    assert (result["status"], result["dag_run_id"], result["requested_by"]) == (
        "dispatched",
        "optimove_c4242_ch506_20261201T060000",
        "carol",
    )
    assert trigger.runs == [("optimove_campaign_send", "optimove_c4242_ch506_20261201T060000")]
    with pytest.raises(actions.ActionRefused, match=r"channel 777, which is still not in campaigns\.channels"):
        actions.redispatch_event(engine, ignored, "carol", settings, trigger=trigger)
    with pytest.raises(actions.ActionRefused, match="is still held"):
        actions.redispatch_event(engine, held, "carol", settings, trigger=trigger)
    channels = [*settings.campaigns.channels, 777, 778]
    fixed = settings.model_copy(update={"campaigns": settings.campaigns.model_copy(update={"channels": channels})})
    assert actions.redispatch_event(engine, ignored, "carol", fixed, trigger=trigger)["status"] == "dispatched"
    assert actions.redispatch_event(engine, held, "carol", fixed, trigger=trigger)["status"] == "dispatched"
    assert ("optimove_campaign_send", "optimove_c4242_ch778_20261201T060000") in trigger.runs
    with pytest.raises(actions.ActionRefused, match="is sent"):
        actions.redispatch_event(engine, sent, "carol", settings, trigger=trigger)
    with pytest.raises(LookupError):
        actions.redispatch_event(engine, 999_999, "carol", settings, trigger=trigger)
