"""The state database: migrations, models, engine settings, errors, generic queries, CLI.

Every test taking ``db_url``/``migrated_url``/``engine`` runs twice: on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from optimove_netmera.campaigns.recipients import claim_chunk
from optimove_netmera.sandbox.process import free_port
from optimove_netmera.store import (
    ENV_URL,
    VERSION_TABLE,
    Base,
    BatchKind,
    BatchStatus,
    Campaign,
    CampaignMetricReport,
    CampaignState,
    CancelledCustomer,
    CancelScope,
    ChangeStatus,
    ChannelTemplate,
    CustomerSnapshot,
    DeadLetter,
    DeadLetterKind,
    Event,
    EventSource,
    EventStatus,
    Recipient,
    RecipientStatus,
    SendChunk,
    StateDatabaseError,
    SyncBatch,
    SyncChange,
    SyncRun,
    SyncRunStatus,
    SyncStaging,
    check_database,
    claim,
    create_state_engine,
    current_revision,
    default_state_db_url,
    dialect_insert,
    dispose_engines,
    downgrade,
    get_engine,
    head_revision,
    insert_if_absent,
    last_successful_sync,
    migrate,
    redact_url,
    session_scope,
    sqlite_values_insert,
    transition,
    upsert,
)
from optimove_netmera.store.queries import SQLITE_MAX_ROWS_PER_INSERT, transition_statement
from sqlalchemy.engine import Engine

UTC = dt.UTC
STATE_TABLES = {
    "attribute_names",
    "sync_runs",
    "customer_snapshot",
    "sync_staging",
    "sync_changes",
    "sync_batches",
    "events",
    "campaigns",
    "recipients",
    "send_chunks",
    "cancelled_customers",
    "dead_letters",
    "campaign_metrics",
    "channel_templates",
}
PAYLOAD = {
    "eventTypeId": 13,
    "nested": {"list": [1, 2.5, "çğüşö", None, True], "empty": {}},
    "emoji": "🚀",
}


def _tables(url: str) -> set[str]:
    with get_engine(url).connect() as connection:
        return set(sa.inspect(connection).get_table_names())


# --------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------


def test_migrate_up_down_up(db_url: str) -> None:
    assert current_revision(db_url) is None
    assert migrate(db_url) == head_revision() == "0009"
    tables = _tables(db_url)
    assert tables == STATE_TABLES | {VERSION_TABLE}
    assert "alembic_version" not in tables  # a distinct version table: the DB can be shared

    assert migrate(db_url) == "0009"  # idempotent
    assert downgrade(db_url, "base") is None
    assert _tables(db_url) <= {VERSION_TABLE}
    assert migrate(db_url, "head") == "0009"
    assert _tables(db_url) == STATE_TABLES | {VERSION_TABLE}
    assert check_database(db_url) == "0009"


def test_migrated_schema_matches_models(migrated_url: str) -> None:
    """The hand-written migration creates exactly what the models declare (nothing for autogenerate)."""
    with get_engine(migrated_url).connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, type_, _parents: not (type_ == "table" and name == VERSION_TABLE),
            },
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_concurrent_migrate_is_serialised(db_url: str, tmp_path: Path) -> None:
    """Several processes (scheduler, API server, workers) and threads may migrate at once."""
    script = "import sys; from optimove_netmera.store import migrate; print(migrate(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    results: list[str | None] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(db_url))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert results == ["0009", "0009"]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "0009"
    assert _tables(db_url) == STATE_TABLES | {VERSION_TABLE}


def test_in_memory_sqlite_can_be_migrated_and_used() -> None:
    url = "sqlite://"
    assert migrate(url) == "0009"
    with session_scope(url) as session:
        session.add(Campaign(campaign_id=1, channel_id=2))
    with session_scope(url) as session:
        assert session.get(Campaign, (1, 2)) is not None


def test_offline_sql_is_printable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'offline.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "optimove_netmera.store", "upgrade", "--sql", "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CREATE TABLE recipients" in proc.stdout
    assert f"CREATE TABLE {VERSION_TABLE}" in proc.stdout
    assert not (tmp_path / "offline.db").exists() or _tables(url) == set()


# --------------------------------------------------------------------------------------------------
# Models: round trips, timestamps, constraints
# --------------------------------------------------------------------------------------------------


def test_every_table_round_trips_json_and_timestamps(engine: Engine) -> None:
    istanbul = ZoneInfo("Europe/Istanbul")
    moment = dt.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=istanbul)
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=5)
    with session_scope(engine) as session:
        run = SyncRun(
            dag_id="optimove_user_sync",
            dag_run_id="scheduled__2026-03-28",
            full_refresh=True,
            window_start=dt.date(2026, 3, 1),
            window_end=dt.date(2026, 3, 28),
            params={"max_change_ratio": 0.5},
            counts={"fetched": 10, "skipped": {"invalid_date": 2}},
            phase_seconds={"extract": 1.25},
            finished_at=moment,
        )
        session.add(run)
        session.flush()
        session.add_all(
            [
                CustomerSnapshot(
                    customer_id="C0000001",
                    ext_id="C0000001",
                    attr_hash="ab" * 32,
                    present_bits="5",
                    sync_run_id=run.id,
                ),
                SyncStaging(sync_run_id=run.id, customer_id="C0000001", ext_id="C0000001", attributes=PAYLOAD),
                SyncChange(
                    sync_run_id=run.id,
                    customer_id="C0000001",
                    ext_id="C0000001",
                    new_hash="cd" * 32,
                    set_attrs={"firstName": "Ayşe", "age": 31, "vip": True},
                    unset_attrs=["country"],
                    present_bits="1a",
                    set_batch_no=0,
                    unset_batch_no=0,
                ),
                SyncBatch(sync_run_id=run.id, kind=BatchKind.SET, batch_no=0, size=1),
                Event(
                    dedup_key="13:1001:506:2026-03-28T22:30:15",
                    event_type_id=13,
                    campaign_id=1001,
                    channel_id=506,
                    event_time=moment,
                    raw_payload=PAYLOAD,
                    promo_code="PROMO-1",
                ),
                Campaign(
                    campaign_id=1001,
                    channel_id=506,
                    event_time=moment,
                    details={"Channels": [{"Id": 506}], "Tags": []},
                    cancelled_at=moment,
                    cancel_scope=CancelScope.PARTIAL,
                ),
                CancelledCustomer(campaign_id=1001, customer_id="C0000002"),
                DeadLetter(
                    kind=DeadLetterKind.PROFILE_SET,
                    ref=str(run.id),
                    customer_id="C0000001",
                    ext_id="C0000001",
                    payload=PAYLOAD,
                    reason="400 code 2004",
                ),
            ]
        )
        session.flush()
        session.add(
            Recipient(
                campaign_id=1001,
                channel_id=506,
                customer_id="C0000001",
                template_id=7,
                ext_id="C0000001",
                scheduled_time=moment,
                notification_key="96",
                params={"firstName": "Ayşe", "promo": None},
                chunk_no=0,
            )
        )
    after = dt.datetime.now(UTC) + dt.timedelta(seconds=5)

    def server_time(value: dt.datetime) -> None:
        assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)
        assert before <= value <= after

    with session_scope(engine) as session:
        run = session.scalars(sa.select(SyncRun)).one()
        assert (run.status, run.full_refresh, run.dry_run) == ("running", True, False)
        assert (run.window_start, run.window_end) == (dt.date(2026, 3, 1), dt.date(2026, 3, 28))
        assert run.counts == {"fetched": 10, "skipped": {"invalid_date": 2}}
        assert run.params == {"max_change_ratio": 0.5} and run.phase_seconds == {"extract": 1.25}
        assert run.finished_at == moment and run.finished_at.tzinfo == UTC
        assert run.finished_at.hour == 22  # 01:30 in Istanbul (UTC+3) is 22:30 UTC the day before
        server_time(run.started_at)
        server_time(run.updated_at)

        snap = session.get(CustomerSnapshot, "C0000001")
        assert snap is not None and snap.present_bits == "5"
        server_time(snap.delivered_at)

        staged = session.get(SyncStaging, (run.id, "C0000001"))
        assert staged is not None and staged.attributes == PAYLOAD

        change = session.get(SyncChange, (run.id, "C0000001"))
        assert change is not None
        assert change.set_attrs == {"firstName": "Ayşe", "age": 31, "vip": True}
        assert (change.unset_attrs, change.status) == (["country"], ChangeStatus.PENDING)

        batch = session.scalars(sa.select(SyncBatch)).one()
        assert (batch.kind, batch.status, batch.attempts, batch.size, batch.error) == ("set", "pending", 0, 1, None)
        server_time(batch.created_at)

        event = session.scalars(sa.select(Event)).one()
        assert event.raw_payload == PAYLOAD and event.event_time == moment
        assert (event.source, event.status, event.promo_code) == ("webhook", "received", "PROMO-1")
        server_time(event.received_at)

        campaign = session.get(Campaign, (1001, 506))
        assert campaign is not None and campaign.details == {"Channels": [{"Id": 506}], "Tags": []}
        assert (campaign.state, campaign.cancel_scope, campaign.counts) == ("received", "partial", {})
        assert campaign.cancelled_at == moment

        recipient = session.scalars(sa.select(Recipient)).one()
        assert recipient.params == {"firstName": "Ayşe", "promo": None}
        assert recipient.scheduled_time == moment and recipient.notification_key == "96"
        assert (recipient.status, recipient.attempts, recipient.reason) == ("pending", 0, None)

        cancelled = session.get(CancelledCustomer, (1001, "C0000002"))
        assert cancelled is not None
        server_time(cancelled.fetched_at)

        letter = session.scalars(sa.select(DeadLetter)).one()
        assert letter.payload == PAYLOAD and letter.replayed_at is None and letter.attempts == 0


def test_json_none_is_sql_null(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Event(dedup_key="k", event_type_id=1, raw_payload=None))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM events WHERE raw_payload IS NULL")).scalar() == 1


def test_json_columns_take_nan_non_ascii_and_big_ints(engine: Engine) -> None:
    # json.dumps would write NaN, which PostgreSQL's JSONB refuses; the state engine writes null
    payload = {"ltv": float("nan"), "name": "Çağla 李", "big": 2**63 + 1, "nested": [1.5, None, True]}
    with session_scope(engine) as session:
        session.add(Event(dedup_key="j", event_type_id=1, raw_payload=payload))
    with engine.connect() as connection:
        stored = connection.execute(sa.select(Event.raw_payload).where(Event.dedup_key == "j")).scalar_one()
    assert stored == {"ltv": None, "name": "Çağla 李", "big": 2**63 + 1, "nested": [1.5, None, True]}


def test_naive_datetimes_are_rejected(engine: Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), session_scope(engine) as session:
        session.add(Event(dedup_key="naive", event_type_id=13, event_time=dt.datetime(2026, 1, 1, 10, 0)))


def test_server_timestamps_sort_with_client_timestamps(engine: Engine) -> None:
    """On SQLite both are stored in the same text format, so comparisons in SQL are right."""
    with session_scope(engine) as session:
        session.add(Event(dedup_key="t", event_type_id=13))
    with session_scope(engine) as session:
        received = session.scalars(sa.select(Event.received_at)).one()
        window = received - dt.timedelta(microseconds=1), received + dt.timedelta(microseconds=1)
        hits = session.scalars(
            sa.select(Event.id).where(Event.received_at > window[0], Event.received_at < window[1])
        ).all()
        assert len(hits) == 1
        assert session.scalars(sa.select(Event.id).where(Event.received_at > received)).all() == []


def test_unique_dedup_key(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Event(dedup_key="13:1:506:2026-01-01T10:00:00", event_type_id=13))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Event(dedup_key="13:1:506:2026-01-01T10:00:00", event_type_id=13))
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 1


def test_unique_recipient_key_and_foreign_key(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Campaign(campaign_id=1, channel_id=506))
        session.flush()
        session.add(Recipient(campaign_id=1, channel_id=506, customer_id="C1", template_id=7))
        session.add(Recipient(campaign_id=1, channel_id=506, customer_id="C1", template_id=8))  # other template
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Recipient(campaign_id=1, channel_id=506, customer_id="C1", template_id=7))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Recipient(campaign_id=2, channel_id=506, customer_id="C1", template_id=7))  # no campaign
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Recipient)) == 2
        session.delete(session.get(Campaign, (1, 506)))  # cascades to the ledger
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Recipient)) == 0


def test_metrics_ledger_key_foreign_key_and_owned_templates(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Campaign(campaign_id=1, channel_id=506))
        session.flush()
        session.add(CampaignMetricReport(campaign_id=1, channel_id=506, template_id=7, metric_id=0, reported=5))
        session.add(CampaignMetricReport(campaign_id=1, channel_id=506, template_id=7, metric_id=9))
        session.add(ChannelTemplate(channel_id=506, template_id=7, name="Welcome Push"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:  # one row per metric
        session.add(CampaignMetricReport(campaign_id=1, channel_id=506, template_id=7, metric_id=0))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:  # no such campaign
        session.add(CampaignMetricReport(campaign_id=2, channel_id=506, template_id=7, metric_id=0))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(ChannelTemplate(channel_id=506, template_id=7, name="again"))
    with session_scope(engine) as session:
        row = session.get(CampaignMetricReport, (1, 506, 7, 9))
        assert (row.reported, row.sending) == (0, None)  # server default: nothing reported yet
        session.delete(session.get(Campaign, (1, 506)))  # cascades to the metrics ledger
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CampaignMetricReport)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(ChannelTemplate)) == 1


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (Event, {"dedup_key": "x", "event_type_id": 13, "status": "bogus"}),
        (Event, {"dedup_key": "x", "event_type_id": 13, "source": "carrier-pigeon"}),
        (Campaign, {"campaign_id": 1, "channel_id": 2, "state": "paused"}),
        (Campaign, {"campaign_id": 1, "channel_id": 2, "cancel_scope": "some"}),
        (DeadLetter, {"kind": "email", "ref": "1", "customer_id": "C1"}),
    ],
)
def test_check_constraints_reject_unknown_statuses(engine: Engine, model: type[Base], values: dict) -> None:
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(model(**values))


def test_str_enum_members_bind_as_their_values(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Event(dedup_key="e", event_type_id=11, status=EventStatus.QUEUED, source=EventSource.MANUAL))
    with session_scope(engine) as session:
        assert claim(
            session,
            Event,
            {"dedup_key": "e"},
            from_status=EventStatus.QUEUED,
            to_status=EventStatus.PROCESSING,
            increment_attempts=False,
        )
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT status, source FROM events")).one()
    assert tuple(row) == ("processing", "manual")


# --------------------------------------------------------------------------------------------------
# Queries: upsert, insert_if_absent, claim/transition, last successful sync
# --------------------------------------------------------------------------------------------------


def test_upsert_inserts_then_updates(engine: Engine) -> None:
    rows = [{"customer_id": f"C{i}", "ext_id": f"C{i}", "attr_hash": "0" * 64, "present_bits": "1"} for i in range(5)]
    with session_scope(engine) as session:
        assert upsert(session, CustomerSnapshot, rows, chunk_size=2) == 5
    changed = [{**row, "attr_hash": "1" * 64, "present_bits": "3"} for row in rows[3:]]
    changed.append({"customer_id": "C9", "ext_id": "C9", "attr_hash": "2" * 64, "present_bits": "0"})
    with session_scope(engine) as session:
        upsert(session, CustomerSnapshot, changed)
    with session_scope(engine) as session:
        snapshot = {
            s.customer_id: (s.attr_hash[0], s.present_bits) for s in session.scalars(sa.select(CustomerSnapshot))
        }
    assert snapshot == {
        "C0": ("0", "1"),
        "C1": ("0", "1"),
        "C2": ("0", "1"),
        "C3": ("1", "3"),
        "C4": ("1", "3"),
        "C9": ("2", "0"),
    }


def test_upsert_on_unique_key_do_nothing_and_where(engine: Engine) -> None:
    letter = {"kind": "send", "ref": "1001:506", "customer_id": "C1", "reason": "first", "attempts": 1}
    with session_scope(engine) as session:
        assert upsert(session, DeadLetter, letter, conflict_columns=["kind", "ref", "customer_id"]) == 1
        upsert(
            session,
            DeadLetter,
            {**letter, "reason": "ignored"},
            conflict_columns=["kind", "ref", "customer_id"],
            update_columns=[],
        )
    with session_scope(engine) as session:
        assert session.scalars(sa.select(DeadLetter.reason)).one() == "first"
        # only update when the stored row has fewer attempts than the new one
        table = DeadLetter.__table__
        upsert(
            session,
            DeadLetter,
            {**letter, "reason": "older", "attempts": 0},
            conflict_columns=["kind", "ref", "customer_id"],
            where=table.c.attempts < 0,
        )
        upsert(
            session,
            DeadLetter,
            {**letter, "reason": "second", "attempts": 2},
            conflict_columns=["kind", "ref", "customer_id"],
            where=table.c.attempts < 2,
        )
    with session_scope(engine) as session:
        assert session.execute(sa.select(DeadLetter.reason, DeadLetter.attempts)).one() == ("second", 2)
        assert session.scalar(sa.select(sa.func.count()).select_from(DeadLetter)) == 1


def test_upsert_refreshes_updated_at(engine: Engine) -> None:
    with session_scope(engine) as session:
        upsert(session, Campaign, {"campaign_id": 1, "channel_id": 2, "state": "received"})
    with session_scope(engine) as session:
        first = session.get(Campaign, (1, 2))
        assert first is not None
        # make the stored updated_at clearly older than now
        old = dt.datetime(2020, 1, 1, tzinfo=UTC)
        session.execute(sa.update(Campaign).values(updated_at=old, created_at=old))
    with session_scope(engine) as session:
        upsert(session, Campaign, {"campaign_id": 1, "channel_id": 2, "state": "staged"})
    with session_scope(engine) as session:
        campaign = session.get(Campaign, (1, 2))
        assert campaign is not None and campaign.state == "staged"
        assert campaign.created_at == dt.datetime(2020, 1, 1, tzinfo=UTC)
        assert campaign.updated_at > dt.datetime.now(UTC) - dt.timedelta(minutes=5)


def test_set_based_upsert_from_select(engine: Engine) -> None:
    """dialect_insert() composes INSERT ... SELECT ... ON CONFLICT (the snapshot commit of a sync)."""
    with session_scope(engine) as session:
        run = SyncRun()
        session.add(run)
        session.flush()
        session.add(CustomerSnapshot(customer_id="C1", ext_id="C1", attr_hash="old", present_bits="1"))
        for i, status in enumerate(["delivered", "delivered", "failed"], start=1):
            session.add(
                SyncChange(
                    sync_run_id=run.id,
                    customer_id=f"C{i}",
                    ext_id=f"C{i}",
                    new_hash=f"h{i}",
                    present_bits="2",
                    status=status,
                )
            )
        session.flush()
        changes = SyncChange.__table__
        select = sa.select(
            changes.c.customer_id, changes.c.ext_id, changes.c.new_hash, changes.c.present_bits, changes.c.sync_run_id
        ).where(changes.c.sync_run_id == run.id, changes.c.status == "delivered")
        stmt = dialect_insert(session, CustomerSnapshot).from_select(
            ["customer_id", "ext_id", "attr_hash", "present_bits", "sync_run_id"], select
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={
                "attr_hash": stmt.excluded.attr_hash,
                "present_bits": stmt.excluded.present_bits,
                "delivered_at": sa.func.current_timestamp(),
                "sync_run_id": stmt.excluded.sync_run_id,
            },
        )
        session.execute(stmt)
    with session_scope(engine) as session:
        rows = {s.customer_id: (s.attr_hash, s.present_bits) for s in session.scalars(sa.select(CustomerSnapshot))}
    assert rows == {"C1": ("h1", "2"), "C2": ("h2", "2")}


def test_insert_if_absent(engine: Engine) -> None:
    event = {"dedup_key": "13:1:506:t", "event_type_id": 13, "campaign_id": 1, "channel_id": 506}
    with session_scope(engine) as session:
        assert insert_if_absent(session, Event, event, conflict_columns=["dedup_key"]) is True
        assert insert_if_absent(session, Event, event, conflict_columns=["dedup_key"]) is False
    with session_scope(engine) as session:
        assert insert_if_absent(session, Event, {**event, "note": "again"}, conflict_columns=["dedup_key"]) is False
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 1
        assert session.scalars(sa.select(Event.note)).one() is None


def test_claim_and_transition(engine: Engine) -> None:
    with session_scope(engine) as session:
        run = SyncRun()
        session.add(run)
        session.flush()
        session.add(SyncBatch(sync_run_id=run.id, kind=BatchKind.UNSET, batch_no=3, size=10))
        run_id = run.id
    key = {"sync_run_id": run_id, "kind": "unset", "batch_no": 3}
    with session_scope(engine) as session:
        assert claim(session, SyncBatch, key) is True
        assert claim(session, SyncBatch, key) is False  # already in flight
    with session_scope(engine) as session:
        # a retry may take over a failed or stale in-flight batch, explicitly
        assert claim(
            session,
            SyncBatch,
            key,
            from_status=["in_flight", "failed"],
            to_status="in_flight",
            values={"error": "retry"},
        )
    with session_scope(engine) as session:
        batch = session.scalars(sa.select(SyncBatch)).one()
        assert (batch.status, batch.attempts, batch.error) == ("in_flight", 2, "retry")
        assert (
            transition(
                session,
                SyncBatch,
                key=key,
                from_status=BatchStatus.IN_FLIGHT,
                to_status=BatchStatus.DELIVERED,
                values={"error": None},
            )
            == 1
        )
        assert transition(session, SyncBatch, key=key, from_status="pending", to_status="in_flight") == 0
    with session_scope(engine) as session:
        batch = session.scalars(sa.select(SyncBatch)).one()
        assert (batch.status, batch.attempts, batch.error) == ("delivered", 2, None)


def test_transition_cancels_only_pending_recipients(engine: Engine) -> None:
    statuses = ["pending", "pending", "in_flight", "sent", "skipped", "pending"]
    with session_scope(engine) as session:
        session.add(Campaign(campaign_id=5, channel_id=506))
        session.add(Campaign(campaign_id=6, channel_id=506))
        session.flush()
        for i, status in enumerate(statuses):
            session.add(Recipient(campaign_id=5, channel_id=506, customer_id=f"C{i}", template_id=1, status=status))
        session.add(Recipient(campaign_id=6, channel_id=506, customer_id="C0", template_id=1))
        session.add(CancelledCustomer(campaign_id=5, customer_id="C5"))
    with session_scope(engine) as session:
        # partial cancel: only the customers Optimove listed
        listed = sa.select(CancelledCustomer.customer_id).where(CancelledCustomer.campaign_id == 5)
        assert (
            transition(
                session,
                Recipient,
                Recipient.customer_id.in_(listed),
                key={"campaign_id": 5, "channel_id": 506},
                from_status=RecipientStatus.PENDING,
                to_status=RecipientStatus.CANCELLED,
                values={"reason": "cancelled by Optimove"},
            )
            == 1
        )
        # full cancel
        assert (
            transition(
                session,
                Recipient,
                key={"campaign_id": 5, "channel_id": 506},
                from_status="pending",
                to_status="cancelled",
            )
            == 2
        )
    with session_scope(engine) as session:
        got = dict(
            session.execute(sa.select(Recipient.customer_id, Recipient.status).where(Recipient.campaign_id == 5)).all()
        )
        other = session.scalars(sa.select(Recipient.status).where(Recipient.campaign_id == 6)).one()
    assert got == {
        "C0": "cancelled",
        "C1": "cancelled",
        "C2": "in_flight",
        "C3": "sent",
        "C4": "skipped",
        "C5": "cancelled",
    }
    assert other == "pending"


def test_transition_updates_updated_at(engine: Engine) -> None:
    old = dt.datetime(2020, 1, 1, tzinfo=UTC)
    with session_scope(engine) as session:
        session.add(Campaign(campaign_id=1, channel_id=2))
        session.flush()
        session.execute(sa.update(Campaign).values(updated_at=old))
    with session_scope(engine) as session:
        assert (
            transition(
                session,
                Campaign,
                key={"campaign_id": 1, "channel_id": 2},
                from_status="received",
                to_status=CampaignState.CANCELLED,
                status_column="state",
                values={"cancelled_at": dt.datetime.now(UTC), "cancel_scope": "all"},
            )
            == 1
        )
    with session_scope(engine) as session:
        campaign = session.get(Campaign, (1, 2))
        assert campaign is not None and campaign.state == "cancelled"
        assert campaign.updated_at > old


def _seed_batches(engine: Engine, count: int) -> list[int]:
    with session_scope(engine) as session:
        run = SyncRun()
        session.add(run)
        session.flush()
        session.add_all(SyncBatch(sync_run_id=run.id, kind="set", batch_no=i, size=1000) for i in range(count))
        session.flush()
        return list(session.scalars(sa.select(SyncBatch.id).order_by(SyncBatch.id)))


def test_claim_is_race_safe_across_engines(migrated_url: str) -> None:
    """Four workers on two engines race for every batch: each batch is won exactly once."""
    engines = [create_state_engine(migrated_url), create_state_engine(migrated_url)]
    ids = _seed_batches(engines[0], 150)
    workers = 4
    won: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(index: int) -> None:
        order = ids[:]
        random.Random(index).shuffle(order)
        try:
            barrier.wait()
            for batch_id in order:
                with session_scope(engines[index % 2]) as session:
                    if claim(session, SyncBatch, {"id": batch_id}):
                        won[index].append(batch_id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    for eng in engines:
        eng.dispose()
    assert errors == []
    claimed = [batch_id for per_worker in won for batch_id in per_worker]
    assert sorted(claimed) == ids  # every batch once, none twice
    assert sum(1 for per_worker in won if per_worker) >= 2  # there really was a race
    with session_scope(migrated_url) as session:
        assert set(session.scalars(sa.select(SyncBatch.attempts))) == {1}
        assert set(session.scalars(sa.select(SyncBatch.status))) == {"in_flight"}


def test_claims_split_a_chunk_between_racers(migrated_url: str) -> None:
    """Two workers claim the same ledger chunks at once: the recipients each claim's body holds are disjoint and
    complete, and each row was claimed once."""
    with session_scope(migrated_url) as session:
        session.add(Campaign(campaign_id=9, channel_id=506))
        session.flush()
        session.add_all(
            Recipient(
                campaign_id=9,
                channel_id=506,
                customer_id=f"C{i}",
                ext_id=f"C{i}",
                notification_key="101",
                template_id=1,
                chunk_no=i % 3,
            )
            for i in range(300)
        )
        session.add_all(SendChunk(campaign_id=9, channel_id=506, chunk_no=n) for n in range(3))
    engines = [create_state_engine(migrated_url), create_state_engine(migrated_url)]
    got: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def work(index: int) -> None:
        barrier.wait()
        for chunk in (0, 1, 2):
            claim = claim_chunk(engines[index], 9, 506, chunk, f"req-{index}-{chunk}", dt.datetime.now(dt.UTC))
            body = json.loads(claim.body)
            assert claim.count == len(body)
            got[index].extend(obj["target"]["extId"] for obj in body)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for eng in engines:
        eng.dispose()
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(f"C{i}" for i in range(300))
    with session_scope(migrated_url) as session:
        assert set(session.scalars(sa.select(SendChunk.attempts))) == {1}  # each chunk claimed once


def test_insert_if_absent_is_race_safe(migrated_url: str) -> None:
    engines = [create_state_engine(migrated_url) for _ in range(3)]
    keys = [f"11:1:506:C{i}:7" for i in range(60)]
    wins: list[list[str]] = [[] for _ in engines]
    barrier = threading.Barrier(len(engines))

    def work(index: int) -> None:
        barrier.wait()
        for key in keys:
            with session_scope(engines[index]) as session:
                if insert_if_absent(
                    session, Event, {"dedup_key": key, "event_type_id": 11}, conflict_columns=["dedup_key"]
                ):
                    wins[index].append(key)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for eng in engines:
        eng.dispose()
    assert sorted(key for per_worker in wins for key in per_worker) == sorted(keys)


def test_last_successful_sync(engine: Engine, backend: str) -> None:
    with session_scope(engine) as session:
        assert last_successful_sync(session) is None
        session.add_all(
            [
                SyncRun(status=SyncRunStatus.SUCCESS, window_end=dt.date(2026, 1, 1)),
                SyncRun(status=SyncRunStatus.SUCCESS, window_end=dt.date(2026, 1, 3), dag_run_id="winner"),
                SyncRun(status=SyncRunStatus.SUCCESS, dry_run=True, window_end=dt.date(2026, 1, 5)),
                SyncRun(status=SyncRunStatus.DRY_RUN, dry_run=True, window_end=dt.date(2026, 1, 6)),
                SyncRun(status=SyncRunStatus.FAILED, window_end=dt.date(2026, 1, 7)),
                SyncRun(status=SyncRunStatus.RUNNING, window_end=dt.date(2026, 1, 8)),
            ]
        )
    with session_scope(engine) as session:
        found = last_successful_sync(session)
        assert found is not None and found.dag_run_id == "winner"
        if backend == "sqlite":
            stmt = (
                sa.select(SyncRun.id)
                .where(SyncRun.status == "success", SyncRun.dry_run == sa.false(), SyncRun.window_end.is_not(None))
                .order_by(SyncRun.window_end.desc(), SyncRun.id.desc())
                .limit(1)
            )
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row[-1]) for row in session.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "ix_sync_runs_status_dry_run_window_end" in plan


def test_sync_run_is_unique_per_dag_run(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(SyncRun(dag_id="optimove_user_sync", dag_run_id="manual__1"))
        session.add(SyncRun())  # runs outside Airflow (no dag_run_id) do not collide
        session.add(SyncRun())
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(SyncRun(dag_id="optimove_user_sync", dag_run_id="manual__1"))


# --------------------------------------------------------------------------------------------------
# Engine: URL resolution, caching, settings, sessions
# --------------------------------------------------------------------------------------------------


def test_default_url_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_URL, "postgresql+psycopg2://u:p@db:5432/state")
    assert default_state_db_url() == "postgresql+psycopg2://u:p@db:5432/state"

    monkeypatch.setenv(ENV_URL, "   ")  # blank counts as unset
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert default_state_db_url() == f"sqlite:///{tmp_path / 'home' / 'optimove_netmera_state.db'}"

    monkeypatch.delenv(ENV_URL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIRFLOW_HOME", "relative/home")
    assert default_state_db_url() == f"sqlite:///{tmp_path / 'relative' / 'home' / 'optimove_netmera_state.db'}"

    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    url = default_state_db_url()
    assert url == f"sqlite:///{tmp_path / 'user' / 'airflow' / 'optimove_netmera_state.db'}"
    assert url.startswith("sqlite:////")  # absolute


def test_default_url_is_used_by_get_engine_and_migrate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "new" / "airflow"))  # directory does not exist yet
    assert migrate() == "0009"
    assert (tmp_path / "new" / "airflow" / "optimove_netmera_state.db").is_file()
    assert get_engine() is get_engine(default_state_db_url())
    with session_scope() as session:
        session.add(Event(dedup_key="default", event_type_id=13))


def test_engine_cache_and_settings(engine: Engine, migrated_url: str, backend: str) -> None:
    assert get_engine(migrated_url) is engine
    assert create_state_engine(migrated_url) is not engine
    if backend == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(_count_events(engine)))  # check_same_thread off
        thread.start()
        thread.join()
        assert results == [0]
    else:
        assert engine.pool._pre_ping is True  # type: ignore[attr-defined]
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW application_name").scalar() == "optimove_netmera"


def _count_events(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Event)) or 0)


def test_session_scope_commits_and_rolls_back(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"), session_scope(engine) as session:
        session.add(Event(dedup_key="rolled-back", event_type_id=13))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(engine) as session:
        event = Event(dedup_key="kept", event_type_id=13)
        session.add(event)
    assert event.id is not None  # usable after the block (expire_on_commit=False)
    with session_scope(engine.url.render_as_string(hide_password=False)) as session:
        assert session.scalars(sa.select(Event.dedup_key)).all() == ["kept"]


def test_genuine_query_errors_are_not_translated(engine: Engine) -> None:
    with (
        pytest.raises(sa.exc.ProgrammingError)
        if engine.dialect.name == "postgresql"
        else pytest.raises(sa.exc.OperationalError),
        session_scope(engine) as session,
    ):
        session.execute(sa.text("SELECT no_such_column FROM events"))


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///relative/state.db", "absolute path"),
        ("mysql+pymysql://u:hunter2@h/db", "unsupported state database backend"),
        ("this is not a url", "invalid state database URL"),
        ("", "empty"),
    ],
)
def test_bad_urls_are_explained(url: str, match: str) -> None:
    with pytest.raises(StateDatabaseError, match=match) as info:
        get_engine(url)
    assert "hunter2" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("postgresql+psycopg2://onm:p%40ss@db:5432/state") == "postgresql+psycopg2://onm:***@db:5432/state"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "secret" not in redact_url("weird://user:secret@")


# --------------------------------------------------------------------------------------------------
# Errors: unreachable, not migrated
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_unreachable_postgres_error_names_url_without_password(driver: str) -> None:
    url = f"postgresql+{driver}://onm_user:S3cr3t-pw@127.0.0.1:{free_port()}/state"
    for attempt in (lambda: check_database(url), lambda: _count_events(get_engine(url))):
        with pytest.raises(StateDatabaseError) as info:
            attempt()
        message = str(info.value)
        assert "S3cr3t-pw" not in message and "S3cr3t-pw" not in repr(info.value.url)
        assert f"postgresql+{driver}://onm_user:***@127.0.0.1" in message
        assert "cannot connect" in message and ENV_URL in message
        assert info.value.url is not None and "***" in info.value.url


def test_unreachable_sqlite_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    url = f"sqlite:///{blocker / 'state.db'}"
    with pytest.raises(StateDatabaseError, match="cannot connect"):
        _count_events(get_engine(url))


def test_not_migrated_error_says_what_to_do(db_url: str) -> None:
    with pytest.raises(StateDatabaseError) as info:
        _count_events(get_engine(db_url))
    message = str(info.value)
    assert "not migrated" in message and "python -m optimove_netmera.store upgrade" in message
    with pytest.raises(StateDatabaseError, match="never migrated"):
        check_database(db_url)

    migrate(db_url)
    assert check_database(db_url) == "0009"
    assert _count_events(get_engine(db_url)) == 0


def test_database_newer_than_code_is_explained(migrated_url: str) -> None:
    with get_engine(migrated_url).begin() as connection:
        connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(StateDatabaseError, match="does not know"):
        check_database(migrated_url)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base_env = {k: v for k, v in os.environ.items() if k != ENV_URL}
    return subprocess.run(
        [sys.executable, "-m", "optimove_netmera.store", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,  # no alembic.ini there: the package must not need one
        env={**base_env, **(env or {})},
        check=False,
    )


def test_cli_upgrade_current_history_downgrade(db_url: str, tmp_path: Path) -> None:
    shown = redact_url(db_url)
    proc = _cli("upgrade", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{shown}: at 0009 (head)" in proc.stdout
    assert "Running upgrade  -> 0001" in proc.stderr and "Running upgrade 0008 -> 0009" in proc.stderr
    assert current_revision(db_url) == "0009"

    proc = _cli("current", cwd=tmp_path, env={ENV_URL: db_url})  # URL from the environment
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{shown}: 0009 (head)"

    proc = _cli("history", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "<base> -> 0001: Initial state database" in proc.stdout
    assert "0001 -> 0002: Events may be ``held``" in proc.stdout
    assert "0002 -> 0003: The metrics ledger" in proc.stdout
    assert "0003 -> 0004: Drop the send ledger's" in proc.stdout
    assert "0004 -> 0005: The send ledger's chunks" in proc.stdout
    assert "0005 -> 0006: What a load writes and reads" in proc.stdout
    assert "0006 -> 0007: PostgreSQL: ``customer_snapshot`` keeps 40%" in proc.stdout
    assert "0007 -> 0008: ``sync_changes.new_customer``" in proc.stdout
    assert "0008 -> 0009 (head, current): Attribute sets as bits" in proc.stdout

    proc = _cli("check", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout

    proc = _cli("downgrade", "base", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not migrated" in proc.stdout
    assert current_revision(db_url) is None

    proc = _cli("check", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 1 and "python -m optimove_netmera.store upgrade" in proc.stderr

    proc = _cli("upgrade", "no-such-revision", "--url", db_url, cwd=tmp_path)
    assert proc.returncode == 1 and "no-such-revision" in proc.stderr


def test_cli_unreachable_database_exits_1_without_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://onm:Hunter2-pw@127.0.0.1:{free_port()}/state"
    proc = _cli("upgrade", "--url", url, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr and "onm:***@127.0.0.1" in proc.stderr
    assert "Hunter2-pw" not in proc.stderr + proc.stdout


def test_held_events_need_0002_and_downgrade_to_ignored(db_url: str) -> None:
    """0002 lets events be ``held``; going back to 0001 turns them into ``ignored`` (what 0001 knew)."""
    migrate(db_url, "0001")
    row = {"dedup_key": "k-held", "event_type_id": 13, "campaign_id": 1, "channel_id": 459, "source": "webhook"}
    row |= {"event_time": dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "status": "held"}
    with pytest.raises(sa.exc.IntegrityError), get_engine(db_url).begin() as conn:  # 0001's CHECK refuses it
        conn.execute(sa.insert(Event.__table__).values(row))
    dispose_engines()
    assert migrate(db_url) == "0009"
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.insert(Event.__table__).values(row))
    dispose_engines()
    assert downgrade(db_url, "0001") == "0001"
    with get_engine(db_url).connect() as conn:
        assert (
            conn.scalar(sa.select(Event.__table__.c.status).where(Event.__table__.c.dedup_key == "k-held")) == "ignored"
        )


def test_snapshot_run_ids_are_unchecked_from_0006_and_downgrade_clears_the_gone_ones(db_url: str) -> None:
    """From 0006 a snapshot row may name a run that is not (or no longer) there; going back to 0005 clears such
    ids (what its ``ON DELETE SET NULL`` did) and keeps the others, and the key holds again."""
    assert migrate(db_url) == "0009"
    snapshot, runs = CustomerSnapshot.__table__, SyncRun.__table__
    row = {"ext_id": "E", "attr_hash": "h"}  # the attribute set: its default, in 0005 and 0009 alike
    with get_engine(db_url).begin() as conn:
        run = conn.execute(sa.insert(runs).values(dag_id="d", dag_run_id="r").returning(runs.c.id)).scalar_one()
        conn.execute(
            sa.insert(snapshot),
            [{**row, "customer_id": "kept", "sync_run_id": run}, {**row, "customer_id": "gone", "sync_run_id": 999}],
        )
    dispose_engines()
    assert downgrade(db_url, "0005") == "0005"
    with get_engine(db_url).begin() as conn:
        ids = dict(conn.execute(sa.select(snapshot.c.customer_id, snapshot.c.sync_run_id)).tuples().all())
        assert ids == {"kept": run, "gone": None}
    with pytest.raises(sa.exc.IntegrityError), get_engine(db_url).begin() as conn:  # 0005's key refuses it again
        conn.execute(sa.insert(snapshot).values({**row, "customer_id": "new", "sync_run_id": 999}))
    dispose_engines()
    assert migrate(db_url) == "0009"


def _event_rows(count: int) -> tuple[tuple[str, ...], list[list[object]]]:
    """Columns and rows of the events table: a NUL, JSON's special characters, other alphabets and a long text."""
    columns = ("dedup_key", "event_type_id", "raw_payload", "promo_code")
    texts = ["a\x00b", '{"q":"\\"}', '{"name":"Çağla 李 🚀"}', "", None, "plain ascii " * 100]
    return columns, [[f"k{i}", i, texts[i % len(texts)], f"P{i}\x00"] for i in range(count)]


def test_sqlite_values_insert_fits_each_statement_under_the_variable_limit(tmp_path: Path) -> None:
    """Rows go in several statements, none binding more values than the connection allows (SQLite builds before
    3.32 allow 999); texts arrive whole, a NUL included; a conflict clause applies."""
    engine = create_state_engine(f"sqlite:///{tmp_path / 'values.db'}")
    migrate(engine.url)
    columns, rows = _event_rows(2 * SQLITE_MAX_ROWS_PER_INSERT + 7)
    with engine.begin() as conn:
        conn.connection.driver_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        sqlite_values_insert(conn, "events", columns, rows)
        again = [["k1", -1, "other", None], ["new", -2, None, None]]
        sqlite_values_insert(conn, "events", columns, again, "ON CONFLICT (dedup_key) DO NOTHING")
        stored = conn.exec_driver_sql(f"SELECT {', '.join(columns)} FROM events ORDER BY event_type_id").all()
    assert [list(r) for r in stored] == [again[1], *rows]
    engine.dispose()


def test_sqlite_values_insert_compiles_few_distinct_statements_whatever_the_counts(tmp_path: Path) -> None:
    """The driver keeps every distinct statement it compiled (~1 KB a row): one statement per distinct count once
    held 944 MiB after 130 counts. Beyond a full statement, sizes are powers of two: a count each from 1 up (with
    the variable limit of SQLite before 3.32) makes few distinct statements."""
    engine = create_state_engine(f"sqlite:///{tmp_path / 'values.db'}")
    migrate(engine.url)
    executed: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: executed.append(args[2]))
    columns, rows = _event_rows(10_000)
    largest = 999 // len(columns)  # rows a statement under the variable limit set below: 249 rows of 4
    inserted = 0
    with engine.begin() as conn:
        conn.connection.driver_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        for count in range(1, len(rows), 7):
            if inserted + count > len(rows):
                break
            before = len(executed)
            sqlite_values_insert(conn, "events", columns, rows[inserted : inserted + count])
            inserted += count
            full, rest = divmod(count, largest)  # and the rest by its binary digits: 109 = 64 + 32 + 8 + 4 + 1
            assert len(executed) - before == full + bin(rest).count("1"), f"{count} rows: too many statements"
        stored = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    assert stored == inserted > 9000  # 53 counts from 1 to 365, 17 of them above 249 rows
    inserts = {s for s in executed if s.startswith("INSERT INTO events")}
    assert 1 < len(inserts) <= largest.bit_length() + 1
    engine.dispose()


def test_a_transition_on_a_table_without_its_columns_names_the_table_and_the_column() -> None:
    with pytest.raises(ValueError, match="sync_runs has no status column 'state'"):
        transition_statement(SyncRun, key={"id": 1}, from_status="a", to_status="b", status_column="state")
    with pytest.raises(ValueError, match="campaigns has no attempts column"):
        transition_statement(
            Campaign,
            key={"campaign_id": 1},
            from_status="a",
            to_status="b",
            increment_attempts=True,
            status_column="state",
        )
