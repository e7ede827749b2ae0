"""Register with Optimove: event listeners and channel templates (no Airflow imports).

**Listeners.** Optimove calls ``{inbound.public_url}/rest/optimove/event/{inbound.app_key}`` for events 13 (bulk
send), 11 (single target) and 4 (cancelled) on every configured channel, and 3 (daily process completed, no
channel). :func:`sync_listeners` lists what is registered (``GetRegisteredEventListeners``, URLs compared decoded:
the documentation's fixture URL-encodes them), registers only what is missing or points elsewhere, and reports the
listeners of our channels and events that point elsewhere (*stale*: Netmera's guide warns that failed
registrations leave them); with ``remove_stale`` it unregisters them first. A second run changes nothing.

**Templates.** ``campaigns.templates`` is offered to Optimove on every configured channel
(``AddChannelTemplates``, ≤ 100 per call) under its configured name, or ``Netmera <notificationKey>`` for the plain
form. Only templates this integration added (recorded in ``channel_templates``) are ever renamed or deleted
(``DeleteChannelTemplates``, once no longer mapped): a template someone else put on the channel (another vendor's,
or one named in Optimove's UI) is left alone and reported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.optimove import MAX_METRICS_PER_CALL, EventListener, OptimoveClient
from optimove_netmera.settings import Settings
from optimove_netmera.store import ChannelTemplate, session_scope, upsert

__all__ = [
    "CHANNEL_EVENTS",
    "GLOBAL_EVENTS",
    "ListenerReport",
    "TemplateReport",
    "desired_listeners",
    "run_setup",
    "sync_listeners",
    "sync_templates",
    "template_name",
]

log = logging.getLogger(__name__)

CHANNEL_EVENTS = (13, 11, 4)
"""Registered per configured channel: bulk send, single target, cancelled."""
GLOBAL_EVENTS = (3,)
"""Registered without a channel: Optimove's daily process completed (starts the user sync)."""


def desired_listeners(settings: Settings) -> list[tuple[int, int | None]]:
    """``(EventTypeID, ChannelID or None)`` pairs the integration listens on."""
    pairs: list[tuple[int, int | None]] = [(e, int(ch)) for ch in settings.campaigns.channels for e in CHANNEL_EVENTS]
    return pairs + [(e, None) for e in GLOBAL_EVENTS]


@dataclass
class ListenerReport:
    """What :func:`sync_listeners` found and did (URLs are not secrets: the endpoint needs its header key)."""

    url: str
    ok: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _label(event: int, channel: int | None) -> str:
    return f"event {event}" + (f" channel {channel}" if channel is not None else " (no channel)")


def _is_ours(listener: EventListener, wanted: set[tuple[int, int | None]]) -> bool:
    """A listener on one of our (event, channel) pairs, or on one of our events for every channel."""
    events = {e for e, _ in wanted}
    return (listener.event_type_id, listener.channel_id) in wanted or (
        listener.event_type_id in events and listener.channel_id is None
    )


def sync_listeners(
    client: OptimoveClient, settings: Settings, *, remove_stale: bool = False, dry_run: bool = False
) -> ListenerReport:
    """Make Optimove's listeners match :func:`desired_listeners`; see the module docstring."""
    url = settings.inbound.listener_url()
    wanted = set(desired_listeners(settings))
    report = ListenerReport(url=url)
    listed = client.get_registered_event_listeners()
    stale = [li for li in listed if _is_ours(li, wanted) and li.listener_url != url]
    report.stale = [f"{_label(li.event_type_id, li.channel_id)} -> {li.listener_url}" for li in stale]
    for label in report.stale:
        log.warning("stale listener (points elsewhere): %s", label)
    if remove_stale and stale and not dry_run:
        for pair in sorted({(li.event_type_id, li.channel_id) for li in stale}, key=str):
            client.unregister_event_listener(*pair)
            report.removed.append(_label(*pair))
            report.changes += 1
        listed = client.get_registered_event_listeners()  # an unregister may have taken ours with it
    have = {(li.event_type_id, li.channel_id) for li in listed if li.listener_url == url}
    for event, channel in sorted(wanted, key=lambda p: (p[1] is None, p[1] or 0, p[0])):
        if (event, channel) in have:
            report.ok.append(_label(event, channel))
            continue
        if not dry_run:
            client.register_event_listener(event, url, channel)
            report.changes += 1
        report.registered.append(_label(event, channel))
    return report


def template_name(settings: Settings, template_id: int) -> str:
    """The name offered to Optimove: the configured one, else ``Netmera <notificationKey>``."""
    return settings.campaigns.template_names.get(template_id) or f"Netmera {settings.campaigns.templates[template_id]}"


@dataclass
class TemplateReport:
    """What :func:`sync_templates` found and did, per channel."""

    added: dict[int, list[int]] = field(default_factory=dict)
    renamed: dict[int, list[int]] = field(default_factory=dict)
    deleted: dict[int, list[int]] = field(default_factory=dict)
    ok: dict[int, list[int]] = field(default_factory=dict)
    foreign: dict[int, list[str]] = field(default_factory=dict)
    changes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (channel ids as strings)."""
        return {
            k: ({str(c): v for c, v in val.items()} if isinstance(val, dict) else val)
            for k, val in asdict(self).items()
        }


def _owned(engine: Engine, channel: int) -> dict[int, str]:
    table = ChannelTemplate.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.template_id, table.c.name).where(table.c.channel_id == channel)).all()
    return {int(t): str(n) for t, n in rows}


def sync_templates(
    client: OptimoveClient, engine: Engine, settings: Settings, *, dry_run: bool = False
) -> TemplateReport:
    """Offer the mapped templates on every configured channel, delete the ones we added that are no longer mapped."""
    report = TemplateReport()
    mapped = {tid: template_name(settings, tid) for tid in settings.campaigns.templates}
    table = ChannelTemplate.__table__
    for channel in settings.campaigns.channels:
        listed = {t.template_id: (t.name or "") for t in client.get_channel_templates(channel)}
        owned = _owned(engine, channel)
        add: dict[int, str] = {}
        for tid, name in sorted(mapped.items()):
            if tid not in listed:
                add[tid] = name
            elif listed[tid] == name:
                report.ok.setdefault(channel, []).append(tid)
            elif tid in owned:
                add[tid] = name
                report.renamed.setdefault(channel, []).append(tid)
            else:
                report.ok.setdefault(channel, []).append(tid)
                note = f"template {tid} is on the channel as {listed[tid]!r}, not ours: left as it is"
                report.foreign.setdefault(channel, []).append(note)
        stale = sorted(tid for tid in owned if tid not in mapped and tid in listed)
        gone = [tid for tid in owned if tid not in listed and tid not in mapped]
        new = [tid for tid in add if tid not in listed]
        if new:
            report.added[channel] = new
        if stale:
            report.deleted[channel] = stale
        if dry_run:
            continue
        if add:
            client.add_channel_templates(channel, add)
            report.changes += math.ceil(len(add) / MAX_METRICS_PER_CALL)
            with session_scope(engine) as session:
                upsert(
                    session,
                    ChannelTemplate,
                    [{"channel_id": channel, "template_id": tid, "name": name} for tid, name in add.items()],
                    update_columns=["name"],
                )
        if stale:
            client.delete_channel_templates(channel, stale)
            report.changes += math.ceil(len(stale) / MAX_METRICS_PER_CALL)
        if stale or gone:
            with session_scope(engine) as session:
                session.execute(
                    sa.delete(table).where(table.c.channel_id == channel, table.c.template_id.in_(stale + gone))
                )
        if add or stale:
            log.info(
                "channel %s: templates added %s, renamed %s, deleted %s",
                channel,
                new,
                report.renamed.get(channel, []),
                stale,
            )
    return report


def run_setup(
    client: OptimoveClient, engine: Engine, settings: Settings, *, remove_stale: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Listeners, then templates; a JSON-ready summary (``changes``: calls that changed something in Optimove)."""
    listeners = sync_listeners(client, settings, remove_stale=remove_stale, dry_run=dry_run)
    templates = sync_templates(client, engine, settings, dry_run=dry_run)
    summary = {
        "listeners": listeners.as_dict(),
        "templates": templates.as_dict(),
        "changes": listeners.changes + templates.changes,
        "dry_run": dry_run,
    }
    if listeners.stale and not remove_stale:
        log.warning(
            "%d stale listener(s) point elsewhere (listed above); run again with remove_stale to unregister them",
            len(listeners.stale),
        )
    return summary
