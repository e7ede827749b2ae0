"""``store_events``, the group commit's batch insert, on each state database: what it reports for new rows, for rows
stored before the batch, and for an event repeated within the batch."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from optimove_netmera.campaigns import events
from optimove_netmera.store import Event, get_engine, migrate

CHANNEL = 506  # in campaigns.channels of config/optimove_netmera.yaml
WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0)


def single(customer: str) -> events.OptimoveEvent:
    """A single-target event (stored ``queued``)."""
    return events.OptimoveEvent(
        event_type_id=11, event_time=WHEN, campaign_id=77, channel_id=CHANNEL, customer_id=customer, template_id=1
    )


def bulk(campaign: int) -> events.OptimoveEvent:
    """A bulk-send event (stored ``received``)."""
    return events.OptimoveEvent(event_type_id=13, event_time=WHEN, campaign_id=campaign, channel_id=CHANNEL)


def test_a_batch_reports_new_rows_as_created_and_earlier_rows_as_the_database_holds_them(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    earlier = events.store_events(engine, [(bulk(5001), None), (single("C-earlier"), None)])
    assert [(s.created, s.status) for s in earlier] == [(True, "received"), (True, "queued")]
    table = Event.__table__
    with engine.begin() as connection:  # the 13 moved on since it was stored: its row, not its event, is the truth
        connection.execute(
            sa.update(table)
            .where(table.c.id == earlier[0].event_id)
            .values(status="dispatched", dag_run_id="optimove_c5001_run", note="run created")
        )

    items = [single("C-new"), bulk(5001), single("C-new"), bulk(5002), single("C-earlier")]
    stored = events.store_events(engine, [(event, None) for event in items])

    with engine.connect() as connection:
        rows = {
            r.dedup_key: r
            for r in connection.execute(sa.select(table.c.id, table.c.dedup_key, table.c.status, table.c.dag_run_id))
        }
    assert len(rows) == 4  # two before, two new: the repeat within the batch is not a row of its own
    expected = [
        (True, "queued", None),  # new
        (False, "dispatched", "optimove_c5001_run"),  # stored before and moved on
        (False, "queued", None),  # the first item again, within the batch: a duplicate of it
        (True, "received", None),  # new
        (False, "queued", None),  # stored before
    ]
    assert [(s.created, s.status, s.dag_run_id) for s in stored] == expected
    for s in stored:  # every answer names the row its event is in
        assert (rows[s.dedup_key].id, rows[s.dedup_key].status) == (s.event_id, s.status)
    assert stored[0].event_id == stored[2].event_id
    assert stored[1].event_id == earlier[0].event_id and stored[1].note == "run created"
    assert stored[4].event_id == earlier[1].event_id
