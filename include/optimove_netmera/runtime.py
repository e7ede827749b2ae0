"""What every task of this integration resolves first: runtime settings, the state database, DAG defaults."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from optimove_netmera.http import ClientError, is_payload_rejection
from optimove_netmera.settings import Settings, SettingsError, get_runtime_settings, get_settings
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


PARAM_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
"""The JSON Schema draft every DAG param of this project declares (see :func:`param`)."""

PARAM_KEYWORDS = frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "enum"})
"""The schema keywords the params use: each means the same in draft 7 as in draft 2020-12 (``format`` is checked by
jsonschema's ``FormatChecker`` in both)."""


def param(*default: Any, **schema: Any) -> Param:
    """A DAG ``Param`` (same arguments) whose schema declares JSON Schema draft 7 (:data:`PARAM_SCHEMA_DRAFT`).

    Airflow validates every param of a run when it creates the run, in the API server for each campaign event, and
    jsonschema first checks the schema against its draft's metaschema every time. Without a ``$schema`` that is
    draft 2020-12, whose metaschema costs ~3.5 times as much to check; for the campaign send's 8 params, draft 7
    makes creating a run ~2 ms (about a sixth) cheaper. Only keywords in :data:`PARAM_KEYWORDS` (and ``format``)
    may be used: draft 7 ignores the later drafts' new keywords, which would then validate nothing.
    """
    return Param(*default, **{"$schema": PARAM_SCHEMA_DRAFT}, **schema)


P = ParamSpec("P")
R = TypeVar("R")


def config_fault_message(exc: ClientError) -> str:
    """What a 401/403/404-like answer means for an operator: which connection to fix, and that it is not retried."""
    try:
        conn_id = getattr(get_settings().connections, exc.service, None) or f"{exc.service}_default"
    except SettingsError:
        conn_id = f"{exc.service}_default"
    return (
        f"{exc}. This is a configuration fault, not an outage, so the task is not retried: check the Airflow "
        f"connection '{conn_id}' (its key or credentials, and its host), then clear this task to resume"
    )


def fail_fast_on_config_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Fail the task at once, without Airflow retries, when an API refuses our credentials or address.

    A 4xx other than 429 that is not a refusal of the data itself (401, 403, 404: a wrong key, app or base URL)
    fails the same way on every retry; outages (5xx, 429, timeouts) still raise as they are and are retried.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            if is_payload_rejection(exc):
                raise
            raise AirflowFailException(config_fault_message(exc)) from exc

    return wrapper
