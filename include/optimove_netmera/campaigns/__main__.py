"""``python -m optimove_netmera.campaigns``: operator commands for campaign events.

``held``        list the held events (stored, not acted on: their channel or template is not configured) and why;
``redispatch``  after fixing the settings, release the held events they now cover and dispatch them
                (``--event-id N`` for some only). Runs where Airflow's metadata database is reachable, like
                ``airflow dags trigger``; the reconcile DAG's ``redispatch_held`` param does the same from a task.
``setup``       register the event listeners with Optimove and offer the mapped templates on every channel
                (``--remove-stale``: also unregister listeners of our events that point elsewhere; ``--dry-run``:
                only say what would change). Needs the ``optimove_default`` Connection, like the DAG
                ``optimove_setup`` that does the same.
"""

from __future__ import annotations

import argparse
import json
import sys

import sqlalchemy as sa

from optimove_netmera.campaigns.events import held_event_ids, redispatch_held
from optimove_netmera.settings import SettingsError, get_settings
from optimove_netmera.store import Event, StateDatabaseError, get_engine


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m optimove_netmera.campaigns")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("held", help="list held events and why they are held")
    r = sub.add_parser("redispatch", help="release and dispatch held events the settings now cover")
    r.add_argument("--event-id", type=int, action="append", help="only this event (repeatable)")
    su = sub.add_parser("setup", help="register the event listeners and offer the templates to Optimove")
    su.add_argument("--remove-stale", action="store_true", help="unregister our events' listeners pointing elsewhere")
    su.add_argument("--dry-run", action="store_true", help="change nothing, say what would change")
    a = p.parse_args(argv)
    if a.command == "setup":
        return _setup(a.remove_stale, a.dry_run)
    try:
        settings = get_settings()
        engine = get_engine(settings.resolved_state_db_url())
        if a.command == "held":
            table = Event.__table__
            ids = held_event_ids(engine)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(table.c.id, table.c.event_type_id, table.c.campaign_id, table.c.channel_id, table.c.note)
                    .where(table.c.id.in_(ids))
                    .order_by(table.c.id)
                ).all()
            for row in rows:
                print(f"event {row.id}: type {row.event_type_id}, campaign {row.campaign_id}, "
                      f"channel {row.channel_id}: {row.note}")  # fmt: skip
            print(f"{len(rows)} held event(s)")
            return 0
        report = redispatch_held(engine, settings, event_ids=a.event_id, by="python -m optimove_netmera.campaigns")
    except (SettingsError, StateDatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()))  # one line, the last: logs may precede it
    return 1 if report.errors else 0


def _setup(remove_stale: bool, dry_run: bool) -> int:
    from optimove_netmera.campaigns.setup import run_setup
    from optimove_netmera.hooks import OptimoveHook
    from optimove_netmera.http import ApiError
    from optimove_netmera.store import migrate

    try:
        settings = get_settings()
        url = settings.resolved_state_db_url()
        migrate(url)
        client = OptimoveHook(settings.connections.optimove).get_conn()
        summary = run_setup(client, get_engine(url), settings, remove_stale=remove_stale, dry_run=dry_run)
    except (SettingsError, StateDatabaseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"error: Optimove: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))  # one line, the last: logs may precede it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
