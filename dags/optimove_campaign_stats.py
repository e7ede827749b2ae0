"""Daily: Netmera's delivered / opened counts of recent campaigns back to Optimove (``UpdateCampaignMetrics``).

For ``campaigns.stats_days`` after a campaign's last send, ``getPushStats`` per notificationKey gives delivered and
opened counts; they go to Optimove through the metrics ledger (only what changed since the last report). Keys
shared with other sends cannot be split per campaign and are logged, not reported. Logic lives in
``optimove_netmera.campaigns.metrics``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from optimove_netmera.campaigns import tasks as campaign
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.runtime import default_args
from optimove_netmera.settings import get_settings

settings = get_settings()

with DAG(
    dag_id="optimove_campaign_stats",
    description="Report Netmera push stats of recent campaigns to Optimove",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["optimove", "netmera", "campaigns"],
    on_failure_callback=failure_callbacks(settings),
    default_args=default_args(settings),
    doc_md=__doc__,
) as dag:

    @task
    def report_stats(dag_run=None) -> dict:
        return campaign.run_campaign_stats(dag_run.run_after)

    report_stats()
