"""Where Airflow runs this integration's work, and the rule that follows: one state database for every process.

With a local executor (``airflow standalone``, LocalExecutor) every process sits on one host, so the default
state database, a SQLite file under ``AIRFLOW_HOME``, is one shared file. With any other executor (Celery,
Kubernetes, Edge, ...) tasks, the triggerer and the API server's event endpoint may run on different hosts,
each of which would silently get a SQLite file of its own: events acknowledged where no worker looks, cancels
that no sender sees. :func:`check_shared_state` refuses that configuration, naming ``OPTIMOVE_NETMERA_STATE_DB_URL``.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from optimove_netmera.store.engine import ENV_URL, StateDatabaseError, redact_url

__all__ = ["LOCAL_EXECUTORS", "SharedStateError", "check_shared_state", "configured_executors", "is_distributed"]

LOCAL_EXECUTORS = frozenset({"LocalExecutor"})
"""Executors whose tasks always run on the scheduler's host."""


class SharedStateError(StateDatabaseError):
    """The state database is a per-host SQLite file while Airflow runs tasks on other hosts."""


def configured_executors() -> list[str]:
    """Class names of Airflow's configured executors (``[core] executor``, e.g. ``["CeleryExecutor"]``)."""
    from airflow.configuration import conf

    raw = conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor"
    names = []
    for entry in raw.replace(";", ",").split(","):
        entry = entry.split("=", 1)[-1].strip()  # multi-team form: "team=Executor"
        if entry:  # "alias:module.path.ExecutorClass" -> "ExecutorClass"
            names.append(entry.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    return names or ["LocalExecutor"]


def is_distributed(executors: list[str] | None = None) -> bool:
    """Whether any configured executor may run tasks away from the scheduler's host."""
    names = configured_executors() if executors is None else executors
    return any(name not in LOCAL_EXECUTORS for name in names)


def check_shared_state(url: str, executors: list[str] | None = None) -> None:
    """Raise :class:`SharedStateError` when ``url`` is SQLite and Airflow's executor is not local."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:  # not a URL at all: the engine reports that, naming the setting
        return
    if backend != "sqlite":
        return
    names = configured_executors() if executors is None else executors
    if not is_distributed(names):
        return
    raise SharedStateError(
        f"the optimove-netmera state database is a SQLite file of this host ({redact_url(url)}), but Airflow "
        f"runs the executor {', '.join(names)}, whose processes may sit on other hosts, each with a file of its "
        f"own: events would be stored where no worker reads them. Set {ENV_URL} to one PostgreSQL database "
        f"shared by every Airflow process (API server, scheduler, triggerer, workers), e.g. "
        f"postgresql+psycopg2://user:password@db-host:5432/optimove_netmera, then run "
        f"`python -m optimove_netmera.store upgrade`.",
        url=redact_url(url),
    )
