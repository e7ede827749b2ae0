"""The user-sync steps as the DAG's tasks call them: settings, hooks and the state database resolved here.

Each function takes small arguments and returns a small JSON-serialisable dict (ids and counts, never
customer data), which is what lands in XCom.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from sqlalchemy.engine import Engine

from optimove_netmera.hooks import NetmeraHook, OptimoveHook
from optimove_netmera.netmera import ExistenceUnknown
from optimove_netmera.runtime import fail_fast_on_config_errors, state_engine
from optimove_netmera.runtime import task_settings as settings
from optimove_netmera.settings import Settings
from optimove_netmera.store.engine import migrate
from optimove_netmera.store.models import SyncRunStatus
from optimove_netmera.sync import guard, load, runs, verify

# extract and plan read and diff with pandas and pyarrow (~0.7 s to import): they are imported by the tasks that use
# them, not when Airflow parses the DAG file (every parse, and every task's start on a worker)

log = logging.getLogger(__name__)
PROBE_TAG = "optimove-netmera-existence-probe"  # never set on anyone: untagging it changes nothing


@fail_fast_on_config_errors
def open_run(dag_id: str, dag_run_id: str, params: dict[str, Any], data_date: str) -> dict[str, Any]:
    """Migrate the state database if needed and open (or resume) this DAG run's sync run."""
    s = settings()
    migrate(s.resolved_state_db_url())
    if not s.attributes:
        raise AirflowFailException("no attributes are mapped: add at least one under `attributes:` in the settings")
    check_mapping(s)
    try:
        info = runs.open_run(state_engine(s), dag_id, dag_run_id, params, dt.date.fromisoformat(data_date))
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    log.info(
        "sync run %s: mode=%s window=%s..%s dry_run=%s",
        info.sync_run_id,
        info.mode,
        info.since,
        info.until,
        info.dry_run,
    )
    return info.as_dict()


def check_mapping(s: Settings) -> None:
    """Fail (no retries) when a mapped attribute is not one of Optimove's (``model/GetCustomerAttributeList``)."""
    known = {a.name for a in OptimoveHook(s.connections.optimove).get_conn().get_customer_attribute_list()}
    unknown = [name for name in s.optimove_attributes if name not in known]
    if unknown:
        raise AirflowFailException(
            f"mapped attribute(s) {', '.join(unknown)} are not Optimove customer attributes; check the spelling "
            f"(RealFieldName, case-sensitive) in the settings. Optimove has: {', '.join(sorted(known))}"
        )


@fail_fast_on_config_errors
def run_extract(run: dict[str, Any]) -> dict[str, int]:
    """Stage the run's customers (changers API, or the export file for a full refresh)."""
    from optimove_netmera.sync import extract

    s = settings()
    engine = state_engine(s)
    run_id = run["sync_run_id"]
    with runs.phase(engine, run_id, "extract"):
        if run["mode"] == "export":
            try:
                counts = extract.extract_export(engine, run_id, run["export_path"], s)
            except (FileNotFoundError, ValueError) as exc:
                raise AirflowFailException(str(exc)) from None
        else:
            client = OptimoveHook(s.connections.optimove).get_conn()
            since, until = dt.date.fromisoformat(run["since"]), dt.date.fromisoformat(run["until"])
            try:
                counts = extract.extract_changes(
                    engine, run_id, client, s, since, until, initial=run["mode"] == "initial"
                )
                if run.get("resync"):
                    full = run["mode"] != "initial"  # the initial extraction read every customer's full row
                    counts |= extract.extract_resync(engine, run_id, client, s, until, run["resync"], full)
            finally:  # every try's calls count, the failed ones too
                record_api_stats(engine, run_id, "optimove", client)
    runs.record_counts(engine, run_id, counts)
    log.info("extracted: %s", counts)
    return counts


@fail_fast_on_config_errors
def run_plan(run: dict[str, Any], max_change_ratio: float) -> list[list[int]]:
    """Diff and plan; returns the batch-id groups the load tasks map over.

    The change guard is evaluated and recorded here; when it trips, the ``approve_changes`` task asks a person
    before the load sends anything (:mod:`optimove_netmera.sync.guard`).
    """
    from optimove_netmera.sync import plan

    s = settings()
    engine = state_engine(s)
    run_id = run["sync_run_id"]
    probe = netmera = None
    if s.sync.check_unknown_ext_ids and not run["dry_run"]:  # a dry run makes no Netmera request at all
        netmera = NetmeraHook(s.connections.netmera).get_conn()

        def probe(ext_ids: list[str]) -> set[str] | None:
            try:
                return set(netmera.untag_users(PROBE_TAG, ext_ids, check_existence=True))
            except ExistenceUnknown as exc:  # not "all known": these customers are carried over and checked again
                log.warning("existence of %s extIds unknown, they are carried over: %s", len(ext_ids), exc)
                return None

    with runs.phase(engine, run_id, "diff_plan"), _recording(engine, run_id, "netmera", netmera):
        try:
            export = run["export_path"] if run["mode"] == "export" else None
            p = plan.build_plan(
                engine, run_id, s, max_change_ratio, run["dry_run"], probe, export, resync=run.get("resync")
            )
        except (FileNotFoundError, ValueError) as exc:  # the export file vanished or changed shape since extract
            raise AirflowFailException(str(exc)) from None
    counts = p.counts()
    if run["dry_run"]:
        runs.record_counts(engine, run_id, {"plan": counts})
    if p.guard.get("tripped"):
        log.warning(
            "change guard tripped: %s of %s known customers would change (max_change_ratio %s)%s",
            p.guard["changed"],
            p.guard["known"],
            p.guard["max_change_ratio"],
            "" if run["dry_run"] else "; the load waits for a decision in Required Actions (approve_changes)",
        )
    log.info(
        "plan: %s changed of %s fetched (%s new, %s unchanged), %s set + %s unset batches in %s load tasks",
        p.changed,
        p.fetched,
        p.new,
        p.unchanged,
        p.set_batches,
        p.unset_batches,
        len(p.groups),
    )
    return p.groups


@fail_fast_on_config_errors
def run_load(run: dict[str, Any], batch_ids: list[int]) -> dict[str, int]:
    """Deliver one group of batches, once the change guard allows it (see :func:`guard.clearance`)."""
    s = settings()
    engine = state_engine(s)
    run_id = run["sync_run_id"]
    allowed = guard.clearance(engine, run_id)
    if allowed is guard.Clearance.REJECTED:
        raise AirflowSkipException("the change guard's decision was Reject: nothing is sent for this run")
    if allowed is guard.Clearance.UNDECIDED:
        raise AirflowFailException(
            "the change guard tripped and no decision is recorded: clear the approve_changes task and answer it in "
            "Required Actions (Approve sends, Reject ends the run without sending)"
        )
    client = NetmeraHook(s.connections.netmera).get_conn()
    with runs.phase(engine, run_id, "load"), _recording(engine, run_id, "netmera", client):
        counts = load.load_batches(engine, run_id, batch_ids, client, s.sync.load_concurrency)
    log.info("loaded: %s", counts)
    return counts


@fail_fast_on_config_errors
def run_verify(run: dict[str, Any]) -> dict[str, Any]:
    """Read back a sample of the written profiles; fail (no retries) naming any attribute Netmera dropped."""
    if run["dry_run"]:
        return {"skipped": "dry run"}
    s = settings()
    engine = state_engine(s)
    run_id = run["sync_run_id"]
    if guard.clearance(engine, run_id) is guard.Clearance.REJECTED:
        return {"skipped": "changes rejected"}
    load.settle(engine, run_id)  # the read-back covers every customer whose writes were all delivered
    client = NetmeraHook(s.connections.netmera).get_conn()
    with runs.phase(engine, run_id, "verify"), _recording(engine, run_id, "netmera", client):
        result = verify.verify_run(engine, run_id, s, client)
    counts = result.counts()
    runs.record_counts(engine, run_id, {"verify": counts})
    log.info("verify: %s", counts)  # attribute names and counts only
    if result.unverified:
        log.warning("not verified (every profile read back was unknown to Netmera): %s", result.unverified)
    if result.not_kept:
        message = result.message({a.netmera: a.type for a in s.attributes})
        reopened = verify.reopen(engine, run_id, set(result.not_kept))
        runs.finish_run(engine, run_id, SyncRunStatus.FAILED, message)
        log.error("sync run %s: %s (%s batches reopened)", run_id, message, reopened)
        raise AirflowFailException(message)
    return counts


def record_api_stats(engine: Engine, run_id: int, service: str, client: Any) -> None:
    """Add the client's calls and 429s (this try's) to the run's counts: retries and failed tries add up."""
    stats = client.stats.snapshot()
    runs.record_counts(
        engine, run_id, {f"{service}_calls": stats["calls"], f"{service}_429s": stats["rate_limited"]}, add=True
    )


@contextmanager
def _recording(engine: Engine, run_id: int, service: str, client: Any | None) -> Iterator[None]:
    """Record ``client``'s API stats when the block ends, whether it succeeded or failed."""
    try:
        yield
    finally:
        if client is not None:
            record_api_stats(engine, run_id, service, client)


def record_failure(dag_id: str, dag_run_id: str) -> None:
    """A task of this DAG run failed: close its sync run as failed (unless already closed) and fail this task."""
    s = settings()
    message = "a task of the DAG run failed; see the failed task's log, fix the cause and clear it to resume"
    run_id = runs.fail_run(state_engine(s), dag_id, dag_run_id, message)
    if run_id is not None:
        log.error("sync run %s closed as failed: %s", run_id, message)
    raise AirflowFailException(f"user sync {dag_run_id} failed: {message}")


@fail_fast_on_config_errors
def run_report(run: dict[str, Any]) -> dict[str, Any]:
    """Close the run: success when every batch was delivered or dead-lettered; log and return the summary."""
    s = settings()
    engine = state_engine(s)
    run_id = run["sync_run_id"]
    if guard.clearance(engine, run_id) is guard.Clearance.REJECTED:  # closed as aborted by the decision
        report = runs.run_report(engine, run_id)
        assert report is not None
        runs.clear_staging(engine, run_id)
        log.info("user sync report:\n%s", runs.format_report(report))
        return report
    if not run["dry_run"]:
        settled = load.settle(engine, run_id)
        if settled:
            log.info("settled %s changes whose batches were all delivered", settled)
    summary = load.load_summary(engine, run_id)
    runs.record_counts(engine, run_id, summary)
    if run["dry_run"]:
        report = runs.finish_run(engine, run_id, SyncRunStatus.DRY_RUN)
    else:
        open_batches = sum(n for status, n in summary["batches"].items() if status not in ("delivered", "dead"))
        dead = runs.dead_letter_notice(summary)
        error = f"{open_batches} batch(es) not delivered" if open_batches else dead
        report = runs.finish_run(engine, run_id, SyncRunStatus.FAILED if error else SyncRunStatus.SUCCESS, error)
    if report["status"] != SyncRunStatus.FAILED.value:
        runs.clear_staging(engine, run_id)  # the staged copy is no longer needed once the run is closed
    undelivered = runs.undelivered_notice(report["counts"])
    if undelivered:
        report["undelivered"] = undelivered
    log.info("user sync report:\n%s", runs.format_report(report))
    if report["status"] == SyncRunStatus.FAILED.value:
        raise AirflowFailException(f"sync run {run_id}: {report['error']}; counts {report['counts']}")
    return report
