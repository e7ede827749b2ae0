"""Failure notifications: one message per failed DAG run, through any Airflow notifier the user configures.

Settings (``notifications`` in the settings file)::

    notifications:
      notifier: airflow.providers.smtp.notifications.smtp.SmtpNotifier   # any BaseNotifier subclass
      kwargs:                                                              # its arguments
        to: ops@example.com
        subject: "{{ optimove_netmera_subject }}"
        html_content: "<pre>{{ optimove_netmera_message }}</pre>"

The notifier's templated fields are rendered with the run's context plus ``optimove_netmera_subject`` (one line)
and ``optimove_netmera_message`` (what failed and the next step). It is a DAG-level ``on_failure_callback``, so a
run sends at most one message however many of its tasks failed. Messages carry ids and counts, never customer data.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from optimove_netmera.settings import Settings, SettingsError

__all__ = ["NEXT_STEPS", "WATCHER_TASKS", "failure_callbacks", "failure_message"]

log = logging.getLogger(__name__)

NEXT_STEPS: dict[str, str] = {
    "optimove_user_sync": (
        "If approve_changes failed, nobody answered the change guard's question in time: nothing was sent; check "
        "the changes and trigger the run again (with a higher max_change_ratio to send them without asking). "
        "Otherwise open the failed task's log: a configuration fault names the connection or setting to fix (it "
        "is not retried); an outage was retried before failing. Then clear the failed task: delivered batches are"
        " skipped, nobody is sent twice or lost. If the verify task failed, define the attribute it names in "
        "Netmera (with that type), then clear. If the report failed over dead letters, fix their reason and "
        "Replay them on the Optimove Netmera page."
    ),
    "optimove_campaign_send": (
        "If decide_unknown failed, nobody answered whether to re-send the recipients with an UNKNOWN outcome: either "
        "trigger optimove_campaign_send again with resend_unknown=true (they may get the push twice) or mark "
        "decide_unknown success to accept. "
        "Otherwise fix what the failed task's log names and clear it: the send ledger never sends anyone twice."
    ),
    "optimove_realtime_send": (
        "Fix what the failed task's log names; the continuous schedule starts the next run, and queued events wait. "
        "Events whose outcome is unknown are re-sent only with resend_unknown=true."
    ),
    "optimove_campaign_reconcile": (
        "Fix what the failed task's log names, then clear the task (reconciling is idempotent)."
    ),
}


WATCHER_TASKS = frozenset({"record_failure"})
"""Tasks that fail only because another task of the run failed (the user sync's failure record)."""


def failure_message(context: dict[str, Any]) -> tuple[str, str]:
    """``(subject, message)`` for a failed run: which run, which task, the reason, and the next step."""
    dag_id = getattr(context.get("dag"), "dag_id", None) or str(context.get("dag_id", "?"))
    run_id = str(context.get("run_id") or getattr(context.get("dag_run"), "run_id", "?"))
    ti = context.get("ti") or context.get("task_instance")
    task = (
        f"{ti.task_id}" + (f"[{ti.map_index}]" if getattr(ti, "map_index", -1) not in (-1, None) else "") if ti else "?"
    )
    tries = getattr(ti, "try_number", None)
    reason = str(context.get("reason") or "task failed")
    if task in WATCHER_TASKS:  # it fails after any other task failed: point at the grid, not at it
        subject = f"[optimove-netmera] {dag_id} run {run_id} failed"
        failed_line = f"A task failed; {task} recorded the run as failed. The run's grid shows which one."
    else:
        subject = f"[optimove-netmera] {dag_id} run {run_id} failed at {task}"
        failed_line = f"Failed task: {task}" + (f" (try {tries})" if tries else "") + "."
    lines = [
        f"DAG {dag_id}, run {run_id}: FAILED ({reason}).",
        failed_line,
        f"Next step: {NEXT_STEPS.get(dag_id, 'read the failed task log, fix the cause, clear the task.')}",
    ]
    log_url = getattr(ti, "log_url", None) if ti else None
    if log_url:
        lines.append(f"Log: {log_url}")
    return subject, "\n".join(lines)


def _notifier_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SettingsError(
            f"notifications.notifier: cannot import {path!r} ({exc}); give a notifier's dotted path"
        ) from None
    from airflow.sdk import BaseNotifier

    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise SettingsError(f"notifications.notifier: {path!r} is not an Airflow notifier (a BaseNotifier subclass)")
    return cls


def failure_callbacks(settings: Settings) -> list[Callable[[dict[str, Any]], None]] | None:
    """The DAG-level ``on_failure_callback`` list; None when no notifier is configured (no callback at all).

    The notifier class is imported and built at DAG parse time, so a wrong path or argument fails the DAG's
    import naming the setting, not the first failure.
    """
    config = settings.notifications
    if not config.notifier:
        return None
    cls = _notifier_class(config.notifier)
    try:
        notifier = cls(**config.kwargs)
    except TypeError as exc:
        raise SettingsError(f"notifications.kwargs do not fit {config.notifier}: {exc}") from None

    del notifier  # built once above to fail at parse time; each failure gets a fresh one (rendering mutates it)

    def notify_failure(context: dict[str, Any]) -> None:
        subject, message = failure_message(context)
        context = {**context, "optimove_netmera_subject": subject, "optimove_netmera_message": message}
        try:
            fresh = cls(**config.kwargs)
            # Airflow's own env needs the parsed DAG object, which dag.test() does not hand to callbacks.
            fresh.render_template_fields(context, jinja_env=SandboxedEnvironment(autoescape=False))
            fresh.notify(context)
        except Exception:  # a broken notifier must not hide the failure it reports
            log.exception("the failure notification through %s could not be sent", config.notifier)

    notify_failure.__name__ = f"notify_failure_via_{cls.__name__}"
    return [notify_failure]
