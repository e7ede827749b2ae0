"""DAG triggers: how a dispatched event creates DAG runs.

:class:`AirflowDagTrigger` in processes that may use the metadata database (the API server, the CLI,
tests) and :class:`TaskDagTrigger` inside a running task (through the task's Execution API channel, as
``TriggerDagRunOperator`` does). :func:`default_trigger` picks the right one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import threading
from typing import Any, Protocol

import sqlalchemy as sa

from optimove_netmera.settings import Settings, get_settings

CAMPAIGN_SEND_DAG_ID = "optimove_campaign_send"
USER_SYNC_DAG_ID = "optimove_user_sync"


class DispatchError(RuntimeError):
    """Acting on a stored event failed; the event stays ``received`` and is retried."""


class PermanentDispatchError(DispatchError):
    """The event can never be acted on as stored (a date Airflow cannot take, an invalid run): it is marked failed."""


class DagTrigger(Protocol):
    """Creates DAG runs (idempotently: an existing run id is reported, not an error)."""

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        """Create the run (state queued); True if created, False if a run with that id already existed."""
        ...

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        """Whether ``dag_id`` has a run whose logical date (else run_after) falls on ``day`` (UTC)."""
        ...


class AirflowDagTrigger:
    """Creates runs in-process in the Airflow metadata database (API server, CLI, tests; not in a task).

    Uses ``airflow.api.common.trigger_dag.trigger_dag`` (what the REST API does, run type ``manual``,
    triggered by ``rest_api``). A paused DAG still gets its run, in state ``queued``. With a SQLite
    metadata database the writes are serialised in-process to avoid "database is locked".
    """

    _lock = threading.Lock()

    def __init__(self, triggering_user: str = "optimove") -> None:
        self.triggering_user = triggering_user

    def _serialise(self) -> contextlib.AbstractContextManager[Any]:
        from airflow.settings import engine

        return self._lock if engine is not None and engine.dialect.name == "sqlite" else contextlib.nullcontext()

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound, DagRunAlreadyExists
        from airflow.utils.session import create_session
        from airflow.utils.types import DagRunTriggeredByType

        try:
            with self._serialise(), create_session() as session:
                trigger_dag(
                    dag_id,
                    run_id=run_id,
                    conf=conf,
                    logical_date=logical_date,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=self.triggering_user,
                    note=note,
                    session=session,
                )
        except DagRunAlreadyExists:
            return False
        except DagNotFound as exc:
            raise DispatchError(
                f"DAG {dag_id!r} does not exist in Airflow (not deployed, not parsed yet, or it has import errors: "
                f"check the dags folder and `airflow dags list-import-errors`): {exc}"
            ) from exc
        except (ValueError, TypeError, OverflowError) as exc:  # the run itself is invalid: retrying cannot help
            raise PermanentDispatchError(
                f"Airflow refused run {run_id} of DAG {dag_id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise DispatchError(
                f"could not create run {run_id} of DAG {dag_id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        from airflow.models import DagRun
        from airflow.utils.session import create_session

        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        stmt = (
            sa.select(sa.func.count())
            .select_from(DagRun)
            .where(
                DagRun.dag_id == dag_id,
                sa.or_(
                    sa.and_(DagRun.logical_date >= start, DagRun.logical_date < end),
                    sa.and_(DagRun.logical_date.is_(None), DagRun.run_after >= start, DagRun.run_after < end),
                ),
            )
        )
        with create_session() as session:
            return bool(session.scalar(stmt))


class TaskDagTrigger:
    """Creates runs from inside a running task, through its Execution API channel (as TriggerDagRunOperator).

    ``has_run_on`` can only ask for exact logical dates there: it checks the scheduled fire times of the
    user sync's cron (``sync.schedule`` in ``sync.timezone``) on that day.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    @staticmethod
    def _send(message: Any) -> Any:
        from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

        return SUPERVISOR_COMMS.send(message)

    def trigger(
        self,
        dag_id: str,
        run_id: str,
        conf: dict[str, Any],
        *,
        logical_date: dt.datetime | None = None,
        note: str | None = None,
    ) -> bool:
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun

        response = self._send(
            TriggerDagRun(dag_id=dag_id, run_id=run_id, conf=conf, logical_date=logical_date, note=note)
        )
        if isinstance(response, ErrorResponse):
            if response.error == ErrorType.DAGRUN_ALREADY_EXISTS:
                return False
            raise DispatchError(f"could not create run {run_id} of DAG {dag_id!r}: {response.error} {response.detail}")
        return True

    def fire_times(self, day: dt.date) -> list[dt.datetime]:
        """The user sync's scheduled logical dates that fall on ``day`` (UTC)."""
        from zoneinfo import ZoneInfo

        from croniter import croniter

        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        zone = ZoneInfo(self.settings.sync.timezone)
        itr = croniter(self.settings.sync.schedule, (start - dt.timedelta(seconds=1)).astimezone(zone))
        times: list[dt.datetime] = []
        while len(times) < 1440:
            moment = itr.get_next(dt.datetime).astimezone(dt.UTC)
            if moment >= end:
                break
            times.append(moment)
        return times

    def has_run_on(self, dag_id: str, day: dt.date) -> bool:
        from airflow.sdk.execution_time.comms import GetDRCount

        times = self.fire_times(day) if dag_id == USER_SYNC_DAG_ID else []
        if not times:
            return False
        response = self._send(GetDRCount(dag_id=dag_id, logical_dates=times))
        return bool(getattr(response, "count", 0))


def in_task() -> bool:
    """Whether this code runs inside an Airflow task (where the metadata database is off limits)."""
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


def default_trigger(settings: Settings | None = None) -> DagTrigger:
    """:class:`TaskDagTrigger` inside a task, else :class:`AirflowDagTrigger`."""
    return TaskDagTrigger(settings) if in_task() else AirflowDagTrigger()
