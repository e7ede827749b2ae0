"""``python -m optimove_netmera.sync report [--run ID] [--url URL]``: print a sync run's report (latest by default)."""

from __future__ import annotations

import argparse
import os
import sys

from optimove_netmera.settings import STATE_DB_ENV
from optimove_netmera.store.engine import get_engine
from optimove_netmera.sync.runs import format_report, run_report


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m optimove_netmera.sync")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="print the report of a sync run (counts only)")
    r.add_argument("--run", type=int, help="sync run id (default: the latest)")
    r.add_argument("--last", type=int, default=1, help="print the last N runs, oldest first")
    r.add_argument("--url", help=f"state database URL (default: ${STATE_DB_ENV} or the SQLite default)")
    a = p.parse_args(argv)
    engine = get_engine(a.url or os.environ.get(STATE_DB_ENV))
    if a.run is not None:
        reports = [run_report(engine, a.run)]
    else:
        latest = run_report(engine)
        first = latest["sync_run_id"] - a.last + 1 if latest else 0
        reports = [run_report(engine, i) for i in range(max(first, 1), latest["sync_run_id"] + 1)] if latest else []
    reports = [r for r in reports if r is not None]
    if not reports:
        print("no sync run found", file=sys.stderr)
        return 1
    print("\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
