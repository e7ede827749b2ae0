"""Reconciliation: start the campaigns Optimove executed on our channels that no event announced.

For each configured channel, ``actions/GetExecutedCampaignsByChannel`` for the day lists the campaigns
Optimove executed. A campaign is *announced* when its campaigns row carries a DAG run, or an event 13 for it is
stored and waiting for dispatch (``received``: the re-dispatch below handles it). A held, ignored or failed event
does not count: a campaign nothing started is started here. For every other one an event 13 is created through
the endpoint's own store + dispatch (:func:`optimove_netmera.campaigns.events.ingest`, source ``reconcile``), with
the day's midnight as its timestamp, so the dedup key, run_id (``optimove_c{id}_ch{channel}_{YYYYMMDD}T000000``)
and conf come out exactly as for a webhook, and a second reconcile of the same day finds the first one's
event. The send ledger makes a late webhook for the same campaign harmless (nobody is sent twice).
Finally :func:`~optimove_netmera.campaigns.events.dispatch_pending` re-dispatches stored events whose
dispatch never completed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import events
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.settings import Settings
from optimove_netmera.store import Campaign, Event, EventSource, EventStatus

__all__ = ["announced", "reconcile_day"]

log = logging.getLogger(__name__)

BULK_EVENT_TYPE = 13


def announced(engine: Engine, campaign_id: int, channel_id: int) -> bool:
    """Whether a run was started for this campaign and channel, or an event 13 for it waits for dispatch."""
    e, c = Event.__table__, Campaign.__table__
    with engine.connect() as connection:
        stored = connection.scalar(
            sa.select(sa.func.count())
            .select_from(e)
            .where(
                e.c.event_type_id == BULK_EVENT_TYPE,
                e.c.campaign_id == int(campaign_id),
                e.c.channel_id == int(channel_id),
                e.c.status == EventStatus.RECEIVED.value,
            )
        )
        if stored:
            return True
        run = connection.scalar(
            sa.select(c.c.dag_run_id).where(c.c.campaign_id == int(campaign_id), c.c.channel_id == int(channel_id))
        )
    return run is not None


def reconcile_day(
    engine: Engine,
    client: OptimoveClient,
    settings: Settings,
    day: dt.date,
    *,
    trigger: events.DagTrigger | None = None,
    older_than_seconds: float = 60,
) -> dict[str, Any]:
    """Reconcile ``day`` on every configured channel; return counts (and the run ids it created)."""
    stamp = f"{day.isoformat()} 00:00:00"
    counts: dict[str, Any] = {"day": day.isoformat(), "executed": 0, "announced": 0, "created": 0, "runs": []}
    for channel_id in settings.campaigns.channels:
        executed = client.get_executed_campaigns_by_channel(channel_id, day)
        counts["executed"] += len(executed)
        for campaign_id in sorted(set(executed)):
            if announced(engine, campaign_id, channel_id):
                counts["announced"] += 1
                continue
            payload = {"eventTypeId": BULK_EVENT_TYPE, "timeStamp": stamp, "campaignId": campaign_id}
            payload["channelId"] = channel_id
            event = events.parse_event(payload)
            result = events.ingest(
                engine, event, source=EventSource.RECONCILE.value, raw=payload, settings=settings, trigger=trigger
            )
            if result.stored.created:
                counts["created"] += 1
            run_id = result.dispatch.dag_run_id if result.dispatch else result.stored.dag_run_id
            if run_id:
                counts["runs"].append(run_id)
            log.warning(
                "campaign %s on channel %s was executed on %s but no event announced it: event %s stored (%s)%s",
                campaign_id,
                channel_id,
                day,
                result.stored.event_id,
                result.response_status,
                f", run {run_id}" if run_id else "",
            )
    pending = events.dispatch_pending(
        engine, older_than_seconds=older_than_seconds, trigger=trigger, settings=settings
    ).as_dict()
    counts["redispatched"] = pending
    log.info("reconcile %s: %s", day, counts)
    return counts
