"""Recipients with an unknown outcome: a person decides in Airflow's Required Actions.

A recipient's outcome is ``unknown`` when its request may or may not have reached Netmera (its worker died
mid-request, or a 5xx/timeout answered a send that is not idempotent). The report counts them; then the
``decide_unknown`` task (:class:`UnknownOutcomeDecision`, Airflow's human-in-the-loop ``HITLBranchOperator``) asks:

- **Re-send them** (a recipient may get the push twice): ``trigger_resend`` starts a new run of the send DAG with
  ``resend_unknown: true`` for this campaign and channel, which sends exactly these recipients once more.
- **Accept the outcome**: ``accept_unknown`` records who accepted (the campaign is done; they are not re-sent).
- **No answer** within ``campaigns.unknown_timeout_hours``: nothing is re-sent (never a duplicate without a
  person's choice), the task fails and the run's failure notification goes out; the choice can still be made by
  triggering the send DAG with ``resend_unknown: true``, or by marking ``decide_unknown`` success to accept.

When the report found no unknown outcome, the task skips both branches at once without asking.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator, HITLOperator

from optimove_netmera.campaigns.state import set_state, store_counts
from optimove_netmera.runtime import state_engine
from optimove_netmera.runtime import task_settings as settings
from optimove_netmera.store.models import CampaignState

log = logging.getLogger(__name__)

RESEND = "Re-send them"
ACCEPT = "Accept the outcome"
UNKNOWN_OUTCOME = "unknown outcome"


def question(report: Mapping[str, Any]) -> str:
    """The question's body (Markdown): counts only, never a customer."""
    cid, ch, unknown = report["campaign_id"], report["channel_id"], report["unknown"]
    sent = report.get("statuses", {}).get("sent", 0)
    lines = [
        f"**Campaign {cid}, channel {ch}: {unknown} recipient(s) have an UNKNOWN outcome**: their request may or may "
        f"not have reached Netmera. Everyone else is settled ({sent} sent).",
        "",
        f"- **{RESEND}**: a new run sends exactly these {unknown} recipients again; some may get the push twice.",
        f"- **{ACCEPT}**: they are not re-sent; the campaign is done.",
    ]
    return "\n".join(lines)


class UnknownOutcomeDecision(HITLBranchOperator):
    """Ask whether to re-send the recipients with an unknown outcome; skip the re-send when there are none.

    ``report`` is the report task's output (templated, so an XComArg works). Re-send branches to
    ``resend_task_id`` (whose conf this task pushes as the XCom ``resend_conf``); Accept records the acceptance
    here and skips it.
    """

    template_fields = (*HITLBranchOperator.template_fields, "report")

    def __init__(self, *, report: Any, timeout_hours: float, resend_task_id: str, **kwargs: Any) -> None:
        super().__init__(
            subject="Optimove campaign: re-send the recipients with an unknown outcome?",
            options=[RESEND, ACCEPT],
            defaults=None,  # no answer: nothing is re-sent and the task fails (see the module doc)
            multiple=False,
            response_timeout=timedelta(hours=timeout_hours),
            **kwargs,
        )
        self.report = report
        self.resend_task_id = resend_task_id

    def execute(self, context: Any) -> Any:
        if not self.report or self.report.get("outcome") != UNKNOWN_OUTCOME:
            log.info("no recipient has an unknown outcome: nothing to decide")
            self.do_branch(context, [])
            return {"decision": "not needed"}
        self.subject = (
            f"Optimove campaign {self.report['campaign_id']} channel {self.report['channel_id']}: re-send "
            f"{self.report['unknown']} recipient(s) with an unknown outcome?"
        )
        self.body = question(self.report)
        log.warning(
            "%s recipient(s) with an unknown outcome: waiting for a decision in Required Actions",
            self.report["unknown"],
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        answer = HITLOperator.execute_complete(self, context, event)  # validates; raises on a timeout
        choice = answer["chosen_options"][0]
        user = answer.get("responded_by_user") or {}
        by = (user.get("name") or user.get("id")) if isinstance(user, Mapping) else str(user)
        record_decision(self.report, choice, by)
        if choice == RESEND:
            context["ti"].xcom_push(key="resend_conf", value=resend_conf(self.report))
            self.do_branch(context, [self.resend_task_id])
        else:
            accept(self.report, by)
            self.do_branch(context, [])
        return {"decision": choice, "by": by}


def resend_conf(report: Mapping[str, Any]) -> dict[str, Any]:
    """The conf of the run that re-sends the unknown recipients (``resend_unknown: true``)."""
    return {
        "campaign_id": int(report["campaign_id"]),
        "channel_id": int(report["channel_id"]),
        "resend_unknown": True,
        "dry_run": False,  # unknown outcomes come from real sends; campaigns.dry_run must not turn this one off
        "source": "manual",
    }


def record_decision(report: Mapping[str, Any], choice: str, by: str | None) -> None:
    """Keep the decision with the campaign's counts (shown on the plugin page and in the report)."""
    engine = state_engine(settings())
    decision = {
        "choice": choice,
        "unknown": int(report["unknown"]),
        "by": by,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    store_counts(engine, int(report["campaign_id"]), int(report["channel_id"]), "unknown_decision", decision)
    log.info("campaign %s channel %s: %s by %s", report["campaign_id"], report["channel_id"], choice, by)


def accept(report: Mapping[str, Any], by: str | None) -> None:
    """The unknown outcomes are accepted: the campaign is done and nobody is re-sent."""
    engine = state_engine(settings())
    set_state(engine, int(report["campaign_id"]), int(report["channel_id"]), CampaignState.DONE.value)
