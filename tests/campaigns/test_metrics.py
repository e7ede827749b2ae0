"""Campaign results back to Optimove (``UpdateCampaignMetrics``) through the metrics ledger, in real runs of
``optimove_campaign_send`` and ``optimove_campaign_stats`` against the sandbox over HTTP (SQLite and PostgreSQL);
and the dry run.

The sandbox's ``/_sandbox/metrics`` aggregates add up every value received (Optimove keeps aggregate counts), so
"reported exactly once" is: each aggregate equals the count computed here from Optimove's recipient rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from optimove_netmera.campaigns import metrics
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import load_settings
from optimove_netmera.store import CampaignMetricReport, get_engine
from sends_helpers import (
    CHANNEL,
    configure,
    ledger,
    optimove_client,
    run_dag,
    send_requests,
    statuses,
    task_states,
    utcnow,
    xcom,
)
from sends_helpers import send_campaign as send

pytestmark = pytest.mark.usefixtures("airflow_db")

SENT, FAILED, SKIPPED, DELIVERED, OPENED = 0, 9, 5, 1, 2
METRICS = "POST /current/integrations/UpdateCampaignMetrics"


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch)
    return sandbox_reset


def expected_metrics(box: Any, campaign_id: int) -> dict[tuple[int, int], int]:
    """``{(template, MetricID): count}`` from Optimove's recipient rows, by the documented rules (not the code's)."""
    s = load_settings()
    seen: set[tuple[str, int]] = set()
    counts: Counter[tuple[int, int]] = Counter()
    for page in optimove_client(box).iter_campaign_recipients(campaign_id, CHANNEL, list(s.campaigns.params)):
        for d in page:
            if (d.customer_id, d.template_id) in seen:
                continue
            seen.add((d.customer_id, d.template_id))
            if d.is_control:
                continue  # the control group is not reported
            has_name = any(
                s.campaigns.params[a] == "name" and v not in (None, "") for a, v in (d.attributes or {}).items()
            )
            if d.template_id not in s.campaigns.templates or not has_name:
                counts[(d.template_id, SKIPPED)] += 1
            else:
                counts[(d.template_id, SENT)] += 1
    return dict(counts)


def aggregates(box: Any, campaign_id: int) -> dict[tuple[int, int], int]:
    return {
        (r["TemplateID"], r["MetricID"]): r["MetricValue"]
        for r in box.admin.optimove.metric_aggregates()
        if r["CampaignID"] == campaign_id and r["ChannelID"] == CHANNEL
    }


def metric_calls(box: Any) -> dict[str, int]:
    return box.admin.optimove.requests()["counts"].get(METRICS, {})


def test_metrics_reported_once_across_cleared_runs_and_second_runs(env: Any) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(
        recipients=300, control_fraction=0.1, missing_data_fraction=0.1, templates=[1, 2, 9]
    )["campaign_id"]
    expected = expected_metrics(box, cid)
    assert {m for _, m in expected} == {SENT, SKIPPED}
    when = utcnow()
    first = send(cid, logical_date=when)  # update_metrics is on by default (campaigns.report_metrics)
    assert first.state == "success", task_states(first)
    assert aggregates(box, cid) == expected
    assert metric_calls(box) == {"200": 1}  # 6 rows: one call

    again = send(cid, logical_date=when)  # the same run, every task (send and report) cleared
    assert again.state == "success", task_states(again)
    other = send(cid)  # another run of the same campaign
    assert other.state == "success", task_states(other)
    assert aggregates(box, cid) == expected
    assert metric_calls(box) == {"200": 1}  # nothing changed: no call at all
    assert xcom(other, "report")["metrics"]["unchanged"] == len(expected)


def test_metrics_outage_fails_the_report_and_the_ledger_does_not_advance(
    env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=120, control_fraction=0.0, templates=[1, 2])["campaign_id"]
    expected = expected_metrics(box, cid)
    box.admin.optimove.set_faults([{"endpoint": "/current/integrations/UpdateCampaignMetrics", "storm_429": 100}])
    when = utcnow()
    first = send(cid, logical_date=when)
    assert first.state == "failed"
    states = task_states(first)
    assert states["report[-1]"] == "failed" and all(v == "success" for k, v in states.items() if k.startswith("send"))
    assert aggregates(box, cid) == {}
    with get_engine(db_url).connect() as conn:
        rows = conn.execute(sa.select(CampaignMetricReport.reported, CampaignMetricReport.sending)).all()
    assert rows and all(r.reported == 0 and r.sending is None for r in rows)

    box.admin.optimove.clear_faults()
    cleared = send(cid, logical_date=when)  # Optimove is back: clearing the run reports every count once
    assert cleared.state == "success", task_states(cleared)
    assert aggregates(box, cid) == expected


def test_an_ambiguous_metrics_answer_is_never_sent_twice_unless_asked(env: Any) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=80, control_fraction=0.0, templates=[1])["campaign_id"]
    expected = expected_metrics(box, cid)
    box.admin.optimove.set_faults(
        [{"endpoint": "/current/integrations/UpdateCampaignMetrics", "error_rate": 1.0, "error_status": 502}]
    )
    when = utcnow()
    first = send(cid, logical_date=when)
    assert first.state == "failed"
    assert metric_calls(box) == {"502": 1}  # not repeated: Optimove may have counted it
    box.admin.optimove.clear_faults()

    again = send(cid, logical_date=when)
    assert again.state == "failed"  # still unknown: not re-sent on its own
    assert metric_calls(box) == {"502": 1}
    resent = send(cid, conf={"resend_unknown": True})
    assert resent.state == "success", task_states(resent)
    assert aggregates(box, cid) == expected and metric_calls(box) == {"502": 1, "200": 1}


def test_update_metrics_off_reports_nothing(env: Any) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1])["campaign_id"]
    dr = send(cid, conf={"update_metrics": False})
    assert dr.state == "success", task_states(dr)
    assert metric_calls(box) == {} and "metrics" not in xcom(dr, "report")


def test_push_stats_reported_daily_once_and_only_for_keys_the_campaign_alone_used(env: Any) -> None:
    box = env
    first = box.admin.optimove.create_campaign(recipients=150, control_fraction=0.0, templates=[1])["campaign_id"]
    assert send(first).state == "success"
    netmera = NetmeraClient(box.netmera_url, box.netmera_api_key)
    stats = netmera.get_push_stats("101")  # what Netmera says about the key only this campaign sent
    assert stats.sent > 0

    dr = run_dag("optimove_campaign_stats")
    assert dr.state == "success", task_states(dr)
    got = aggregates(box, first)
    assert got[(1, DELIVERED)] == stats.sent
    assert got.get((1, OPENED), 0) == sum(p.clicked for p in stats.stats)  # 0: not sent (no change)
    calls = metric_calls(box)
    assert run_dag("optimove_campaign_stats").state == "success"
    assert metric_calls(box) == calls and aggregates(box, first) == got  # nothing new: nothing sent

    second = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1])["campaign_id"]
    assert send(second).state == "success"
    dr = run_dag("optimove_campaign_stats")
    assert dr.state == "success", task_states(dr)
    assert (1, DELIVERED) not in aggregates(box, second)  # key 101 is now shared: not attributable
    assert any("notificationKey 101" in n for n in xcom(dr, "report_stats")["notes"])

    later = utcnow() + dt.timedelta(days=8)  # past campaigns.stats_days (7): nothing left to report
    dr = run_dag("optimove_campaign_stats", logical_date=later, run_after=later)
    assert dr.state == "success" and xcom(dr, "report_stats")["campaigns"] == 0


def test_dry_run_sends_nothing_reports_what_it_would_and_a_real_run_sends_after(
    env: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(
        recipients=200, control_fraction=0.1, missing_data_fraction=0.1, templates=[1, 2, 9]
    )["campaign_id"]
    expected = expected_metrics(box, cid)
    with caplog.at_level(logging.INFO, logger="optimove_netmera"):
        dry = send(cid, conf={"dry_run": True})
    assert dry.state == "success", task_states(dry)
    assert box.admin.netmera.requests()["total"] == 0  # not one Netmera call
    assert metric_calls(box) == {}
    rows = ledger(db_url, cid)
    assert statuses(rows)["sent"] == 0 and statuses(rows)["pending"] == sum(
        n for (_, m), n in expected.items() if m == SENT
    )
    planned = xcom(dry, "plan")["info"]["dry_run"]
    assert {t: v["recipients"] for t, v in planned["templates"].items()} == {
        str(t): n for (t, m), n in expected.items() if m == SENT
    }
    assert planned["skipped"]["no notificationKey mapped for template 9"] == expected[(9, SKIPPED)]
    assert xcom(dry, "report")["outcome"] == "dry run"
    samples = [r.getMessage() for r in caplog.records if "DRY RUN sample request" in r.getMessage()]
    assert samples and all("'extId': '<masked>'" in m for m in samples)
    logged = caplog.text
    for row in rows:  # no customer data in the log: ids, extIds, param values
        assert row["customer_id"] not in logged and row["ext_id"] not in logged
        for value in (row["params"] or {}).values():
            assert f"'{value}'" not in logged

    real = send(cid, conf={"dry_run": False})
    assert real.state == "success", task_states(real)
    assert statuses(ledger(db_url, cid))["pending"] == 0
    assert send_requests(box) > 0
    assert aggregates(box, cid) == expected


def test_unmapped_template_is_named_before_anything_is_sent(env: Any, caplog: pytest.LogCaptureFixture) -> None:
    box = env
    cid = box.admin.optimove.create_campaign(recipients=150, control_fraction=0.0, templates=[1, 9])["campaign_id"]
    n9 = len(
        {
            d.customer_id
            for page in optimove_client(box).iter_campaign_recipients(cid, CHANNEL)
            for d in page
            if d.template_id == 9
        }
    )
    with caplog.at_level(logging.ERROR, logger="optimove_netmera"):
        dr = send(cid, conf={"dry_run": True})
    assert xcom(dr, "stage_recipients")["unmapped_templates"] == {"9": {"name": "Template 9", "recipients": n9}}
    assert any("template 9 'Template 9'" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_two_reporters_reading_the_same_ledger_send_each_count_once(env: Any, db_url: str) -> None:
    """The report task and the stats DAG may report one campaign at once: the one that sends second, from a
    plan made before the first one's rows were accepted, sends nothing."""
    box = env
    cid = box.admin.optimove.create_campaign(recipients=60, control_fraction=0.0, templates=[1, 2])["campaign_id"]
    assert send(cid, conf={"update_metrics": False}).state == "success"
    expected = expected_metrics(box, cid)
    engine = get_engine(db_url)
    totals = metrics.ledger_counts(engine, cid, CHANNEL, load_settings())
    first = metrics.plan_increments(engine, cid, CHANNEL, totals)
    second = metrics.plan_increments(engine, cid, CHANNEL, totals)  # read before the first is sent
    assert first.todo == second.todo and len(first.todo) == len(expected)
    client = optimove_client(box)
    assert metrics.send_increments(engine, client, first).rows_reported == len(expected)
    assert metrics.send_increments(engine, client, second).rows_reported == 0
    assert aggregates(box, cid) == expected and metric_calls(box) == {"200": 1}
