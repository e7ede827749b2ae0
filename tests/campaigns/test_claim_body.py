"""A claim's request body, built by the state database from the rows the claim marked: each recipient's request
object (its notificationKey, extId and params; no ``message`` without params), in ledger order, and nobody else's
(rows another request holds in flight, rows sent before), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from optimove_netmera.campaigns.recipients import _insert_ledger_rows, claim_chunk, ledger, plan_chunks
from optimove_netmera.store import Campaign, Recipient, get_engine, migrate

TEXTS = ['say "hi"', "back\\slash \\u0041", "tab\t new\nline \u2028", "Zoë 😀 İ", "<\u0001>", "x" * 3000, "", " "]
PARAMS: list[dict[str, Any]] = [
    *({"name": t, "promoCode": f"P{i}"} for i, t in enumerate(TEXTS)),
    {},  # no params: no "message"
    {"age": 31, "score": 1.5, "vip": True, "nothing": None},
]
WHEN = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)
NULLS = 1  # this row has no extId and no notificationKey: written as JSON nulls on both databases, never dropped


def row(i: int, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "customer_id": f"C{i:03d}",
        "template_id": 1,
        "ext_id": None if i == NULLS else f"ext-{i:03d} ü",
        "scheduled_time": WHEN,
        "notification_key": None if i == NULLS else "101",
        "params": params,
        "promo_code": None,
        "status": "pending",
        "reason": None,
    }


def expected(i: int, params: dict[str, Any]) -> dict[str, Any]:
    """Written out here, not by the code under test."""
    if i == NULLS:
        out: dict[str, Any] = {"notificationKey": None, "target": {"extId": None}}
    else:
        out = {"notificationKey": "101", "target": {"extId": f"ext-{i:03d} ü"}}
    if params:
        out["message"] = {"params": params}
    return out


def test_a_claim_s_body_holds_exactly_the_request_objects_of_the_rows_it_won(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign).values(campaign_id=1, channel_id=459, state="staged"))
    others = [{"sent": True}, {"zombie": True}]  # two more rows of the same chunk, moved below
    _insert_ledger_rows(engine, 1, 459, [row(i, p) for i, p in enumerate(PARAMS + others)])
    batches, _ = plan_chunks(engine, 1, 459, 1000, include_unknown=False)
    (chunk,) = [c for b in batches for c in b.chunks]
    r = Recipient.__table__
    with engine.begin() as conn:
        for i, (status, request_id) in enumerate([("sent", "earlier"), ("in_flight", "another")], len(PARAMS)):
            conn.execute(
                sa.update(r).where(r.c.customer_id == f"C{i:03d}").values(status=status, request_id=request_id)
            )

    claim = claim_chunk(engine, 1, 459, chunk, "this-request", dt.datetime.now(dt.UTC))
    assert claim.count == len(claim) == len(PARAMS)
    assert json.loads(claim.body) == [expected(i, p) for i, p in enumerate(PARAMS)]
    view = ledger()
    with engine.connect() as conn:
        won = conn.execute(
            sa.select(view.c.customer_id).where(view.c.request_id == "this-request", view.c.status == "in_flight")
        )
        assert sorted(won.scalars()) == [f"C{i:03d}" for i in range(len(PARAMS))]

    again = claim_chunk(engine, 1, 459, chunk, "a-second-look", dt.datetime.now(dt.UTC))
    assert not again and again.count == 0 and json.loads(again.body) == []
