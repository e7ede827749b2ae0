"""The change guard's decision: a person approves or rejects a tripped guard in Airflow's Required Actions.

The plan records the guard (:func:`optimove_netmera.sync.plan.guard_check`); when it tripped, the
``approve_changes`` task (:class:`ChangeGuardApproval`, Airflow's human-in-the-loop ``ApprovalOperator``) asks
before any profile is written, showing the counts and the attribute names that would change:

- **Approve**: the load sends the plan as it stands.
- **Reject**: the run ends cleanly (the sync run is ``aborted``, the DAG run green): nothing is sent, the snapshot
  and the window are not advanced, so the next run plans these changes again (and asks again if they still trip).
- **No answer** within ``sync.guard_timeout_hours``: the safe choice, Reject, is taken and the task fails so that
  somebody hears of it (the run's failure notification).

The load checks the recorded decision itself (:func:`clearance`), so clearing load tasks of a rejected run, or
marking the approval task success by hand, never sends a plan nobody approved.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from optimove_netmera.runtime import state_engine
from optimove_netmera.runtime import task_settings as settings
from optimove_netmera.store.models import SyncRun, SyncRunStatus
from optimove_netmera.sync import runs

log = logging.getLogger(__name__)

APPROVE = "Approve"
REJECT = "Reject"


class Clearance(StrEnum):
    """What the load may do with a run's plan."""

    SEND = "send"  # the guard did not trip, or a person approved
    REJECTED = "rejected"  # a person rejected (or nobody answered in time): send nothing
    UNDECIDED = "undecided"  # the guard tripped and no decision is recorded


def _counts(engine: Engine, run_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(SyncRun.counts).where(SyncRun.id == run_id)).scalar_one() or {})


def guard_of(engine: Engine, run_id: int) -> dict[str, Any]:
    """The run's recorded guard (empty before the plan) and the decision taken on it, if any."""
    counts = _counts(engine, run_id)
    return {**counts.get("plan", {}).get("guard", {}), "decision": counts.get("guard_decision")}


def clearance(engine: Engine, run_id: int) -> Clearance:
    """May the load send this run's plan? Only when the guard did not trip or a person approved it."""
    guard = guard_of(engine, run_id)
    decision = guard["decision"] or {}
    if decision.get("choice") == APPROVE:
        return Clearance.SEND
    if decision.get("choice") == REJECT:
        return Clearance.REJECTED
    return Clearance.UNDECIDED if guard.get("tripped") else Clearance.SEND


def record_decision(
    engine: Engine, run_id: int, choice: str, by: str | None, timed_out: bool, timeout_hours: float
) -> str | None:
    """Record a decision; a rejection closes the sync run as ``aborted``. Returns the run's error, if closed."""
    decision = {
        "choice": choice,
        "by": by,
        "timed_out": timed_out,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    runs.record_counts(engine, run_id, {"guard_decision": decision})
    if choice == APPROVE:
        return None
    guard = guard_of(engine, run_id)
    who = (
        f"nobody decided within {timeout_hours:g} h (sync.guard_timeout_hours), so the safe choice was taken"
        if timed_out
        else f"{by or 'a user'} rejected them in Required Actions"
    )
    error = (
        f"the change guard tripped ({_ratio_line(guard)}) and {who}: nothing was sent; the next run plans these "
        "changes again"
    )
    runs.finish_run(engine, run_id, SyncRunStatus.ABORTED, error)
    return error


def _ratio_line(guard: Mapping[str, Any]) -> str:
    return (
        f"{guard.get('changed', 0)} of {guard.get('known', 0)} known customers "
        f"({float(guard.get('ratio', 0)):.1%}) would change, more than max_change_ratio="
        f"{float(guard.get('max_change_ratio', 0)):.1%}"
    )


def approval_text(engine: Engine, run_id: int) -> str:
    """The question's body (Markdown): the counts and the names of the attributes that would change."""
    counts = _counts(engine, run_id)
    plan = counts.get("plan", {})
    guard = plan.get("guard", {})
    lines = [
        f"**{_ratio_line(guard)}.** Nothing has been sent yet.",
        "",
        f"- customers to write: {plan.get('changed', 0)} ({plan.get('new', 0)} new to the snapshot), "
        f"{plan.get('set_batches', 0)} set and {plan.get('unset_batches', 0)} unset batches",
        f"- not sent (unknown to Netmera): {plan.get('not_found', 0)}",
        "",
        "Attributes that would change (Netmera name: customers):",
        "",
    ]
    lines += [f"- `{name}`: {n}" for name, n in sorted(plan.get("attributes_changed", {}).items())]
    lines += [
        "",
        "Expected after a new attribute mapping or a bulk update in Optimove: **Approve** sends the plan. "
        "Otherwise **Reject**: nothing is sent and the next run plans the changes again.",
    ]
    return "\n".join(lines)


class ChangeGuardApproval(HITLOperator):
    """Ask a person to approve a tripped change guard before the load; returns at once when it did not trip.

    ``run`` is the ``open_run`` task's output (templated, so an XComArg works). Options: Approve / Reject; the
    default on timeout is Reject, after which the task fails (nothing sent, a notification goes out).
    """

    template_fields = (*HITLOperator.template_fields, "run")

    def __init__(self, *, run: Any, timeout_hours: float, **kwargs: Any) -> None:
        super().__init__(
            subject="Optimove user sync: approve the changes?",
            options=[APPROVE, REJECT],
            defaults=[REJECT],
            multiple=False,
            response_timeout=timedelta(hours=timeout_hours),
            **kwargs,
        )
        self.run = run
        self.timeout_hours = timeout_hours

    def execute(self, context: Any) -> Any:
        engine = state_engine(settings())
        run_id = self.run["sync_run_id"]
        guard = guard_of(engine, run_id)
        if self.run.get("dry_run") or not guard.get("tripped"):
            log.info("change guard: %s; no decision needed", _ratio_line(guard) if guard else "no plan")
            return {"decision": "not needed", "tripped": bool(guard.get("tripped"))}
        if guard["decision"]:  # decided already (this task was cleared): never ask twice
            log.info("change guard: decided already: %s", guard["decision"])
            return {"decision": guard["decision"]["choice"]}
        self.subject = f"Optimove user sync {context['dag_run'].run_id}: approve the changes?"
        self.body = approval_text(engine, run_id)
        log.warning("change guard tripped (%s): waiting for a decision in Required Actions", _ratio_line(guard))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        choice = result["chosen_options"][0]
        user = result.get("responded_by_user") or {}
        by = user.get("name") or user.get("id") if isinstance(user, Mapping) else str(user)
        timed_out = bool(event.get("timedout"))
        engine = state_engine(settings())
        error = record_decision(engine, self.run["sync_run_id"], choice, by, timed_out, self.timeout_hours)
        if timed_out:
            raise AirflowFailException(error)
        log.info("change guard: %s by %s%s", choice, by, f" ({error})" if error else "")
        return {"decision": choice, "by": by}
