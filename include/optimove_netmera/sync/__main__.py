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
    r.add_argument("--url", help=f"state database URL (default: ${STATE_DB_ENV} or the SQLite default)")
    a = p.parse_args(argv)
    report = run_report(get_engine(a.url or os.environ.get(STATE_DB_ENV)), a.run)
    if report is None:
        print("no sync run found", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
