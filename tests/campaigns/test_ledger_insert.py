"""The staging's ledger insert (on SQLite: multi-row ``INSERT ... VALUES`` statements of bound values) stores exactly
what the ORM's upsert stores."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
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


def two_campaigns(db_url: str) -> tuple[Any, Any]:
    """A migrated state database with campaigns 1 and 2 on channel 459; (engine, settings)."""
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign), [{"campaign_id": c, "channel_id": 459} for c in (1, 2)])
    return engine, load_settings()


def test_the_driver_insert_stores_what_the_orm_upsert_stores_and_keeps_the_first_row(db_url: str) -> None:
    engine, s = two_campaigns(db_url)
    rows = [personalise.ledger_row(d, s) for d in details()]
    _insert_ledger_rows(engine, 1, 459, rows)
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

    again = [{**r, "params": {"FirstName": "changed"}} for r in rows]
    _insert_ledger_rows(engine, 1, 459, again)  # the ledger's key exists: the first row stays
    assert stored(engine, 1) == fast


ODD = ['say "hi"', "back\\slash \\u0041", "tab\t new\nline \u2028", "Zoë 😀 İ", "x" * 3000, "", " "]


def odd_details() -> list[ExecutionDetail]:
    """Text that JSON has to escape in every text column."""
    template = next(iter(load_settings().campaigns.templates))
    return [
        ExecutionDetail(
            customer_id=f"C{i}{text[:40]}",
            action_id=0,
            channel_id=459,
            template_id=template,
            template_name="T",
            scheduled_time=None,
            promo_code=f"P{text}",
            attributes={"FirstName": text, "Country": text},
        )
        for i, text in enumerate(ODD)
    ]


def compare_with_the_orm(db_url: str, nul: bool) -> list[tuple[Any, ...]]:
    engine, s = two_campaigns(db_url)
    rows = [personalise.ledger_row(d, s) for d in odd_details()]
    if nul:  # a NUL in one row's id, params and code (staging replaces them: the insert itself must keep them)
        row = rows[2]
        rows[2] = {**row, "customer_id": f"{row['customer_id']}\x00", "promo_code": f"P\x00{ODD[2]}"}
        rows[2]["params"] = {**row["params"], "name": f"{ODD[2]}\x00"}
    _insert_ledger_rows(engine, 1, 459, rows)
    with session_scope(engine) as session:
        keyed = [{"campaign_id": 2, "channel_id": 459, **r} for r in rows]
        upsert(session, Recipient, keyed, conflict_columns=LEDGER_KEY, update_columns=[])
    fast = stored(engine, 1)
    assert len(fast) == len(ODD) and fast == stored(engine, 2)
    return fast


def test_text_json_has_to_escape_is_stored_whole(db_url: str) -> None:
    compare_with_the_orm(db_url, nul=False)


def test_a_nul_is_stored_whole_on_sqlite(tmp_path: Path) -> None:
    """A text holding a NUL is stored whole (bound with its length; PostgreSQL refuses NULs in text)."""
    fast = compare_with_the_orm(f"sqlite:///{tmp_path / 'state.db'}", nul=True)
    (row,) = [r for r in fast if "\x00" in r[0]]  # expected values from the input, not from what the ORM stored
    assert row[0] == f"C2{ODD[2]}\x00" and row[6] == f"P\x00{ODD[2]}" and row[5]["name"] == f"{ODD[2]}\x00"


def test_a_nul_in_optimove_text_skips_the_recipient_and_is_stored_on_both_databases(db_url: str) -> None:
    """PostgreSQL cannot store a NUL in text (psycopg refused the whole page): such a recipient is skipped, named by
    field, and its text kept with U+FFFD in place of the NUL."""
    migrate(db_url)
    engine = get_engine(db_url)
    s = load_settings()
    template = next(iter(s.campaigns.templates))
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign), [{"campaign_id": 1, "channel_id": 459}])

    def detail(cid: str, name: str = "Ann", promo: str | None = None, action: int = 0) -> ExecutionDetail:
        return ExecutionDetail(cid, action, 459, template, "T", None, promo, None, {"FirstName": name, "Country": "TR"})

    rows = personalise.ledger_rows(
        [
            detail("C1\x00x"),
            detail("C2", name="Ann\x00"),
            detail("C3", promo="P\x00"),
            detail("C4\x00", action=1),  # the control group: keeps its reason
            detail("C5"),
        ],
        s,
    )
    _insert_ledger_rows(engine, 1, 459, rows)
    with engine.connect() as conn:
        got = {
            r.customer_id: r
            for r in conn.execute(
                sa.select(Recipient.customer_id, Recipient.ext_id, Recipient.status, Recipient.reason)
                .add_columns(Recipient.params, Recipient.promo_code)
                .where(Recipient.campaign_id == 1)
            )
        }
    fffd = "\ufffd"
    assert set(got) == {f"C1{fffd}x", "C2", "C3", f"C4{fffd}", "C5"}
    assert got[f"C1{fffd}x"].ext_id == f"C1{fffd}x" and got["C2"].params["name"] == f"Ann{fffd}"
    assert got["C3"].promo_code == f"P{fffd}" and got["C3"].params["promoCode"] == f"P{fffd}"
    assert {c: (r.status, r.reason) for c, r in got.items()} == {
        f"C1{fffd}x": ("skipped", personalise.nul_reason(["CustomerID"])),
        "C2": ("skipped", personalise.nul_reason(["name"])),
        "C3": ("skipped", personalise.nul_reason(["promoCode"])),
        f"C4{fffd}": ("skipped", personalise.REASON_CONTROL),
        "C5": ("pending", None),
    }
    assert "NUL" in personalise.nul_reason(["name"]) and "Ann" not in personalise.nul_reason(["name"])
