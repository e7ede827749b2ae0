"""Sync-run bookkeeping: open (or resume) a run, pick its window and mode, record phases and the outcome."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from optimove_netmera.store.engine import session_scope
from optimove_netmera.store.models import SyncRun, SyncRunStatus, SyncStaging
from optimove_netmera.store.queries import last_successful_sync

INITIAL_SINCE = dt.date(2000, 1, 1)


def clear_staging(engine: Engine, run_id: int) -> None:
    """Drop whatever an earlier attempt of this run staged."""
    with engine.begin() as conn:
        conn.execute(sa.delete(SyncStaging).where(SyncStaging.sync_run_id == run_id))


@dataclass(frozen=True)
class RunInfo:
    """What the later tasks need to know about a run (small, JSON-serialisable, safe for XCom)."""

    sync_run_id: int
    mode: str  # "incremental" | "initial" | "export"
    since: str  # YYYY-MM-DD, inclusive
    until: str  # YYYY-MM-DD, inclusive (the Optimove data date covered)
    dry_run: bool
    export_path: str | None
    resync: str | list[str] | None = None  # "all", CustomerIDs, or None: see :func:`parse_resync`

    def as_dict(self) -> dict[str, Any]:
        """The run as a plain dict."""
        return asdict(self)


def last_successful_window_end(engine: Engine) -> dt.date | None:
    """The data date covered by the latest successful, non-dry-run sync (None before the first)."""
    with session_scope(engine) as session:
        run = last_successful_sync(session)
        return run.window_end if run is not None else None


def _as_date(value: Any, name: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValueError(f"param {name}={value!r} is not a date: use YYYY-MM-DD") from None


def parse_resync(value: Any) -> str | list[str] | None:
    """The ``resync`` param: ``"all"``, a list of CustomerIDs (sorted, unique) or None (nothing to resync)."""
    if value is None or value == "" or value == []:
        return None
    if value == "all":
        return "all"
    if isinstance(value, list) and value and all(isinstance(v, str | int) and str(v).strip() for v in value):
        return sorted({str(v).strip() for v in value})
    raise ValueError(f'param resync={value!r}: use "all" or a list of CustomerIDs, e.g. ["C0000001", "C0000002"]')


def open_run(engine: Engine, dag_id: str, dag_run_id: str, params: Mapping[str, Any], data_date: dt.date) -> RunInfo:
    """Create the sync-run row for this DAG run, or return the existing one (a retried or cleared task)."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(SyncRun).where(SyncRun.dag_id == dag_id, SyncRun.dag_run_id == dag_run_id)).first()
        if row is not None:
            stored = row._mapping
            p = stored["params"]
            if stored["status"] == SyncRunStatus.FAILED.value:  # cleared after a failure: it is running again
                conn.execute(
                    sa.update(SyncRun)
                    .where(SyncRun.id == stored["id"])
                    .values(status=SyncRunStatus.RUNNING.value, error=None, finished_at=None)
                )
            return RunInfo(
                sync_run_id=stored["id"],
                mode=p["mode"],
                since=p["since"],
                until=p["until"],
                dry_run=bool(stored["dry_run"]),
                export_path=p.get("export_path"),
                resync=p.get("resync"),
            )
    since = _as_date(params.get("since"), "since")
    until = _as_date(params.get("until"), "until") or data_date
    export_path = params.get("export_path") or None
    resync = parse_resync(params.get("resync"))
    full_refresh = bool(params.get("full_refresh"))
    if full_refresh and not export_path:
        raise ValueError(
            "full_refresh needs export_path: a CSV or Parquet export of every customer (CustomerID + attributes)"
        )
    if export_path:
        mode = "export"
    elif since is not None:
        mode = "incremental"
    else:
        last = last_successful_window_end(engine)
        mode = "initial" if last is None else "incremental"
        # The window starts on the last covered date; extract.change_windows queries it so that a change
        # recorded late on that date is still found and a change reverted after it is not missed.
        since = INITIAL_SINCE if last is None else last
    since = since or INITIAL_SINCE
    if since > until:
        raise ValueError(f"the window is empty: since={since} is after until={until}")
    stored_params = {
        "mode": mode,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "export_path": export_path,
        "max_change_ratio": params.get("max_change_ratio"),
        "resync": resync,
    }
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(SyncRun)
            .values(
                dag_id=dag_id,
                dag_run_id=dag_run_id,
                status=SyncRunStatus.RUNNING.value,
                full_refresh=mode == "export",
                dry_run=bool(params.get("dry_run")),
                window_start=since,
                window_end=until,
                params=stored_params,
            )
            .returning(SyncRun.id)
        ).scalar_one()
    return RunInfo(
        run_id, mode, stored_params["since"], stored_params["until"], bool(params.get("dry_run")), export_path, resync
    )


def _merge_json(engine: Engine, run_id: int, column: str, values: Mapping[str, Any], add: bool) -> None:
    with engine.begin() as conn:
        current = conn.execute(sa.select(getattr(SyncRun, column)).where(SyncRun.id == run_id)).scalar_one()
        merged = dict(current or {})
        for key, value in values.items():
            if add and isinstance(value, int | float) and isinstance(merged.get(key), int | float):
                merged[key] = merged[key] + value
            else:
                merged[key] = value
        conn.execute(sa.update(SyncRun).where(SyncRun.id == run_id).values({column: merged}))


def record_counts(engine: Engine, run_id: int, counts: Mapping[str, Any], add: bool = False) -> None:
    """Merge ``counts`` into the run's counts (``add``: numbers are added, e.g. API calls over retries)."""
    _merge_json(engine, run_id, "counts", counts, add)


@contextmanager
def phase(engine: Engine, run_id: int, name: str) -> Iterator[None]:
    """Time a phase and add its seconds to the run's ``phase_seconds`` (retries add up)."""
    started = time.monotonic()
    try:
        yield
    finally:
        _merge_json(engine, run_id, "phase_seconds", {name: round(time.monotonic() - started, 3)}, add=True)


def finish_run(engine: Engine, run_id: int, status: SyncRunStatus, error: str | None = None) -> dict[str, Any]:
    """Close the run with ``status``; returns its report (see :func:`run_report`)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(SyncRun)
            .where(SyncRun.id == run_id)
            .values(status=status.value, error=error, finished_at=dt.datetime.now(dt.UTC))
        )
    report = run_report(engine, run_id)
    assert report is not None
    return report


def fail_run(engine: Engine, dag_id: str, dag_run_id: str, error: str) -> int | None:
    """Close this DAG run's sync run as failed if it is still running; returns its id (None: no such run).

    A run already closed (aborted by the guard, failed by the report) keeps its status and error.
    """
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.select(SyncRun.id).where(SyncRun.dag_id == dag_id, SyncRun.dag_run_id == dag_run_id)
        ).scalar()
        if run_id is None:
            return None
        conn.execute(
            sa.update(SyncRun)
            .where(SyncRun.id == run_id, SyncRun.status == SyncRunStatus.RUNNING.value)
            .values(status=SyncRunStatus.FAILED.value, error=error, finished_at=dt.datetime.now(dt.UTC))
        )
    return run_id


def run_report(engine: Engine, run_id: int | None = None) -> dict[str, Any] | None:
    """A run's window, mode, status, counts and phase seconds (the latest run when ``run_id`` is None)."""
    q = sa.select(SyncRun)
    q = q.where(SyncRun.id == run_id) if run_id is not None else q.order_by(SyncRun.id.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        return None
    m = row._mapping
    return {
        "sync_run_id": m["id"],
        "status": m["status"],
        "window": [str(m["window_start"]), str(m["window_end"])],
        "mode": (m["params"] or {}).get("mode"),
        "dry_run": bool(m["dry_run"]),
        "counts": m["counts"] or {},
        "phase_seconds": m["phase_seconds"] or {},
        "error": m["error"],
    }


def undelivered_notice(counts: Mapping[str, Any]) -> str | None:
    """The plain statement for customers this run carried because Netmera does not know them (None: none)."""
    n = (counts.get("changes") or {}).get("not_found", 0)
    if not n:
        return None
    return f"{n} customers not delivered: unknown to Netmera, carried to the next run; they are sent once they register"


def dead_letter_notice(summary: Mapping[str, Any]) -> str | None:
    """Why a run with dead letters is not green, with the count and the replay path (None: no dead letters)."""
    n = summary.get("dead_lettered", 0)
    if not n:
        return None
    return (
        f"{n} customers dead-lettered: Netmera rejected their payload (4xx); everyone else was delivered. Fix the "
        "cause named in the letters' reason, then select them under Dead letters on the Optimove Netmera page "
        "(Airflow UI) and Replay: the next user-sync run sends them again"
    )


def format_report(report: dict[str, Any]) -> str:
    """A readable, counts-only summary of a finished run."""
    c = report["counts"]
    p = c.get("plan", {})
    lines = [
        f"sync run {report['sync_run_id']}: {report['status']} (mode {report['mode']}, window "
        f"{report['window'][0]}..{report['window'][1]}{', DRY RUN' if report['dry_run'] else ''})",
        f"  fetched {c.get('fetched', 0)}  changed {p.get('changed', 0)} (new {p.get('new', 0)}, resynced "
        f"{p.get('resynced', 0)})  "
        f"unchanged {p.get('unchanged', 0)}  carried over {p.get('carried_over', 0)}  not in Netmera "
        f"{p.get('not_found', 0)} (existence unknown {p.get('existence_unknown', 0)}; carried to the next run)",
        f"  set entries {p.get('set_entries', 0)} in {p.get('set_batches', 0)} batches, "
        f"unset entries {p.get('unset_entries', 0)} in {p.get('unset_batches', 0)} batches",
        f"  changes by status {c.get('changes', {})}  batches by status {c.get('batches', {})}",
        f"  dead-lettered {c.get('dead_lettered', 0)}  dropped values {p.get('dropped', {})}",
        f"  API calls: optimove {c.get('optimove_calls', 0)} (429s {c.get('optimove_429s', 0)}), "
        f"netmera {c.get('netmera_calls', 0)} (429s {c.get('netmera_429s', 0)})",
        f"  seconds per phase {report['phase_seconds']}",
    ]
    v = c.get("verify")
    if v:
        lines.append(
            f"  verified: {v.get('profiles_read', 0)} profiles read back "
            f"({'first run of this mapping' if v.get('first_run') else 'sample'}), "
            f"attributes checked {v.get('checked', {})}, not kept by Netmera {v.get('not_kept', {})}"
        )
    if report["dry_run"]:
        lines.append(f"  attributes that would change: {p.get('attributes_changed', {})}")
    else:
        lines += [f"  {notice}" for notice in (undelivered_notice(c),) if notice]
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    return "\n".join(lines)
