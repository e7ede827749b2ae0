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
from collections.abc import Sequence
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

    def trigger_many(self, dag_id: str, runs: Sequence[tuple[str, dict[str, Any], str | None]]) -> dict[str, bool]:
        """Create several manual runs of ``dag_id`` (``(run_id, conf, note)``, no logical date) in one transaction.

        What :meth:`trigger` does for each, with the costs shared: the DAG's row and its serialized DAG are read
        (and deserialized) once, existing run ids are looked up in one query, the runs are created with the
        serialized DAG's ``create_dagrun`` (what ``trigger_dag`` calls, with the same arguments) and committed
        once. Returns run id -> created (False: it existed). All or nothing: if any run fails (Airflow refuses
        it, the DAG is missing, a concurrent creator committed the same run id first) nothing is committed and
        the error propagates; the caller then creates each run with :meth:`trigger`, which sorts out which
        failed and why.
        """
        from airflow._shared.timezones import timezone
        from airflow.api.common.trigger_dag import _normalize_conf
        from airflow.exceptions import DagNotFound
        from airflow.models import DagModel, DagRun
        from airflow.models.dagbag import DBDagBag
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType

        result: dict[str, bool] = {}
        if not runs:
            return result
        with self._serialise(), create_session() as session:
            dag_model = DagModel.get_current(dag_id, session=session)
            if dag_model is None:
                raise DagNotFound(f"Dag id {dag_id} not found in DagModel")
            allowed = dag_model.allowed_run_types
            if allowed is not None and DagRunType.MANUAL not in allowed:
                raise ValueError(f"Dag with dag_id: '{dag_id}' does not allow {DagRunType.MANUAL} runs")
            dag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
            if dag is None:
                raise DagNotFound(f"Dag id {dag_id} not found")
            run_ids = [run_id for run_id, _, _ in runs]
            existing = set(
                session.scalars(sa.select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.run_id.in_(run_ids)))
            )
            partition_date = dag.timetable.resolve_partition_date(None)
            for run_id, conf, note in runs:
                if run_id in existing:
                    result.setdefault(run_id, False)
                    continue
                dag.create_dagrun(
                    run_id=run_id,
                    logical_date=None,
                    data_interval=None,
                    run_after=timezone.coerce_datetime(timezone.utcnow()),
                    conf=_normalize_conf(conf),
                    run_type=DagRunType.MANUAL,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=self.triggering_user,
                    note=note,
                    state=DagRunState.QUEUED,
                    partition_key=None,
                    partition_date=partition_date,
                    session=session,
                )
                existing.add(run_id)
                result[run_id] = True
        return result

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
