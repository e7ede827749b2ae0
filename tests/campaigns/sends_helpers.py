"""Helpers shared by the campaign-send, realtime and reconcile tests (real HTTP, real DAG runs)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import recipients
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.settings import load_settings
from optimove_netmera.store import get_engine, migrate

REPO = Path(__file__).resolve().parents[2]
CHANNEL = 506
SEND = "POST /rest/3.0/sendNotification"
FAST = {"retry_base_delay": 0.02, "retry_max_delay": 0.2, "max_attempts": 4}


def configure(box: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, chunk_size: int = 50) -> None:
    """Connections to the sandbox, the test's state DB (migrated), no task retries, small chunks."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPTIMOVE_DEFAULT",
        json.dumps(
            {"conn_type": "optimove", "host": box.optimove_url, "extra": {"api_key": box.optimove_api_key, **FAST}}
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_NETMERA_DEFAULT",
        json.dumps({"conn_type": "netmera", "host": box.netmera_url, "password": box.netmera_api_key, "extra": FAST}),
    )
    monkeypatch.setenv("OPTIMOVE_NETMERA_STATE_DB_URL", db_url)
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__RETRIES", "0")
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__CHUNK_SIZE", str(chunk_size))
    migrate(db_url)


def optimove_client(box: Any) -> OptimoveClient:
    """A client of the sandbox's Optimove (the tests' source of truth for recipients)."""
    return OptimoveClient(box.optimove_url, api_key=box.optimove_api_key)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """One real run through ``dag.test()``, the DAG file parsed fresh with the test's environment."""
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag(dag_id).test(run_conf=conf or {}, **kwargs)


SEND_DAG_ID = "optimove_campaign_send"


def send_campaign(campaign_id: int, conf: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A run of the send DAG; ``logical_date`` also fixes ``run_after``, so the same value re-runs the same run."""
    if "logical_date" in kwargs:
        kwargs.setdefault("run_after", kwargs["logical_date"])
    return run_dag(SEND_DAG_ID, {"campaign_id": campaign_id, "channel_id": CHANNEL, **(conf or {})}, **kwargs)


def task_states(dr: Any) -> dict[str, str]:
    """``{"task[map_index]": state}``."""
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dr.get_task_instances()}


def xcom(dr: Any, task_id: str, map_index: int = -1) -> Any:
    """The return value of one task instance of the run (None if it pushed none)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dr.run_id, key="return_value", task_ids=task_id, dag_ids=dr.dag_id, map_indexes=map_index
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def ledger(db_url: str, campaign_id: int, channel_id: int = CHANNEL) -> list[dict[str, Any]]:
    """Every ledger row of a campaign, as its readers see it (a recipient of a settled chunk has its status)."""
    table = recipients.ledger()
    with get_engine(db_url).connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.campaign_id == campaign_id, table.c.channel_id == channel_id)
        ).all()
    return [dict(r._mapping) for r in rows]


def statuses(rows: list[dict[str, Any]]) -> Counter[str]:
    """Ledger rows per status."""
    return Counter(r["status"] for r in rows)


def deliveries(box: Any, notification_keys: list[str] | None = None) -> list[dict[str, Any]]:
    """Every sendNotification target Netmera recorded (delivered and failed)."""
    out = box.admin.netmera.deliveries(status="all", limit=100_000)["deliveries"]
    if notification_keys is not None:
        out = [d for d in out if d["notificationKey"] in notification_keys]
    return out


def send_requests(box: Any, status: str = "200") -> int:
    """sendNotification requests Netmera answered with ``status``."""
    return box.admin.netmera.requests()["counts"].get(SEND, {}).get(status, 0)


def expected_recipients(box: Any, campaign_id: int, channel_id: int = CHANNEL) -> dict[str, Any]:
    """What Optimove says about the campaign's recipients, and what each should get.

    ``sendable``: customer -> (notificationKey, params) for non-control rows with a mapped template and
    the required params; ``control`` and ``missing`` are sets of customers; ``rows`` and ``distinct``
    count what the API served.
    """
    s = load_settings()
    attrs = list(s.campaigns.params)
    sendable: dict[str, tuple[str, dict[str, Any]]] = {}
    control: set[str] = set()
    missing: set[str] = set()
    unmapped: set[str] = set()
    rows = 0
    for page in optimove_client(box).iter_campaign_recipients(campaign_id, channel_id, attrs):
        for d in page:
            rows += 1
            if d.is_control:
                control.add(d.customer_id)
                continue
            key = s.campaigns.templates.get(d.template_id or 0)
            if key is None:
                unmapped.add(d.customer_id)
                continue
            params = {s.campaigns.params[a]: v for a, v in (d.attributes or {}).items() if v not in (None, "")}
            if d.promo_code:
                params["promoCode"] = d.promo_code
            if any(p not in params for p in s.campaigns.required_params):
                missing.add(d.customer_id)
                continue
            sendable.setdefault(d.customer_id, (key, params))
    return {"sendable": sendable, "control": control, "missing": missing, "unmapped": unmapped, "rows": rows}


def utcnow() -> dt.datetime:
    """Now, aware."""
    return dt.datetime.now(dt.UTC)
