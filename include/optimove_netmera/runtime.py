"""What every task of this integration resolves first: runtime settings, the state database, DAG defaults."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from optimove_netmera.settings import Settings, SettingsError, get_runtime_settings
from optimove_netmera.store.engine import get_engine
from optimove_netmera.topology import SharedStateError


def task_settings() -> Settings:
    """Runtime settings; a bad configuration fails the task without retries, naming the setting.

    That includes a state database that is not shared while Airflow runs a distributed executor
    (:class:`~optimove_netmera.topology.SharedStateError`): no task works on a file only its own host sees.
    """
    try:
        settings = get_runtime_settings()
        settings.resolved_state_db_url()
    except (SettingsError, SharedStateError) as exc:
        raise AirflowFailException(str(exc)) from None
    return settings


def state_engine(s: Settings) -> Engine:
    """The state database engine (see :meth:`Settings.resolved_state_db_url`)."""
    return get_engine(s.resolved_state_db_url())


def default_args(s: Settings, **overrides: Any) -> dict[str, Any]:
    """The DAGs' default task arguments: owner, and retries with exponential backoff from ``sync`` settings."""
    return {
        "owner": "data-engineering",
        "retries": s.sync.retries,
        "retry_delay": timedelta(seconds=s.sync.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        **overrides,
    }
