"""The send ledger claims and settles a chunk at a time: cancels and restores move only the rows of chunks never
claimed, also when a claim and a cancel race (SQLite and PostgreSQL). Expected statuses are written out here."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import recipients
from optimove_netmera.campaigns.state import CANCEL_REASON, apply_cancel_list, cancel_pending
from optimove_netmera.store import Campaign, Recipient, SendChunk, get_engine, migrate
from sqlalchemy.engine import Engine

CID, CH = 77, 506


def staged(db_url: str, n: int = 6, chunk_size: int = 3) -> tuple[Engine, list[int]]:
    """A sending campaign of ``n`` recipients C0..C{n-1}, chunked ``chunk_size`` a chunk; the chunk numbers."""
    migrate(db_url)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Campaign).values(campaign_id=CID, channel_id=CH, state="sending"))
    rows = [
        {
            "customer_id": f"C{i}",
            "template_id": 1,
            "ext_id": f"C{i}",
            "scheduled_time": None,
            "notification_key": "101",
            "params": {},
            "promo_code": None,
            "status": "pending",
            "reason": None,
        }
        for i in range(n)
    ]
    recipients._insert_ledger_rows(engine, CID, CH, rows)
    batches, _ = recipients.plan_chunks(engine, CID, CH, chunk_size, include_unknown=False)
    return engine, [c for b in batches for c in b.chunks]


def seen(engine: Engine) -> dict[str, tuple[str, int | None]]:
    """Each customer's status as the ledger's readers see it, and its chunk."""
    view = recipients.ledger()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(view.c.customer_id, view.c.status, view.c.chunk_no).where(view.c.campaign_id == CID)
        )
    return {cid: (status, chunk) for cid, status, chunk in rows}


def test_a_settled_chunk_gives_its_status_to_its_pending_rows_only(db_url: str) -> None:
    engine, (first, second) = staged(db_url)
    r = Recipient.__table__
    with engine.begin() as conn:  # C2 was cancelled before the claim: the request went out without it
        conn.execute(sa.update(r).where(r.c.customer_id == "C2").values(status="cancelled", reason=CANCEL_REASON))
    claim = recipients.claim_chunk(engine, CID, CH, first, "req-1", dt.datetime.now(dt.UTC))
    assert claim.count == 2
    assert Counter(s for s, _ in seen(engine).values()) == {"in_flight": 2, "cancelled": 1, "pending": 3}
    assert recipients.finish_request(engine, CID, CH, first, "req-1", "sent") == 2
    assert seen(engine) == {
        "C0": ("sent", first),
        "C1": ("sent", first),
        "C2": ("cancelled", first),
        "C3": ("pending", second),
        "C4": ("pending", second),
        "C5": ("pending", second),
    }
    assert recipients.request_count(engine, CID, CH) == 1


def test_a_restored_row_of_a_settled_chunk_gets_a_chunk_of_its_own(db_url: str) -> None:
    """A cancel that proves partial puts its rows back to pending; one whose chunk went out without it must not read
    as sent: it leaves the chunk and is chunked again (and sent) by the next planning."""
    engine, (first, second) = staged(db_url)
    r = Recipient.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(r).where(r.c.customer_id == "C2").values(status="cancelled", reason=CANCEL_REASON))
    recipients.claim_chunk(engine, CID, CH, first, "req-1", dt.datetime.now(dt.UTC))
    recipients.finish_request(engine, CID, CH, first, "req-1", "sent")
    cancelled = cancel_pending(engine, CID, CH)
    assert cancelled == 3  # the second chunk's rows; the first chunk's are settled
    with engine.begin() as conn:
        conn.execute(sa.update(Campaign).values(state="cancelled", cancel_fetched_at=None))
    assert apply_cancel_list(engine, CID, CH, ["C4"], fetched_at=dt.datetime.now(dt.UTC)) == "partial"
    assert seen(engine) == {
        "C0": ("sent", first),
        "C1": ("sent", first),
        "C2": ("pending", None),
        "C3": ("pending", second),
        "C4": ("cancelled", second),
        "C5": ("pending", second),
    }
    batches, _ = recipients.plan_chunks(engine, CID, CH, 3, include_unknown=False)
    assert sorted(c for b in batches for c in b.chunks) == [second, second + 1]
    assert seen(engine)["C2"] == ("pending", second + 1)


def test_a_cancel_waits_for_a_claim_in_progress_and_leaves_its_chunk_alone(db_url: str) -> None:
    """A claim's transaction is open when a cancel starts: the cancel waits for it (PostgreSQL: the chunks'
    share lock; SQLite: the one writer), then moves only the rows of the chunk nobody claimed."""
    engine, (first, _) = staged(db_url)
    k = SendChunk.__table__
    claiming = engine.connect()
    claim = claiming.begin()
    claiming.execute(
        sa.update(k).where(k.c.campaign_id == CID, k.c.chunk_no == first).values(status="in_flight", request_id="a")
    )
    done: dict[str, Any] = {}

    def cancel() -> None:
        done["cancelled"] = cancel_pending(engine, CID, CH)

    thread = threading.Thread(target=cancel)
    thread.start()
    if engine.dialect.name == "postgresql":  # SQLite: the cancel's write waits for the claim's whenever it starts
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline and not _waits_for_a_lock(engine):
            time.sleep(0.05)
    claim.commit()
    claiming.close()
    thread.join(timeout=120)
    assert done["cancelled"] == 3
    assert Counter(s for s, _ in seen(engine).values()) == {"in_flight": 3, "cancelled": 3}
    assert {c for c, (s, _) in seen(engine).items() if s == "cancelled"} == {"C3", "C4", "C5"}


def _waits_for_a_lock(engine: Engine) -> bool:
    """Some PostgreSQL session waits for a lock."""
    with engine.connect() as conn:
        return bool(conn.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")))


def test_a_chunk_with_nothing_left_to_send_is_given_back(db_url: str) -> None:
    """Every row of the chunk was cancelled before its claim: the claim wins nothing and the chunk stays pending."""
    engine, (first, _) = staged(db_url)
    r = Recipient.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(r).where(r.c.chunk_no == first).values(status="cancelled", reason=CANCEL_REASON))
    claim = recipients.claim_chunk(engine, CID, CH, first, "req-1", dt.datetime.now(dt.UTC))
    assert not claim and claim.body == b"[]"
    k = SendChunk.__table__
    with engine.connect() as conn:
        got = conn.execute(sa.select(k.c.status, k.c.request_id).where(k.c.chunk_no == first)).one()
    assert tuple(got) == ("pending", None)


def test_only_the_request_that_holds_the_chunk_settles_it(db_url: str) -> None:
    """A worker thought dead comes back after its chunk was marked unknown, released and claimed again: its outcome
    changes nothing; the outcome of the request that holds the chunk settles it."""
    engine, (first, _) = staged(db_url)
    now = dt.datetime.now(dt.UTC)
    assert recipients.claim_chunk(engine, CID, CH, first, "req-1", now).count == 3
    assert recipients.mark_orphans_unknown(engine, CID, CH, [first]) == 3
    assert Counter(s for s, _ in seen(engine).values()) == {"unknown": 3, "pending": 3}
    assert recipients.release_unknown(engine, CID, CH, [first]) == 3
    assert recipients.claim_chunk(engine, CID, CH, first, "req-2", now).count == 3
    assert recipients.finish_request(engine, CID, CH, first, "req-1", "sent") == 0
    assert Counter(s for s, _ in seen(engine).values()) == {"in_flight": 3, "pending": 3}
    assert recipients.finish_request(engine, CID, CH, first, "req-2", "sent") == 3
    assert Counter(s for s, _ in seen(engine).values()) == {"sent": 3, "pending": 3}


def test_orphans_and_unknowns_are_counted_by_chunk_number_never_through_a_subquery(db_url: str) -> None:
    """``mark_orphans_unknown`` and ``release_unknown`` read the matching chunks' numbers first and count the ledger
    rows by number, and count none when no chunk matches. As a subquery over ``send_chunks``, PostgreSQL without
    statistics on a freshly staged ledger looked the chunks up once per ledger row (1.3 s at 100k recipients, at
    every send task's start; ``bench_send.py`` on PostgreSQL)."""
    engine, (first, second) = staged(db_url)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.lower().split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert recipients.mark_orphans_unknown(engine, CID, CH, [first, second]) == 0  # nothing in flight
        nothing_in_flight = list(statements)
        assert recipients.claim_chunk(engine, CID, CH, first, "req-1", dt.datetime.now(dt.UTC)).count == 3
        statements.clear()
        assert recipients.mark_orphans_unknown(engine, CID, CH, [first, second]) == 3
        assert recipients.release_unknown(engine, CID, CH, [first, second]) == 3
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    counts = [s for s in statements if s.startswith("select count(") and "from recipients" in s]
    assert len(counts) == 2  # one a call, each by the chunk numbers read before it
    assert not [s for s in counts if "send_chunks" in s]
    assert not [s for s in nothing_in_flight if s.startswith("select count(")]
    assert Counter(s for s, _ in seen(engine).values()) == {"pending": 6}


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite's planner does not go by row counts
def test_a_chunked_ledger_is_analyzed_so_postgresql_plans_for_its_size(db_url: str) -> None:
    """Without statistics PostgreSQL takes a freshly staged ledger for a row or two and nest-loops the ledger view's
    join over it (1.3 s at 100k recipients, against 54 ms once analyzed): chunking it ends with ``ANALYZE``."""
    engine, chunks = staged(db_url, n=40, chunk_size=5)
    assert len(chunks) == 8
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('recipients', 'send_chunks')"
        ).all()
    assert {name: int(n) for name, n in rows} == {"recipients": 40, "send_chunks": 8}
