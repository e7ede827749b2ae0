"""Campaign results back to Optimove (``integrations/UpdateCampaignMetrics``) through a ledger (no Airflow imports).

Optimove keeps *aggregate* counts per (campaign, channel, template, MetricID) and adds what it receives (the
reference: "aggregate counts"; each count reported once), so this module sends **increments**: the ledger
(``campaign_metrics``) holds what Optimove accepted (``reported``) and a report sends ``total - reported`` for
the rows whose total moved, nothing for the others. Re-runs and cleared tasks therefore report only the
difference, and never the same count twice:

* before a request its rows get ``sending = increment`` (guarded: only rows with nothing in flight and the
  ``reported`` value the increment was computed from); once Optimove answers 2xx, ``reported += sending``;
* a request that certainly was not processed (4xx, 429 after retries, connection refused) clears ``sending`` and
  raises: the next attempt sends it again (an outage is retried by the task's retries);
* a 5xx or a timeout (Optimove may have counted it) leaves ``sending`` set: the row's outcome is *unknown*, it is
  not sent again on its own (that could count it twice), the report says so, and ``resend_unknown`` sends it again.

Counts: ``sent``, ``failed`` and ``skipped`` (not the control group) from the send ledger per template; and, for
``campaigns.stats_days`` after the send, Netmera's ``getPushStats`` per notificationKey: ``delivered`` (its
``sent``: pushes that reached a device) and ``opened`` (its ``clicked``). Netmera counts per notificationKey, not
per send, so those two are reported only for a template whose notificationKey no other campaign (or single-target
event) of this integration has sent: a shared key's numbers cannot be split, and are logged as not attributable.
MetricIDs come from ``campaigns.metric_ids``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.personalise import REASON_CONTROL
from optimove_netmera.campaigns.recipients import ledger
from optimove_netmera.http import ApiError
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.optimove import MAX_METRICS_PER_CALL, CampaignMetric, OptimoveClient
from optimove_netmera.settings import Settings
from optimove_netmera.store import (
    CampaignMetricReport,
    Event,
    EventStatus,
    RecipientStatus,
    insert_if_absent,
    session_scope,
)

__all__ = [
    "Increments",
    "MetricsOutcome",
    "ledger_counts",
    "plan_increments",
    "push_stat_counts",
    "report_counts",
    "send_increments",
]

log = logging.getLogger(__name__)

_M = CampaignMetricReport.__table__
_R = ledger()  # the ledger as its readers see it: a recipient of a settled chunk has the chunk's status
_E = Event.__table__

Key = tuple[int, int]  # (template_id, metric_id)


@dataclass
class MetricsOutcome:
    """What one report did (counts only)."""

    rows_reported: int = 0
    calls: int = 0
    value_reported: int = 0
    unchanged: int = 0
    unknown: int = 0
    decreased: int = 0
    released_unknown: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def ledger_counts(engine: Engine, campaign_id: int, channel_id: int, settings: Settings) -> dict[Key, int]:
    """``{(template, MetricID): total}`` for sent / failed / skipped (control group excluded) from the send ledger."""
    ids = dict(settings.campaigns.metric_ids.items())
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(_R.c.template_id, _R.c.status, sa.func.count())
            .where(
                _R.c.campaign_id == int(campaign_id),
                _R.c.channel_id == int(channel_id),
                _R.c.template_id > 0,
                _R.c.status.in_(
                    [RecipientStatus.SENT.value, RecipientStatus.FAILED.value, RecipientStatus.SKIPPED.value]
                ),
                sa.or_(_R.c.reason.is_(None), _R.c.reason != REASON_CONTROL),
            )
            .group_by(_R.c.template_id, _R.c.status)
        ).all()
    totals: dict[Key, int] = {}
    for template_id, status, n in rows:
        metric = ids.get(str(status))
        if metric is not None:
            totals[(int(template_id), metric)] = int(n)
    return totals


def _key_is_exclusive(conn: Any, campaign_id: int, channel_id: int, key: str, template_ids: list[int]) -> bool:
    other = conn.scalar(
        sa.select(sa.func.count())
        .select_from(_R)
        .where(
            _R.c.notification_key == key,
            _R.c.status == RecipientStatus.SENT.value,
            sa.or_(_R.c.campaign_id != int(campaign_id), _R.c.channel_id != int(channel_id)),
        )
    )
    if other:
        return False
    if not template_ids:
        return True
    realtime = conn.scalar(
        sa.select(sa.func.count())
        .select_from(_E)
        .where(_E.c.event_type_id == 11, _E.c.status == EventStatus.SENT.value, _E.c.template_id.in_(template_ids))
    )
    return not realtime


def push_stat_counts(
    engine: Engine, netmera: NetmeraClient, campaign_id: int, channel_id: int, settings: Settings
) -> tuple[dict[Key, int], list[str]]:
    """``{(template, MetricID): total}`` for delivered / opened (``getPushStats``), and notes on what was left out."""
    ids = settings.campaigns.metric_ids
    if ids.delivered is None and ids.opened is None:
        return {}, []
    with engine.connect() as conn:
        keys = conn.execute(
            sa.select(_R.c.template_id, _R.c.notification_key)
            .where(
                _R.c.campaign_id == int(campaign_id),
                _R.c.channel_id == int(channel_id),
                _R.c.status == RecipientStatus.SENT.value,
                _R.c.notification_key.is_not(None),
            )
            .distinct()
        ).all()
        by_key: dict[str, list[int]] = {}
        for template_id, key in keys:
            by_key.setdefault(str(key), []).append(int(template_id))
        notes: list[str] = []
        usable: dict[str, list[int]] = {}
        for key, templates in sorted(by_key.items()):
            mapped = [t for t, k in settings.campaigns.templates.items() if k == key]
            if len(templates) > 1 or not _key_is_exclusive(conn, campaign_id, channel_id, key, mapped):
                notes.append(
                    f"notificationKey {key} (template(s) {sorted(templates)}) is shared with other sends: Netmera's "
                    "stats cannot be split per campaign, delivered/opened not reported"
                )
                continue
            usable[key] = templates
    totals: dict[Key, int] = {}
    for key, templates in usable.items():
        stats = netmera.get_push_stats(key)
        template = templates[0]
        if ids.delivered is not None:
            totals[(template, ids.delivered)] = int(stats.sent)
        if ids.opened is not None:
            totals[(template, ids.opened)] = int(sum(s.clicked for s in stats.stats))
    return totals, notes


def _mine(campaign_id: int, channel_id: int) -> tuple[Any, Any]:
    return (_M.c.campaign_id == int(campaign_id), _M.c.channel_id == int(channel_id))


@dataclass
class Increments:
    """What one reporter read from the ledger: the rows to send, each with the ``reported`` it was computed from."""

    campaign_id: int
    channel_id: int
    todo: list[tuple[Key, int, int]]
    outcome: MetricsOutcome


def plan_increments(
    engine: Engine, campaign_id: int, channel_id: int, totals: Mapping[Key, int], *, resend_unknown: bool = False
) -> Increments:
    """Read the ledger: the increments of ``totals`` to send (rows with an unknown outcome are left out)."""
    cid, ch = int(campaign_id), int(channel_id)
    out = MetricsOutcome()
    with session_scope(engine) as session:
        for template_id, metric_id in totals:
            insert_if_absent(
                session,
                CampaignMetricReport,
                {"campaign_id": cid, "channel_id": ch, "template_id": template_id, "metric_id": metric_id},
            )
        if resend_unknown:
            result = session.execute(
                sa.update(_M).where(*_mine(cid, ch), _M.c.sending.is_not(None)).values(sending=None, request_id=None)
            )
            out.released_unknown = int(result.rowcount or 0)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        ledger = {
            (int(r.template_id), int(r.metric_id)): r
            for r in conn.execute(
                sa.select(_M.c.template_id, _M.c.metric_id, _M.c.reported, _M.c.sending).where(*_mine(cid, ch))
            )
        }
    todo: list[tuple[Key, int, int]] = []
    for key, total in sorted(totals.items()):
        row = ledger[key]
        if row.sending is not None:
            out.unknown += 1
            continue
        increment = int(total) - int(row.reported)
        if increment > 0:
            todo.append((key, increment, int(row.reported)))
        elif increment < 0:
            out.decreased += 1
            out.notes.append(f"template {key[0]} MetricID {key[1]}: {total} now, {row.reported} already reported")
        else:
            out.unchanged += 1
    return Increments(cid, ch, todo, out)


def send_increments(engine: Engine, client: OptimoveClient, planned: Increments) -> MetricsOutcome:
    """Send planned increments (≤ 100 rows a call). A row another reporter changed since the plan is skipped."""
    out = planned.outcome
    for start in range(0, len(planned.todo), MAX_METRICS_PER_CALL):
        chunk = planned.todo[start : start + MAX_METRICS_PER_CALL]
        _send_chunk(engine, client, planned.campaign_id, planned.channel_id, chunk, out)
    if out.unknown:
        out.notes.append(
            f"{out.unknown} metric row(s) have an UNKNOWN outcome (Optimove answered 5xx or timed out after "
            "receiving them): not sent again, to never count twice"
        )
    return out


def report_counts(
    engine: Engine,
    client: OptimoveClient,
    campaign_id: int,
    channel_id: int,
    totals: Mapping[Key, int],
    *,
    resend_unknown: bool = False,
) -> MetricsOutcome:
    """Send Optimove the increments of ``totals`` over the ledger; see the module docstring. Raises on a failed call."""
    planned = plan_increments(engine, campaign_id, channel_id, totals, resend_unknown=resend_unknown)
    return send_increments(engine, client, planned)


def _send_chunk(
    engine: Engine, client: OptimoveClient, cid: int, ch: int, chunk: list[tuple[Key, int, int]], out: MetricsOutcome
) -> None:
    request_id = uuid.uuid4().hex
    claimed: list[tuple[Key, int]] = []
    with session_scope(engine) as session:
        for (template_id, metric_id), increment, reported in chunk:
            result = session.execute(
                sa.update(_M)
                .where(
                    *_mine(cid, ch),
                    _M.c.template_id == template_id,
                    _M.c.metric_id == metric_id,
                    _M.c.sending.is_(None),
                    _M.c.reported == reported,
                )
                .values(sending=increment, request_id=request_id)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                claimed.append(((template_id, metric_id), increment))
    if not claimed:
        return
    rows = [CampaignMetric(cid, ch, t, m, value) for (t, m), value in claimed]
    try:
        client.update_campaign_metrics(rows)
    except ApiError as exc:
        if not exc.ambiguous:
            with session_scope(engine) as session:
                session.execute(
                    sa.update(_M)
                    .where(*_mine(cid, ch), _M.c.request_id == request_id)
                    .values(sending=None, request_id=None)
                )
        else:
            out.unknown += len(claimed)
        raise
    with session_scope(engine) as session:
        session.execute(
            sa.update(_M)
            .where(*_mine(cid, ch), _M.c.request_id == request_id)
            .values(reported=_M.c.reported + _M.c.sending, sending=None, request_id=None)
        )
    out.calls += 1
    out.rows_reported += len(claimed)
    out.value_reported += sum(v for _, v in claimed)
