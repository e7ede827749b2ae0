"""The staging's ledger insert (the driver's executemany on SQLite) stores exactly what the ORM's upsert stores."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.recipients import LEDGER_KEY, _insert_ledger_rows
from optimove_netmera.optimove.models import ExecutionDetail
from optimove_netmera.settings import load_settings
from optimove_netmera.store import Campaign, Recipient, get_engine, migrate, session_scope, upsert

COMPARED = ("customer_id", "template_id", "ext_id", "scheduled_time", "notification_key", "params", "promo_code")
COMPARED += ("status", "reason", "attempts", "chunk_no", "request_id", "sent_at")


def details() -> list[ExecutionDetail]:
    s = load_settings()
    template = next(iter(s.campaigns.templates))
    plus3 = dt.timezone(dt.timedelta(hours=3))
    out = []
    for i in range(40):
        when: dt.datetime | None = [
            dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC),
            dt.datetime(2026, 12, 3, 13, 30, 15, 123456, tzinfo=plus3),  # another zone, with microseconds
            None,
        ][i % 3]
        out.append(
            ExecutionDetail(
                customer_id=f"C{i:04d}",
                action_id=1 if i % 10 == 0 else 0,  # control group: skipped with a reason
                channel_id=459,
                template_id=template if i % 7 else 999_999,  # no mapping: skipped
                template_name="T",
                scheduled_time=when,
                promo_code="PROMO" if i % 2 else None,
                attributes={"FirstName": f'Zoë "{i}" \u2603', "Country": None if i % 4 else "TR"},
            )
        )
    return out


def stored(engine: Any, campaign_id: int) -> list[tuple[Any, ...]]:
    columns = [getattr(Recipient, c) for c in COMPARED]
    with session_scope(engine) as session:
        return [
            tuple(r)
            for r in session.execute(
                sa.select(*columns).where(Recipient.campaign_id == campaign_id).order_by(Recipient.customer_id)
            )
        ]


def test_the_driver_insert_stores_what_the_orm_upsert_stores_and_keeps_the_first_row(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    s = load_settings()
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign), [{"campaign_id": c, "channel_id": 459} for c in (1, 2)])
    rows = [personalise.ledger_row(d, s) for d in details()]
    _insert_ledger_rows(engine, [{"campaign_id": 1, "channel_id": 459, **r} for r in rows])
    with session_scope(engine) as session:
        upsert(
            session,
            Recipient,
            [{"campaign_id": 2, "channel_id": 459, **r} for r in rows],
            conflict_columns=LEDGER_KEY,
            update_columns=[],
        )
    fast, orm = stored(engine, 1), stored(engine, 2)
    assert len(fast) == len(rows) and fast == orm
    with engine.connect() as conn:  # the stored text too (on SQLite string order is time order)
        text = conn.execute(
            sa.select(
                Recipient.campaign_id, sa.cast(Recipient.scheduled_time, sa.Text), sa.cast(Recipient.params, sa.Text)
            ).order_by(Recipient.customer_id, Recipient.campaign_id)
        ).all()
    assert [t[1:] for t in text[0::2]] == [t[1:] for t in text[1::2]]

    again = [{"campaign_id": 1, "channel_id": 459, **r, "params": {"FirstName": "changed"}} for r in rows]
    _insert_ledger_rows(engine, again)  # the ledger's key exists: the first row stays
    assert stored(engine, 1) == fast
