"""Deferrable sensors."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from optimove_netmera.triggers import OptimoveDataReadyTrigger


class OptimoveDataReadySensor(BaseSensorOperator):
    """Wait until Optimove's daily data update covers ``target_date`` (default: the day before the run's date).

    Checks once in the worker; if the data is not there yet it defers to :class:`OptimoveDataReadyTrigger`, which
    frees the worker slot while it polls (``deferrable=False``: a classic poking sensor). Returns the data date
    (``YYYY-MM-DD``) Optimove reports.
    """

    template_fields: Sequence[str] = ("target_date",)

    def __init__(
        self,
        *,
        target_date: str | None = None,
        optimove_conn_id: str = "optimove_default",
        timeout: float = 12 * 3600,
        poke_interval: float = 300,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, poke_interval=poke_interval, **kwargs)
        self.target_date = target_date
        self.optimove_conn_id = optimove_conn_id
        self.deferrable = deferrable

    def _target(self, context: Context) -> dt.date:
        if self.target_date:
            return dt.date.fromisoformat(str(self.target_date)[:10])
        run = context["dag_run"]
        moment = run.logical_date or run.run_after
        return (moment - dt.timedelta(days=1)).date()

    def _data_date(self) -> dt.date:
        from optimove_netmera.hooks import OptimoveHook

        return OptimoveHook(self.optimove_conn_id).get_conn().get_last_data_update()

    def poke(self, context: Context) -> PokeReturnValue:
        """One check (non-deferrable mode): done when the data date covers the target."""
        last = self._data_date()
        return PokeReturnValue(is_done=last >= self._target(context), xcom_value=last.isoformat())

    def execute(self, context: Context) -> str:
        """Return the data date now if it is ready; otherwise defer (or poke, when not deferrable)."""
        if not self.deferrable:
            return super().execute(context)
        target = self._target(context)
        last = self._data_date()
        if last >= target:
            self.log.info("Optimove data date %s covers %s", last, target)
            return last.isoformat()
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(self.timeout))
        self.log.info("Optimove data date is %s; deferring until it covers %s (deadline %s)", last, target, deadline)
        self.defer(
            trigger=OptimoveDataReadyTrigger(
                conn_id=self.optimove_conn_id,
                target_date=target.isoformat(),
                deadline=deadline.isoformat(),
                poke_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
        )
        raise AssertionError("unreachable: defer() raises")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume after the trigger fired."""
        status = event.get("status")
        if status == "ready":
            return str(event["data_date"])
        if status == "timeout":
            raise AirflowFailException(
                f"gave up waiting for Optimove's daily data update to cover {self._target(context)} after "
                f"{float(self.timeout) / 3600:.1f} h; general/GetLastDataUpdate still says {event.get('data_date')}. "
                "Check Optimove's data load, then clear this task to wait again."
            )
        raise AirflowFailException(f"could not check Optimove's data date: {event.get('message')}")
