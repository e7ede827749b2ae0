"""The keys an event is known by: its dedup key in the state database and the DAG run ids it creates."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from optimove_netmera.campaigns.events.parse import OptimoveEvent


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S")


def dedup_key(event: OptimoveEvent) -> str:
    """The unique key of an event: type, campaign, channel, timestamp (+ customer and template for 11).

    The customer id enters as a hash prefix, so the key has a bounded length and shows no customer data.
    """
    parts = [
        f"e{event.event_type_id}",
        f"c{event.campaign_id if event.campaign_id is not None else '-'}",
        f"ch{event.channel_id if event.channel_id is not None else '-'}",
        _stamp(event.event_time),
    ]
    if event.event_type_id == 11:
        digest = hashlib.sha256((event.customer_id or "").encode()).hexdigest()[:32]
        parts += [f"u{digest}", f"t{event.template_id}"]
    return ":".join(parts)


def campaign_run_id(campaign_id: int, channel_id: int, event_time: dt.datetime) -> str:
    """``optimove_c{campaign}_ch{channel}_{YYYYMMDDTHHMMSS}``: the send DAG's run for a bulk event."""
    return f"optimove_c{int(campaign_id)}_ch{int(channel_id)}_{_stamp(event_time)}"


def user_sync_run_id(day: dt.date) -> str:
    """``optimove_event3_{YYYYMMDD}``: the user sync started by Optimove's daily-process event."""
    return f"optimove_event3_{day:%Y%m%d}"


def campaign_conf(
    campaign_id: int, channel_id: int, event_time: dt.datetime, event_id: int, source: str
) -> dict[str, Any]:
    """The send DAG's conf (its params have the same names)."""
    return {
        "campaign_id": int(campaign_id),
        "channel_id": int(channel_id),
        "event_time": event_time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "event_id": int(event_id),
        "source": str(source),
    }
