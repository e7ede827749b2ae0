"""Answering a human-in-the-loop question of a live deployment through the REST API, as Required Actions does.

Airflow 3.3.2 can lose an answer given within seconds of the question: the worker that asked reports its exit
after the answer has already re-queued the task, the scheduler takes that late report for a task killed
externally and retries it, and the retry asks again (nothing runs in between; the run waits). A person answers
again; so does :func:`answer_until_finished`, and it says how many answers it took.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from waiting import wait_for

SETTLE_SECONDS = 10.0  # how long a question waits here before it is answered (see answer_until_finished)


class Deployment(Protocol):
    def api_json(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]: ...


def waiting_question(live: Deployment, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
    """``task_id``'s unanswered question in ``run_id`` while its task waits for it (None otherwise)."""
    details = live.api_json(
        "GET",
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails",
        params={"task_id": task_id, "response_received": "false"},
    )["hitl_details"]
    return next((d for d in details if d["task_instance"]["state"] == "awaiting_input"), None)


def answer_until_finished(
    live: Deployment,
    dag_id: str,
    run_id: str,
    task_id: str,
    choice: str,
    *,
    answered_tries: set[int] | None = None,
    timeout: float = 600,
) -> tuple[dict[str, Any], int]:
    """Answer ``choice`` to every try of ``task_id`` that asks (but those in ``answered_tries``) until the run ends,
    each one ``SETTLE_SECONDS`` after its question was first seen here.

    Returns the finished run and the number of tries answered here.
    """
    answered = set(answered_tries or ())
    here = 0
    seen: dict[int, float] = {}  # try number -> when its question was first seen here

    def step() -> dict[str, Any] | None:
        nonlocal here
        run = live.dag_run(dag_id, run_id)
        if run["state"] in ("success", "failed"):
            return run
        question = waiting_question(live, dag_id, run_id, task_id)
        if question is not None and question["task_instance"]["try_number"] not in answered:
            ti = question["task_instance"]
            # Answer once the asking worker has reported its exit (~5 s after it parked): an answer inside that
            # window is what Airflow loses, and a task with no retries left fails instead of asking again.
            if time.monotonic() - seen.setdefault(ti["try_number"], time.monotonic()) < SETTLE_SECONDS:
                return None
            live.api_json(
                "PATCH",
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{ti['map_index']}/hitlDetails",
                json={"chosen_options": [choice]},
            )
            answered.add(ti["try_number"])
            here += 1
        return None

    run = wait_for(f"{dag_id} {run_id} to finish ({task_id} answered {choice!r})", step, timeout, interval=1.0)
    return run, here
