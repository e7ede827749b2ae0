"""Hourly reconciliation: start the campaigns Optimove executed on our channels that no event announced.

``actions/GetExecutedCampaignsByChannel`` for the day and each of campaigns.channels; an unannounced campaign gets an
event 13 (source ``reconcile``) through the event endpoint's store + dispatch, hence a run of
``optimove_campaign_send``; then stored events whose dispatch never completed are dispatched again.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from optimove_netmera.campaigns import tasks as campaign
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.runtime import default_args, param
from optimove_netmera.settings import get_settings

settings = get_settings()

with DAG(
    dag_id="optimove_campaign_reconcile",
    description="Start Optimove campaigns whose event never arrived; re-dispatch stuck events",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["optimove", "netmera", "campaigns"],
    on_failure_callback=failure_callbacks(settings),  # one message per failed run, if configured
    default_args=default_args(settings),
    params={
        "day": param(None, type=["null", "string"], format="date", description="Day to reconcile (default: today)"),
        "redispatch_held": param(
            False,
            type="boolean",
            description="First dispatch the held events (channel or template not configured then) the settings "
            "now cover",
        ),
    },
    doc_md=__doc__,
) as dag:

    @task
    def reconcile(dag_run=None, params=None) -> dict:
        return campaign.run_reconcile(params.get("day"), dag_run.run_after, bool(params.get("redispatch_held")))

    reconcile()
