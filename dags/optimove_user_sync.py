"""Nightly user sync: Optimove customer attributes -> Netmera profile attributes on extId = Client_ID.

wait for Optimove's daily data -> open the sync run -> extract changed customers -> diff & plan batches
-> approve_changes (only when the change guard tripped: Approve / Reject in Required Actions)
-> load (mapped, pooled) -> verify (read back a sample: Netmera drops undefined keys silently) -> report;
``record_failure`` runs only when a task failed (it closes the sync run as failed). Logic lives in
``optimove_netmera.sync``; see the README for settings.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, get_current_context, task
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.runtime import default_args, param
from optimove_netmera.sensors import OptimoveDataReadySensor
from optimove_netmera.settings import get_settings
from optimove_netmera.sync import tasks as sync
from optimove_netmera.sync.guard import ChangeGuardApproval

settings = get_settings()  # the settings file and env only: no network or database at parse time

with DAG(
    dag_id="optimove_user_sync",
    description="Sync changed Optimove customer attributes into Netmera profiles",
    schedule=CronTriggerTimetable(settings.sync.schedule, timezone=settings.sync.timezone),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["optimove", "netmera", "sync"],
    on_failure_callback=failure_callbacks(settings),  # one message per failed run, if configured
    default_args=default_args(settings),
    params={
        "full_refresh": param(False, type="boolean", description="Read every customer from export_path"),
        "dry_run": param(False, type="boolean", description="Plan and report only; send nothing"),
        "since": param(None, type=["null", "string"], format="date", description="Window start (YYYY-MM-DD)"),
        "until": param(None, type=["null", "string"], format="date", description="Window end (YYYY-MM-DD)"),
        "max_change_ratio": param(
            settings.sync.max_change_ratio,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Ask in Required Actions before sending if more than this share of known customers would "
            "change",
        ),
        "export_path": param(None, type=["null", "string"], description="CSV/Parquet customer export"),
        "resync": param(
            None,
            type=["null", "string", "array"],
            description='"all" or a list of CustomerIDs: forget what was delivered to them and send their full '
            "current attributes (every value set, every empty attribute unset)",
        ),
    },
    doc_md=__doc__,
) as dag:
    data_date = OptimoveDataReadySensor(
        task_id="wait_for_optimove_data",
        optimove_conn_id=settings.connections.optimove,
        poke_interval=settings.sync.data_ready_poke_seconds,
        timeout=settings.sync.data_ready_timeout_hours * 3600,
        deferrable=True,
        retries=0,
    )

    @task
    def open_run(data_date: str, dag_run=None, params=None) -> dict:
        return sync.open_run(dag_run.dag_id, dag_run.run_id, dict(params), data_date)

    @task
    def extract(run: dict) -> dict:
        return sync.run_extract(run)

    @task
    def plan(run: dict, extracted: dict, params=None) -> list:
        return sync.run_plan(run, float(params["max_change_ratio"]))

    @task(pool=settings.sync.pool, map_index_template="{{ batch_range }}")
    def load(run: dict, batch_ids: list[int]) -> dict:
        get_current_context()["batch_range"] = f"batches {batch_ids[0]}..{batch_ids[-1]}"
        return sync.run_load(run, batch_ids)

    @task(trigger_rule="none_failed")
    def verify(run: dict, loaded: list) -> dict:
        return sync.run_verify(run)

    @task(trigger_rule="none_failed")
    def report(run: dict, verified: dict) -> dict:
        return sync.run_report(run)

    @task(trigger_rule="one_failed", retries=0)
    def record_failure(dag_run=None) -> None:
        """Runs only when a task failed: closes the sync run as failed, then fails itself so the run shows failed."""
        sync.record_failure(dag_run.dag_id, dag_run.run_id)

    run = open_run(data_date.output)
    extracted = extract(run)
    planned = plan(run, extracted)
    approved = ChangeGuardApproval(task_id="approve_changes", run=run, timeout_hours=settings.sync.guard_timeout_hours)
    loaded = load.partial(run=run).expand(batch_ids=planned)
    planned >> approved >> loaded
    verified = verify(run, loaded)
    reported = report(run, verified)
    [data_date, run, extracted, planned, approved, loaded, verified, reported] >> record_failure()
