"""Sync-run bookkeeping: a failed run is closed as failed, a cleared one runs again; the resync param."""

from __future__ import annotations

import datetime as dt

import pytest
from optimove_netmera.store import get_engine, migrate
from optimove_netmera.sync import runs

DAY = dt.date(2026, 11, 30)


def test_fail_run_closes_only_a_running_run_and_a_cleared_run_runs_again(db_url: str) -> None:
    migrate(db_url)
    engine = get_engine(db_url)
    assert runs.fail_run(engine, "d", "r", "boom") is None  # no sync run for that DAG run: nothing to close
    info = runs.open_run(engine, "d", "r", {}, DAY)
    assert runs.fail_run(engine, "d", "r", "boom") == info.sync_run_id
    report = runs.run_report(engine, info.sync_run_id)
    assert report is not None and (report["status"], report["error"]) == ("failed", "boom")

    again = runs.open_run(engine, "d", "r", {}, DAY)  # the failed task cleared: the same run, running again
    assert again.sync_run_id == info.sync_run_id
    report = runs.run_report(engine, info.sync_run_id)
    assert report is not None and (report["status"], report["error"]) == ("running", None)

    runs.finish_run(engine, info.sync_run_id, runs.SyncRunStatus.ABORTED, "guard")
    runs.fail_run(engine, "d", "r", "later failure")  # a closed run keeps its own status and error
    report = runs.run_report(engine, info.sync_run_id)
    assert report is not None and (report["status"], report["error"]) == ("aborted", "guard")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(None, None), ("", None), ([], None), ("all", "all"), (["C2", " C1", "C2", 7], ["7", "C1", "C2"])],
)
def test_parse_resync(value: object, parsed: object) -> None:
    assert runs.parse_resync(value) == parsed


@pytest.mark.parametrize("value", ["C1", "ALL", [""], [None], 3, {"a": 1}])
def test_parse_resync_rejects_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match="resync"):
        runs.parse_resync(value)
