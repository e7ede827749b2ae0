"""Bulk campaign send: one run per (campaign, channel), started by Optimove's event 13 (or by hand).

open (not cancelled?) -> GetCampaignDetails -> stage recipients into the ledger -> plan chunks per template and
scheduled time -> send (mapped: each task carries many chunks, defers until its scheduled time, re-checks
cancellation before every Netmera request) -> report -> decide_unknown (only when some recipients' outcome is
unknown: "Re-send them" -> trigger_resend starts a run with ``resend_unknown``; or "Accept the outcome"). Logic
lives in ``optimove_netmera.campaigns``.

Runs started by the event endpoint have the run_id ``optimove_c{campaign}_ch{channel}_{YYYYMMDDTHHMMSS}``. Clearing
any task (or the whole run) is safe: the send ledger never sends a recipient twice. ``resend_unknown`` re-sends the
recipients whose request was in flight when its worker died (and metric rows whose report had an unknown outcome).
``update_metrics`` (default ``campaigns.report_metrics``) reports sent / failed / skipped per template to Optimove,
each count once; ``dry_run`` (default ``campaigns.dry_run``) stages and reports what would be sent, sending nothing.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, XComArg, task
from optimove_netmera.campaigns import tasks as campaign
from optimove_netmera.campaigns.decision import UnknownOutcomeDecision
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.runtime import default_args, param
from optimove_netmera.settings import get_settings

settings = get_settings()  # the settings file and env only: no network or database at parse time

with DAG(
    dag_id="optimove_campaign_send",
    description="Send an Optimove campaign through Netmera's transactional API",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=16,
    tags=["optimove", "netmera", "campaigns"],
    on_failure_callback=failure_callbacks(settings),  # one message per failed run, if configured
    default_args=default_args(settings),
    params={
        "campaign_id": param(type="integer", minimum=1, description="Optimove CampaignID"),
        "channel_id": param(
            settings.campaigns.channels[0] if settings.campaigns.channels else 506,
            type="integer",
            minimum=1,
            description="Optimove ChannelID (one of campaigns.channels)",
        ),
        "event_time": param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
            description="The event's timeStamp, YYYY-MM-DD HH:MM:SS (UTC); empty: now",
        ),
        "resend_unknown": param(
            False,
            type="boolean",
            description="Re-send recipients whose request was in flight when its worker died (may duplicate)",
        ),
        "update_metrics": param(
            settings.campaigns.report_metrics,
            type="boolean",
            description="Report sent / failed / skipped counts back with integrations/UpdateCampaignMetrics",
        ),
        "dry_run": param(
            settings.campaigns.dry_run,
            type="boolean",
            description="Stage and report what would be sent (masked sample in the log); no Netmera call, no metrics",
        ),
        "event_id": param(None, type=["null", "integer"], description="The stored event (set by the endpoint)"),
        "source": param("manual", enum=["webhook", "reconcile", "manual"], description="Who started the run"),
    },
    doc_md=__doc__,
) as dag:

    @task
    def open_campaign(dag_run=None, params=None) -> dict:
        return campaign.open_campaign(dict(params), dag_run.run_id)

    @task
    def campaign_details(run: dict) -> dict:
        return campaign.fetch_details(run)

    @task
    def stage_recipients(run: dict, details: dict) -> dict:
        return campaign.stage(run)

    @task
    def plan(run: dict, staged: dict, params=None) -> dict:
        return campaign.plan(run, bool(params["resend_unknown"]), bool(params["dry_run"]))

    @task
    def batches(planned: dict) -> list:
        return planned["batches"]

    @task(trigger_rule="all_done")
    def report(run: dict, params=None) -> dict:
        return campaign.report(
            run, bool(params["update_metrics"]), bool(params["dry_run"]), bool(params["resend_unknown"])
        )

    run = open_campaign()
    planned = plan(run, stage_recipients(run, campaign_details(run)))
    sends = campaign.CampaignSendOperator.partial(
        task_id="send",
        pool=settings.sync.pool,
        map_index_template="{{ batch_label }}",
    ).expand(batch=batches(planned))
    reported = report(run)
    sends >> reported
    decided = UnknownOutcomeDecision(
        task_id="decide_unknown",
        report=reported,
        timeout_hours=settings.campaigns.unknown_timeout_hours,
        resend_task_id="trigger_resend",
    )
    decided >> TriggerDagRunOperator(
        task_id="trigger_resend",
        trigger_dag_id="optimove_campaign_send",
        trigger_run_id="{{ dag_run.run_id }}_resend",
        conf=XComArg(decided, key="resend_conf"),
        skip_when_already_exists=True,  # a cleared decide_unknown answered again never starts a second re-send
    )
