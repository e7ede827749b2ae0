"""Register this integration with Optimove (manual): event listeners and channel templates.

Registers ``{inbound.public_url}/rest/optimove/event/{inbound.app_key}`` for events 13, 11 and 4 on every
configured channel and event 3 (no channel), leaving what is already registered alone; reports listeners of our
events that point elsewhere (``remove_stale``: unregisters them). Offers ``campaigns.templates`` on every channel
and deletes the templates it added that are no longer mapped. A second run changes nothing. Logic lives in
``optimove_netmera.campaigns.setup``; ``python -m optimove_netmera.campaigns setup`` does the same.
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
    dag_id="optimove_setup",
    description="Register the event listeners and offer the templates to Optimove",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["optimove", "setup"],
    on_failure_callback=failure_callbacks(settings),
    default_args=default_args(settings),
    params={
        "remove_stale": param(
            False, type="boolean", description="Unregister listeners of our events and channels that point elsewhere"
        ),
        "dry_run": param(False, type="boolean", description="Change nothing; report what would change"),
    },
    doc_md=__doc__,
) as dag:

    @task
    def setup(params=None) -> dict:
        return campaign.run_setup(bool(params["remove_stale"]), bool(params["dry_run"]))

    setup()
