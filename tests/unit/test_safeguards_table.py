"""The safeguard table of ``scripts/safeguards.py`` still fits the code: each edit matches exactly once.

``make safeguards`` refuses an edit that does not match, but it is not part of ``make test``; this keeps a refactor
from silently retiring a safeguard (as renaming a variable in the guarded line would).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_safeguard_edit_matches_the_code_exactly_once() -> None:
    spec = importlib.util.spec_from_file_location("safeguards_table", ROOT / "scripts" / "safeguards.py")
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = table  # dataclasses look their module up while the file runs
    spec.loader.exec_module(table)
    counts = {
        g.name: (ROOT / "include" / "optimove_netmera" / g.path).read_text(encoding="utf-8").count(g.find)
        for g in table.SAFEGUARDS
    }
    assert counts and {name: n for name, n in counts.items() if n != 1} == {}
    for g in table.SAFEGUARDS:  # and each names tests that exist
        for node in g.tests:
            path, _, name = node.partition("::")
            assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), node
