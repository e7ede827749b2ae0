"""The campaign DAGs' steps as their tasks call them: settings, hooks and the state database resolved here.

Each function takes small arguments and returns a small JSON-serialisable dict (ids and counts, never
customer data): that is what lands in XCom. The two operators defer (so no worker slot is held while
waiting): :class:`CampaignSendOperator` until its batch's scheduled time (``DateTimeTrigger`` from the
standard provider), :class:`RealtimeDrainOperator` until an event 11 is queued
(:class:`~optimove_netmera.campaigns.realtime.QueuedEventsTrigger`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import metrics, personalise, realtime, recipients, reconcile, send
from optimove_netmera.campaigns import setup as optimove_setup
from optimove_netmera.campaigns.state import (
    apply_cancel_list,
    cancel_status,
    record_campaign,
    set_state,
    store_counts,
)
from optimove_netmera.hooks import NetmeraHook, OptimoveHook
from optimove_netmera.http import ApiError
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.runtime import fail_fast_on_config_errors, state_engine
from optimove_netmera.runtime import task_settings as settings
from optimove_netmera.settings import Settings
from optimove_netmera.store import Campaign, CampaignState, RecipientStatus, session_scope
from optimove_netmera.store.engine import migrate

log = logging.getLogger(__name__)

DRY_RUN_SAMPLE = 3
"""Rendered requests per template shown (masked) in a dry run's log."""
EVENT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _optimove(s: Settings) -> OptimoveClient:
    return OptimoveHook(s.connections.optimove).get_conn()


def _event_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(str(value).strip(), EVENT_TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise AirflowFailException(f"event_time {value!r} is not 'YYYY-MM-DD HH:MM:SS'") from None


# --------------------------------------------------------------------------------------------------
# optimove_campaign_send
# --------------------------------------------------------------------------------------------------


@fail_fast_on_config_errors
def open_campaign(params: dict[str, Any], dag_run_id: str) -> dict[str, Any]:
    """Migrate the state DB, record the campaign, and check it is not cancelled before any work.

    A stored cancel that Optimove's ``GetCanceledCampaignCustomers`` does not narrow (empty list) stops the
    run here: the later tasks do nothing and the report says ``cancelled``. A non-empty list is judged
    after staging (partial or whole).
    """
    s = settings()
    migrate(s.resolved_state_db_url())
    campaign_id, channel_id = int(params["campaign_id"]), int(params["channel_id"])
    if channel_id not in s.campaigns.channels:
        raise AirflowFailException(
            f"channel {channel_id} is not configured: add it to campaigns.channels in the settings "
            f"(configured: {s.campaigns.channels})"
        )
    engine = state_engine(s)
    event_time = _event_time(params.get("event_time")) or dt.datetime.now(dt.UTC)
    record_campaign(engine, campaign_id, channel_id, event_time, dag_run_id)
    status = cancel_status(engine, campaign_id, channel_id)
    cancelled = status.cancelled
    if cancelled and status.needs_narrowing:
        listed = _optimove(s).get_canceled_campaign_customers(campaign_id)
        if not listed:
            apply_cancel_list(engine, campaign_id, channel_id, [], fetched_at=dt.datetime.now(dt.UTC))
        else:
            cancelled = False  # partial or whole is decided once the recipients are staged
    run = {
        "campaign_id": campaign_id,
        "channel_id": channel_id,
        "event_time": event_time.strftime(EVENT_TIME_FORMAT),
        "cancelled": cancelled,
        "source": params.get("source") or "manual",
    }
    log.info(
        "campaign %s channel %s (source %s, event time %s): %s",
        campaign_id,
        channel_id,
        run["source"],
        run["event_time"],
        "CANCELLED before sending: nothing will be sent" if cancelled else "going ahead",
    )
    return run


@fail_fast_on_config_errors
def fetch_details(run: dict[str, Any]) -> dict[str, Any]:
    """``actions/GetCampaignDetails`` into the campaigns row; returns a few scalar facts."""
    if run["cancelled"]:
        return {"skipped": "cancelled"}
    s = settings()
    engine = state_engine(s)
    details = _optimove(s).get_campaign_details(run["campaign_id"])
    table = Campaign.__table__
    with session_scope(engine) as session:
        session.execute(
            table.update()
            .where(table.c.campaign_id == run["campaign_id"], table.c.channel_id == run["channel_id"])
            .values(details=details.raw)
        )
    if details.channels and run["channel_id"] not in details.channels:
        log.warning("GetCampaignDetails lists channels %s, not %s", details.channels, run["channel_id"])
    info = {
        "status": details.status,
        "campaign_type": details.campaign_type,
        "duration": details.duration,
        "channels": details.channels,
        "error": details.error,
    }
    log.info("campaign details: %s", info)
    return info


@fail_fast_on_config_errors
def stage(run: dict[str, Any]) -> dict[str, Any]:
    """Stage the recipients into the ledger (never XCom), then apply a stored cancel to them."""
    if run["cancelled"]:
        return {"skipped": "cancelled"}
    s = settings()
    engine = state_engine(s)
    cid, ch = run["campaign_id"], run["channel_id"]
    client = _optimove(s)
    started = time.monotonic()
    names: dict[int, str] = {}
    counts = recipients.stage_recipients(engine, client, cid, ch, s, template_names=names)
    counts["seconds"] = round(time.monotonic() - started, 3)
    counts["unmapped_templates"] = _report_unmapped(engine, client, cid, ch, s, names)
    stats = client.stats.snapshot()
    counts |= {
        "optimove_calls": stats["calls"],
        "optimove_429s": stats["rate_limited"],
        "optimove_throttle_seconds": stats["throttle_seconds"],  # waited for the rate limiter (paging-bound)
    }
    set_state(engine, cid, ch, CampaignState.STAGED.value, from_states=[CampaignState.RECEIVED.value])
    status = cancel_status(engine, cid, ch)
    if status.cancelled and status.needs_narrowing:
        counts["cancel_scope"] = send.narrow_cancel(engine, client, cid, ch)
    counts["cancelled_now"] = recipients.reapply_cancel(engine, cid, ch)
    counts["ledger"] = recipients.status_counts(engine, cid, ch)
    store_counts(engine, cid, ch, "staging", counts)
    log.info("staged: %s", counts)
    return counts


def _report_unmapped(
    engine: Engine, client: OptimoveClient, cid: int, ch: int, s: Settings, names: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """Name every template this campaign uses that has no notificationKey mapping (its recipients are skipped)."""
    unmapped = {
        int(t): sum(counts.values())
        for t, counts in recipients.template_counts(engine, cid, ch).items()
        if int(t) != personalise.NO_TEMPLATE_ID and int(t) not in s.campaigns.templates
    }
    if not unmapped:
        return {}
    if any(t not in names for t in unmapped):
        try:
            names = {t.template_id: t.name or "" for t in client.get_channel_templates(ch)} | names
        except ApiError as exc:
            log.warning("GetChannelTemplates failed, unmapped templates reported without names: %s", exc)
    out: dict[str, dict[str, Any]] = {}
    for template_id, n in sorted(unmapped.items()):
        name = names.get(template_id) or "(name unknown)"
        out[str(template_id)] = {"name": name, "recipients": n}
        log.error(
            "template %s %r (channel %s) has no notificationKey mapping: its %d recipient(s) are skipped (reason %r); "
            "map it in campaigns.templates and trigger the campaign again to send them",
            template_id,
            name,
            ch,
            n,
            personalise.no_mapping_reason(template_id),
        )
    return out


def _mask(value: Any) -> Any:
    """The structure of a request without its customer data: keys kept, values replaced by their type."""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return f"<{type(value).__name__}>"


def _dry_run_plan(engine: Engine, cid: int, ch: int, s: Settings) -> dict[str, Any]:
    """What a real run would send: requests and recipients per template, skips per reason, a masked sample."""
    table = recipients.ledger()
    mine = (table.c.campaign_id == cid, table.c.channel_id == ch, table.c.status == RecipientStatus.PENDING.value)
    with engine.connect() as conn:
        groups = conn.execute(
            sa.select(table.c.template_id, table.c.scheduled_time, sa.func.count())
            .where(*mine)
            .group_by(table.c.template_id, table.c.scheduled_time)
        ).all()
        sample_rows = {
            int(t): conn.execute(
                sa.select(table.c.notification_key, table.c.ext_id, table.c.params)
                .where(*mine, table.c.template_id == t)
                .order_by(table.c.id)
                .limit(DRY_RUN_SAMPLE)
            ).all()
            for t in {int(g[0]) for g in groups}
        }
    per_template: dict[str, dict[str, int]] = {}
    for template_id, _, n in groups:
        item = per_template.setdefault(str(template_id), {"recipients": 0, "requests": 0})
        item["recipients"] += int(n)
        item["requests"] += -(-int(n) // s.campaigns.chunk_size)
    skipped = {
        reason.split(": ", 1)[1]: n
        for reason, n in recipients.reason_counts(engine, cid, ch).items()
        if reason.startswith(RecipientStatus.SKIPPED.value + ": ")
    }
    for template_id, rows in sorted(sample_rows.items()):
        for row in rows:
            body = personalise.request_object(row.notification_key, row.ext_id, row.params)
            body["target"] = {"extId": "<masked>"}
            if "message" in body:
                body["message"] = _mask(body["message"])
            log.info("DRY RUN sample request, template %s: %s", template_id, body)
    for template_id, item in sorted(per_template.items()):
        log.info(
            "DRY RUN template %s: would send %d recipient(s) in %d request(s)",
            template_id,
            item["recipients"],
            item["requests"],
        )
    for reason, n in sorted(skipped.items()):
        log.info("DRY RUN skipped %7d: %s", n, reason)
    return {"templates": per_template, "skipped": skipped}


@fail_fast_on_config_errors
def plan(run: dict[str, Any], resend_unknown: bool, dry_run: bool = False) -> dict[str, Any]:
    """Chunk the ledger per template and scheduled time; group chunks into a few mapped send batches.

    ``dry_run``: no batches (nothing is sent, the ledger rows stay pending for a real run); the log says what would
    be sent per template and skipped per reason, with a sample of the rendered requests without customer data.
    """
    s = settings()
    engine = state_engine(s)
    cid, ch = run["campaign_id"], run["channel_id"]
    status = cancel_status(engine, cid, ch)
    if not run["cancelled"] and status.cancelled and status.needs_narrowing:  # a cancel arrived after staging
        send.narrow_cancel(engine, _optimove(s), cid, ch)
        recipients.reapply_cancel(engine, cid, ch)
        status = cancel_status(engine, cid, ch)
    if run["cancelled"] or status.cancelled:
        log.info("campaign is cancelled: nothing to send")
        return {"batches": [], "info": {"cancelled": True}}
    if dry_run:
        return {"batches": [], "info": {"dry_run": _dry_run_plan(engine, cid, ch, s)}}
    batches, info = recipients.plan_chunks(engine, cid, ch, s.campaigns.chunk_size, include_unknown=resend_unknown)
    log.info(
        "plan: %d chunk(s) with work in %d send task(s); chunks per template %s",
        info["chunks_with_work"],
        info["send_tasks"],
        info["chunks_per_template"],
    )
    return {"batches": [b.as_dict() for b in batches], "info": info}


class CampaignSendOperator(BaseOperator):
    """Send one batch of ledger chunks at its scheduled time (deferring until then), checking cancellation.

    ``batch`` is one item of :func:`plan`'s ``batches`` (campaign, channel, scheduled time, chunk numbers).
    """

    template_fields: Sequence[str] = ()

    def __init__(self, *, batch: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch

    def _label(self, context: Context) -> None:
        context["batch_label"] = self.batch.get("label", "")  # type: ignore[typeddict-unknown-key]

    @fail_fast_on_config_errors
    def execute(self, context: Context) -> dict[str, Any]:
        """Defer until the scheduled time if it is in the future, else send now."""
        self._label(context)
        moment = self.batch.get("scheduled_time")
        if moment:
            when = dt.datetime.fromisoformat(moment)
            if when > dt.datetime.now(dt.UTC):
                s = settings()
                set_state(
                    state_engine(s),
                    self.batch["campaign_id"],
                    self.batch["channel_id"],
                    CampaignState.WAITING.value,
                    from_states=[CampaignState.RECEIVED.value, CampaignState.STAGED.value],
                )
                log.info("waiting until the scheduled time %s (deferred: no worker slot is held)", moment)
                self.defer(trigger=DateTimeTrigger(moment=when), method_name="execute_complete")
        return self._send(context)

    @fail_fast_on_config_errors
    def execute_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resumed at the scheduled time."""
        self._label(context)
        return self._send(context)

    def _send(self, context: Context) -> dict[str, Any]:
        s = settings()
        engine = state_engine(s)
        params = context["params"]
        cid, ch = int(self.batch["campaign_id"]), int(self.batch["channel_id"])
        netmera = NetmeraHook(s.connections.netmera).get_conn()
        outcome = send.send_chunks(
            engine,
            netmera,
            cid,
            ch,
            list(self.batch["chunks"]),
            optimove=lambda: _optimove(s),
            resend_unknown=bool(params.get("resend_unknown")),
            requests_in_flight=s.campaigns.requests_in_flight,
        )
        result = outcome.as_dict()
        if outcome.cancelled:
            log.warning(
                "CANCELLED: campaign %s channel %s stopped before its next request; %d sent by this task, "
                "%d pending recipient(s) cancelled",
                cid,
                ch,
                outcome.sent,
                outcome.cancelled_recipients,
            )
        else:
            log.info("%s: %s", self.batch.get("label"), {k: v for k, v in result.items() if v})
        return result


def _format_report(report: dict[str, Any]) -> str:
    lines = [
        f"campaign {report['campaign_id']} channel {report['channel_id']}: {report['outcome'].upper()}",
        f"  recipients by status: {report['statuses']}",
    ]
    for template, counts in sorted(report["templates"].items()):
        lines.append(f"  template {template}: {counts}")
    for reason, n in sorted(report["reasons"].items()):
        lines.append(f"  {n:>7}  {reason}")
    if report.get("unknown"):
        lines.append(
            f"  {report['unknown']} recipient(s) have an UNKNOWN outcome (a request in flight when its worker "
            "died, or a 5xx/timeout): decide_unknown asks whether to re-send them or accept the outcome"
        )
    return "\n".join(lines)


@fail_fast_on_config_errors
def report(
    run: dict[str, Any], update_metrics: bool, dry_run: bool = False, resend_unknown: bool = False
) -> dict[str, Any]:
    """Close the campaign: counts per status and template, in the log and XCom (counts only).

    Rows still ``in_flight`` once every send task has finished are marked ``unknown``. The task fails (so the run
    is never green over undelivered recipients) when recipients are left ``pending`` on a campaign that is not
    cancelled (a send task failed: clear it). Recipients with an ``unknown`` outcome (a request that may or may
    not have reached Netmera) are the next task's question (:mod:`optimove_netmera.campaigns.decision`). The
    report is stored in the campaign's ``counts`` either way.

    ``update_metrics``: the sent / failed / skipped counts per template go to Optimove through the metrics ledger
    (:mod:`~optimove_netmera.campaigns.metrics`: only what changed since the last report); a failed call fails
    the task (its retries cover an outage). ``dry_run``: the report of a run that sent nothing; nothing changes.
    """
    s = settings()
    engine = state_engine(s)
    cid, ch = run["campaign_id"], run["channel_id"]
    orphans = 0 if dry_run else recipients.mark_orphans_unknown(engine, cid, ch, None)
    status = cancel_status(engine, cid, ch)
    statuses = recipients.status_counts(engine, cid, ch)
    requests = recipients.request_count(engine, cid, ch)
    if dry_run:
        outcome = "dry run"
    elif status.cancelled:
        outcome = "cancelled"
    elif statuses.get(RecipientStatus.PENDING.value, 0):
        outcome = "incomplete"
    elif statuses.get(RecipientStatus.UNKNOWN.value, 0):
        outcome = "unknown outcome"
    elif status.partial:
        outcome = "done (partially cancelled)"
    else:
        outcome = "done"
    if outcome.startswith("done"):
        set_state(engine, cid, ch, CampaignState.DONE.value)
    summary = {
        "campaign_id": cid,
        "channel_id": ch,
        "outcome": outcome,
        "statuses": statuses,
        "templates": recipients.template_counts(engine, cid, ch),
        "reasons": recipients.reason_counts(engine, cid, ch),
        "unknown": statuses.get(RecipientStatus.UNKNOWN.value, 0),
        "orphans_marked_unknown": orphans,
        "requests": requests,
    }
    if dry_run:
        log.info("DRY RUN: nothing was sent to Netmera and nothing reported to Optimove; run again with dry_run=false")
        log.info("campaign send report:\n%s", _format_report(summary))
        return summary
    failure: ApiError | None = None
    outcome_metrics: metrics.MetricsOutcome | None = None
    if update_metrics:
        outcome_metrics = metrics.MetricsOutcome()
        try:
            outcome_metrics = metrics.report_counts(
                engine,
                _optimove(s),
                cid,
                ch,
                metrics.ledger_counts(engine, cid, ch, s),
                resend_unknown=resend_unknown,
            )
        except ApiError as exc:
            failure = exc
        summary["metrics"] = outcome_metrics.as_dict()
        summary["metrics_rows"] = outcome_metrics.rows_reported
    store_counts(engine, cid, ch, "report", summary)
    log.info("campaign send report:\n%s", _format_report(summary))
    if outcome_metrics is not None:
        log.info("metrics reported to Optimove: %s", {k: v for k, v in outcome_metrics.as_dict().items() if v})
    if outcome == "incomplete":
        raise AirflowFailException(
            f"campaign {cid} channel {ch}: {statuses.get('pending', 0)} recipient(s) still pending "
            "(a send task failed); clear the failed send task to resume"
        )
    if outcome == "unknown outcome":
        log.warning(
            "campaign %s channel %s: %s recipient(s) have an UNKNOWN outcome (their request may or may not have "
            "reached Netmera; reasons above); everyone else is settled. decide_unknown asks in Required Actions: "
            "re-send them (a recipient may get the push twice) or accept the outcome",
            cid,
            ch,
            summary["unknown"],
        )
    _raise_for_metrics(cid, ch, failure, outcome_metrics)
    return summary


def _raise_for_metrics(cid: int, ch: int, failure: ApiError | None, outcome: metrics.MetricsOutcome | None) -> None:
    if failure is not None:
        if failure.ambiguous:
            raise AirflowFailException(
                f"campaign {cid} channel {ch}: UpdateCampaignMetrics answered {failure} (Optimove may have counted "
                "it): those rows are not re-sent, to never count twice. Check the campaign's numbers in Optimove; "
                f'to send them again trigger optimove_campaign_send with {{"campaign_id": {cid}, "channel_id": {ch}, '
                '"resend_unknown": true}; or accept by marking this task success'
            ) from failure
        log.error(
            "campaign %s channel %s: UpdateCampaignMetrics failed (%s); the send is complete, the metrics ledger did "
            "not advance: the task's retry (or clearing it) reports them",
            cid,
            ch,
            failure,
        )
        raise failure
    if outcome is not None and outcome.unknown:
        raise AirflowFailException(
            f"campaign {cid} channel {ch}: {outcome.unknown} metric row(s) have an unknown outcome from an earlier "
            "report (not re-sent, to never count twice); re-send them with resend_unknown=true, or mark this task "
            "success to accept"
        )


# --------------------------------------------------------------------------------------------------
# optimove_setup and optimove_campaign_stats
# --------------------------------------------------------------------------------------------------


@fail_fast_on_config_errors
def run_setup(remove_stale: bool, dry_run: bool) -> dict[str, Any]:
    """Register the listeners and offer the templates (:mod:`~optimove_netmera.campaigns.setup`)."""
    s = settings()
    migrate(s.resolved_state_db_url())
    try:
        s.inbound.listener_url()
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    summary = optimove_setup.run_setup(_optimove(s), state_engine(s), s, remove_stale=remove_stale, dry_run=dry_run)
    log.info("Optimove setup: %s", summary)
    return summary


@fail_fast_on_config_errors
def run_campaign_stats(now: dt.datetime | None = None) -> dict[str, Any]:
    """Report Netmera's delivered / opened counts of the campaigns sent in the last ``campaigns.stats_days`` days.

    Also re-reports the send counts of finished campaigns (only what changed: normally nothing). A failed
    Optimove or Netmera call fails the task after the other campaigns are done.
    """
    s = settings()
    migrate(s.resolved_state_db_url())
    if not s.campaigns.report_metrics or s.campaigns.stats_days == 0:
        log.info("campaigns.report_metrics is off or campaigns.stats_days is 0: nothing to report")
        return {"campaigns": 0}
    engine = state_engine(s)
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=s.campaigns.stats_days)
    table = recipients.ledger()
    with engine.connect() as conn:
        recent = conn.execute(
            sa.select(table.c.campaign_id, table.c.channel_id)
            .where(table.c.status == RecipientStatus.SENT.value)
            .group_by(table.c.campaign_id, table.c.channel_id)
            .having(sa.func.max(table.c.sent_at) >= cutoff)
            .order_by(table.c.campaign_id, table.c.channel_id)
        ).all()
    optimove = _optimove(s)
    netmera = NetmeraHook(s.connections.netmera).get_conn()
    out: dict[str, Any] = {"campaigns": len(recent), "rows_reported": 0, "notes": [], "errors": []}
    for cid, ch in recent:
        try:
            totals, notes = metrics.push_stat_counts(engine, netmera, cid, ch, s)
            if cancel_status(engine, cid, ch).state == CampaignState.DONE.value:
                totals |= metrics.ledger_counts(engine, cid, ch, s)
            result = metrics.report_counts(engine, optimove, cid, ch, totals)
        except ApiError as exc:
            out["errors"].append(f"campaign {cid} channel {ch}: {exc}")
            log.error("campaign %s channel %s: %s", cid, ch, exc)
            continue
        out["rows_reported"] += result.rows_reported
        out["notes"] += [f"campaign {cid} channel {ch}: {n}" for n in notes + result.notes]
        log.info("campaign %s channel %s: %s", cid, ch, {k: v for k, v in result.as_dict().items() if v})
    for note in out["notes"]:
        log.warning(note)
    if out["errors"]:
        raise RuntimeError(f"{len(out['errors'])} campaign(s) not reported: {out['errors']}")
    return out


# --------------------------------------------------------------------------------------------------
# optimove_realtime_send
# --------------------------------------------------------------------------------------------------


class RealtimeDrainOperator(BaseOperator):
    """Drain queued events 11 in micro-batches for ``run_seconds``, deferring whenever the queue is idle.

    While events flow it stays in the worker and polls every ``poll_seconds`` (sub-second latency). After
    ``idle_seconds`` without events it defers to :class:`~optimove_netmera.campaigns.realtime.QueuedEventsTrigger`
    (no worker slot held) and resumes as soon as one is queued. After ``run_seconds`` it returns the summary
    (counts and the receipt -> request latency p50/p95), and the ``@continuous`` schedule starts the next
    run. ``run_seconds=0``: drain what is queued and return.
    """

    def __init__(
        self,
        *,
        run_seconds: float | str = 3600,
        idle_seconds: float | str = 30,
        poll_seconds: float | str = 0.2,
        trigger_poll_seconds: float = 1.0,
        stale_seconds: float | str = 600,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_seconds = run_seconds
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.trigger_poll_seconds = trigger_poll_seconds
        self.stale_seconds = stale_seconds

    def _option(self, context: Context, name: str) -> float:
        params = context["params"]
        value = params.get(name) if params.get(name) is not None else getattr(self, name)
        return float(value)

    @fail_fast_on_config_errors
    def execute(self, context: Context) -> dict[str, Any]:
        """Recover orphans, then drain."""
        s = settings()
        migrate(s.resolved_state_db_url())
        engine = state_engine(s)
        total = realtime.DrainOutcome()
        total.recovered_unknown = realtime.recover_stale(engine, self._option(context, "stale_seconds"))
        if total.recovered_unknown:
            log.warning(
                "%d event(s) were in flight when a drainer died: failed, outcome unknown", total.recovered_unknown
            )
        if context["params"].get("resend_unknown"):
            total.requeued_unknown = realtime.requeue_unknown(engine)
            log.warning("resend_unknown: %d event(s) with an unknown outcome queued again", total.requeued_unknown)
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._option(context, "run_seconds"))
        return self._cycle(context, s, deadline, total)

    @fail_fast_on_config_errors
    def resume(self, context: Context, event: Any = None, **_: Any) -> dict[str, Any]:
        """Back from the trigger: drain again, or finish when the run's time is up."""
        payload = event if isinstance(event, dict) else {}
        total = realtime.DrainOutcome.from_state(payload.get("carry"))
        end = dt.datetime.fromisoformat(payload.get("deadline") or dt.datetime.now(dt.UTC).isoformat())
        if payload.get("status") == "timeout":
            return self._finish(total)
        return self._cycle(context, settings(), end, total)

    def _cycle(self, context: Context, s: Settings, deadline: dt.datetime, total: realtime.DrainOutcome) -> Any:
        engine = state_engine(s)
        netmera = NetmeraHook(s.connections.netmera).get_conn()
        left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        total.add(
            realtime.drain(
                engine,
                netmera,
                s,
                claimed_by=context["run_id"],
                until=time.monotonic() + max(0.0, left),
                idle_seconds=min(self._option(context, "idle_seconds"), max(0.0, left)),
                poll_seconds=self._option(context, "poll_seconds"),
            )
        )
        if dt.datetime.now(dt.UTC) >= deadline:
            return self._finish(total)
        log.info("queue idle: deferring until an event 11 is queued (summary so far: %s)", total.summary())
        self.defer(
            trigger=realtime.QueuedEventsTrigger(
                deadline=deadline.isoformat(), poll_seconds=self.trigger_poll_seconds, carry=total.state()
            ),
            method_name="resume",
        )
        return None

    @staticmethod
    def _finish(total: realtime.DrainOutcome) -> dict[str, Any]:
        summary = total.summary()
        log.info("realtime send summary: %s", summary)
        return summary


# --------------------------------------------------------------------------------------------------
# optimove_campaign_reconcile
# --------------------------------------------------------------------------------------------------


@fail_fast_on_config_errors
def run_reconcile(day: str | None, run_after: dt.datetime | None, redispatch_held: bool = False) -> dict[str, Any]:
    """Reconcile ``day`` (default: the run's date, UTC) and re-dispatch pending events.

    ``redispatch_held``: first release and dispatch the held events the settings now cover (after an operator
    configured their channel or template).
    """
    from optimove_netmera.campaigns import events

    s = settings()
    migrate(s.resolved_state_db_url())
    engine = state_engine(s)
    trigger = events.TaskDagTrigger(s)
    held = None
    if redispatch_held:
        held = events.redispatch_held(engine, s, trigger=trigger, by="the reconcile DAG's redispatch_held").as_dict()
        log.info("held events: %s", held)
    moment = run_after or dt.datetime.now(dt.UTC)
    target = dt.date.fromisoformat(day) if day else moment.astimezone(dt.UTC).date()
    counts = reconcile.reconcile_day(engine, _optimove(s), s, target, trigger=trigger)
    return counts if held is None else {**counts, "held": held}
