"""The change guard's human decision, in real runs: ``dag.test()`` waits in ``approve_changes`` until a person
answers through a real ``airflow api-server`` (the REST API that Required Actions uses), or until the timeout sweep
of Airflow's scheduler takes the default. Netmera's writes are counted by the sandbox; the expected profiles come
from the oracle (``test_user_sync.assert_netmera_matches``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from api_server import Responder, Server, TimeoutSweeper
from optimove_netmera.store import get_engine
from optimove_netmera.store.models import SyncBatch, SyncRun
from optimove_netmera.sync import tasks
from test_user_sync import (  # noqa: F401 - sync_env is a fixture
    DAG_ID,
    N_KNOWN,
    SET,
    UNSET,
    assert_netmera_matches,
    calls,
    first_sync,
    last_run,
    run_sync,
    snapshot_size,
    states,
    sync_env,
)

pytestmark = pytest.mark.usefixtures("airflow_db")

CHANGED = 600  # of the sandbox's 1000 customers: over the default max_change_ratio of 0.5


@pytest.fixture
def box(sync_env: Any) -> Any:  # noqa: F811 - the imported fixture, requested by name
    """The sandbox with test_user_sync's environment (connections, fresh state DB, small batches, no retries)."""
    return sync_env


def writes(box: Any) -> int:
    return calls(box, SET) + calls(box, UNSET)


def task_states(dr: Any, task_id: str) -> set[str]:
    return {str(ti.state) for ti in dr.get_task_instances() if ti.task_id == task_id}


def test_a_tripped_guard_waits_and_approve_sends(box: Any, db_url: str, hitl_api: Server, tmp_path: Path) -> None:
    first_sync(box, db_url)
    box.admin.optimove.change_customers(CHANGED)
    before = writes(box)
    seen: dict[str, Any] = {}

    def while_waiting(detail: dict[str, Any]) -> None:  # the run is parked: nothing may have been written yet
        seen["writes"] = writes(box)
        seen["run"] = last_run(db_url)

    responder = Responder(hitl_api, DAG_ID, "approve_changes", "Approve", while_waiting)
    responder.start()
    dr = run_sync()
    detail = responder.join_and_check()
    assert dr.state == "success", states(dr)
    assert seen["writes"] == before and seen["run"]["status"] == "running"
    guard = seen["run"]["counts"]["plan"]["guard"]
    assert guard["tripped"] and guard["known"] == N_KNOWN and guard["changed"] > N_KNOWN * 0.5
    # The question shows the counts and the attribute names (names only: never a customer's value).
    assert f"{guard['changed']} of {N_KNOWN} known customers" in detail["body"]
    assert "`name`" in detail["body"] and "`country`" in detail["body"]
    assert detail["defaults"] == ["Reject"] and detail["options"] == ["Approve", "Reject"]
    run = last_run(db_url)
    assert run["status"] == "success"
    assert run["counts"]["guard_decision"]["choice"] == "Approve"
    assert run["counts"]["guard_decision"]["by"] == "admin"
    assert writes(box) > before
    assert_netmera_matches(box, tmp_path)


def _try_load(db_url: str, expected: type[BaseException], match: str) -> None:
    """Call the load task's code for the latest run's batches directly (as a cleared or hand-run load would)."""
    with get_engine(db_url).connect() as conn:
        run_id = conn.execute(sa.select(sa.func.max(SyncRun.id))).scalar_one()
        batch_ids = list(conn.execute(sa.select(SyncBatch.id).where(SyncBatch.sync_run_id == run_id)).scalars())
    assert batch_ids
    with pytest.raises(expected, match=match):
        tasks.run_load({"sync_run_id": run_id, "dry_run": False}, batch_ids)


def test_reject_ends_the_run_cleanly_and_the_next_run_plans_the_changes_again(
    box: Any, db_url: str, hitl_api: Server, tmp_path: Path
) -> None:
    first_sync(box, db_url)
    snapshot = snapshot_size(db_url)
    box.admin.optimove.change_customers(CHANGED)
    before = writes(box)

    def while_waiting(detail: dict[str, Any]) -> None:
        # Undecided (e.g. approve_changes marked success by hand): the load refuses to send.
        _try_load(db_url, AirflowFailException, "no decision is recorded")

    responder = Responder(hitl_api, DAG_ID, "approve_changes", "Reject", while_waiting)
    responder.start()
    dr = run_sync()
    responder.join_and_check()
    assert dr.state == "success", states(dr)  # a decision, not a failure
    assert task_states(dr, "load") == {"skipped"}
    assert task_states(dr, "record_failure") == {"skipped"}
    rejected = last_run(db_url)
    assert rejected["status"] == "aborted"
    assert "admin rejected them in Required Actions: nothing was sent" in rejected["error"]
    assert writes(box) == before and snapshot_size(db_url) == snapshot
    # Clearing a load task of the rejected run still sends nothing: the load checks the decision itself.
    _try_load(db_url, AirflowSkipException, "Reject")
    assert writes(box) == before

    # Nobody is lost: the next run plans the same changes again (and sends them once allowed).
    dr = run_sync({"max_change_ratio": 1.0})
    assert dr.state == "success", states(dr)
    assert last_run(db_url)["counts"]["plan"]["guard"]["tripped"] is False
    assert_netmera_matches(box, tmp_path)


def test_no_answer_takes_reject_when_the_timeout_passes_and_fails_the_run(
    box: Any, db_url: str, hitl_api: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_sync(box, db_url)
    box.admin.optimove.change_customers(CHANGED)
    before = writes(box)
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__GUARD_TIMEOUT_HOURS", "0.0003")  # about a second
    sweeper = TimeoutSweeper()
    sweeper.start()
    try:
        dr = run_sync()
    finally:
        sweeper.finish()
    assert dr.state == "failed", states(dr)
    assert task_states(dr, "approve_changes") == {"failed"}
    assert task_states(dr, "load") == {"upstream_failed"}
    run = last_run(db_url)
    assert run["status"] == "aborted" and "nobody decided within" in run["error"]
    assert run["counts"]["guard_decision"] == {**run["counts"]["guard_decision"], "choice": "Reject", "timed_out": True}
    assert writes(box) == before
