"""Single-target sends: drain queued Optimove events 11 in micro-batches (never one DAG run per event).

One long-lived run at a time (``@continuous``): its task polls the queue every ``poll_seconds`` while events flow,
sends each micro-batch (up to campaigns.chunk_size events) in one ``sendNotification`` request, defers (freeing its
worker slot) after ``idle_seconds`` without events and resumes when one is queued, and ends after ``run_seconds``;
the next run starts at once. Unpause the DAG to start it. Logic lives in ``optimove_netmera.campaigns.realtime``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG
from optimove_netmera.campaigns import tasks as campaign
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.runtime import default_args, param
from optimove_netmera.settings import get_settings

settings = get_settings()
REALTIME_RETRY_DELAY = pendulum.duration(seconds=min(30.0, settings.sync.retry_delay_seconds))  # a queue: retry soon

with DAG(
    dag_id="optimove_realtime_send",
    description="Send Optimove real-time (event 11) pushes through Netmera in micro-batches",
    schedule="@continuous",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["optimove", "netmera", "campaigns", "realtime"],
    on_failure_callback=failure_callbacks(settings),  # one message per failed run, if configured
    default_args=default_args(
        settings, retry_delay=pendulum.duration(seconds=min(30.0, settings.sync.retry_delay_seconds))
    ),
    params={
        "run_seconds": param(3600, type="number", minimum=0, description="Lifetime of one run (0: drain once)"),
        "idle_seconds": param(30, type="number", minimum=0, description="Idle time before deferring"),
        "poll_seconds": param(0.2, type="number", exclusiveMinimum=0, description="Queue poll interval"),
        "stale_seconds": param(
            600, type="number", minimum=0, description="Events processing longer than this are orphans"
        ),
        "resend_unknown": param(False, type="boolean", description="Queue again events with an unknown outcome"),
    },
    doc_md=__doc__,
) as dag:
    # No pool: one drainer, its request rate bounded by the micro-batches; the Netmera pool stays for bulk sends.
    campaign.RealtimeDrainOperator(task_id="drain")
