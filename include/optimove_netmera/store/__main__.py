"""Command line for the state database schema.

    python -m optimove_netmera.store upgrade [REV] [--sql] [--url URL]
    python -m optimove_netmera.store downgrade REV [--url URL]      # REV may be "base"
    python -m optimove_netmera.store current [--url URL]
    python -m optimove_netmera.store history [--url URL]
    python -m optimove_netmera.store check [--url URL]              # exit 1 unless at head
    python -m optimove_netmera.store revision -m MESSAGE [--autogenerate] [--url URL]

``--url`` defaults to ``$OPTIMOVE_NETMERA_STATE_DB_URL``, else the SQLite file under ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from optimove_netmera.store import engine as store_engine
from optimove_netmera.store.engine import (
    StateDatabaseError,
    check_database,
    current_revision,
    default_state_db_url,
    downgrade,
    head_revision,
    migrate,
    redact_url,
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help=f"state database SQLAlchemy URL (default: ${store_engine.ENV_URL}, else SQLite under AIRFLOW_HOME)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m optimove_netmera.store", description="Manage the optimove-netmera state database."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upgrade = commands.add_parser("upgrade", parents=[common], help="migrate up (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument("--sql", action="store_true", help="print the SQL instead of running it")

    down = commands.add_parser("downgrade", parents=[common], help="migrate down to REV ('base' = empty)")
    down.add_argument("revision")

    commands.add_parser("current", parents=[common], help="show the database's revision")
    commands.add_parser("history", parents=[common], help="list the migrations shipped with the package")
    commands.add_parser("check", parents=[common], help="exit 1 unless reachable and at head")

    revision = commands.add_parser(
        "revision", parents=[common], help="create a new migration file (for developers; review it)"
    )
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument(
        "--autogenerate", action="store_true", help="draft operations from the models vs. the database"
    )
    return parser


def _describe(revision: str | None) -> str:
    if revision is None:
        return "none (not migrated)"
    return f"{revision} (head)" if revision == head_revision() else revision


def _next_revision_id() -> str:
    from alembic.script import ScriptDirectory

    numbers = [
        int(script.revision)
        for script in ScriptDirectory.from_config(store_engine.alembic_config()).walk_revisions()
        if re.fullmatch(r"\d+", script.revision)
    ]
    return f"{max(numbers, default=0) + 1:04d}"


def _history(url: str) -> None:
    from alembic.script import ScriptDirectory

    try:
        current = current_revision(url)
    except StateDatabaseError:
        current = None
    head = head_revision()
    for script in ScriptDirectory.from_config(store_engine.alembic_config()).walk_revisions():
        marks = [m for m, on in (("head", script.revision == head), ("current", script.revision == current)) if on]
        suffix = f" ({', '.join(marks)})" if marks else ""
        down = script.down_revision or "<base>"
        print(f"{down} -> {script.revision}{suffix}: {script.doc}")


def _revision(url: str, message: str, autogenerate: bool) -> None:
    from alembic import command

    config = store_engine.alembic_config(url)
    if autogenerate:
        with store_engine.get_engine(url).connect() as connection:
            config.attributes["connection"] = connection
            scripts = command.revision(config, message, autogenerate=True, rev_id=_next_revision_id())
    else:
        scripts = command.revision(config, message, rev_id=_next_revision_id())
    for script in scripts if isinstance(scripts, list) else [scripts]:
        if script is not None:
            print(f"created {script.path}: review it before committing")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    migration_log = logging.getLogger("alembic.runtime.migration")
    migration_log.setLevel(logging.INFO)
    migration_log.addFilter(lambda record: record.getMessage().startswith("Running "))  # the steps only
    url = args.url or default_state_db_url()
    shown = redact_url(url)
    try:
        if args.command == "upgrade":
            if args.sql:
                from alembic import command

                command.upgrade(store_engine.alembic_config(url), args.revision, sql=True)
            else:
                reached = migrate(url, args.revision)
                print(f"{shown}: at {_describe(reached)}")
        elif args.command == "downgrade":
            reached = downgrade(url, args.revision)
            print(f"{shown}: at {_describe(reached)}")
        elif args.command == "current":
            print(f"{shown}: {_describe(current_revision(url))}")
        elif args.command == "history":
            _history(url)
        elif args.command == "check":
            print(f"{shown}: ok, at {_describe(check_database(url))}")
        elif args.command == "revision":
            _revision(url, args.message, args.autogenerate)
    except StateDatabaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # alembic CommandError (unknown revision...), driver errors
        message = str(err).replace(str(url), shown)
        print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
