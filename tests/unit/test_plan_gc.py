"""The plan's garbage-collector tuning is undone afterwards, even when the plan fails."""

from __future__ import annotations

import gc

import pytest
from optimove_netmera.sync.plan import _fewer_gc_passes


def test_gc_settings_are_restored_after_success_and_failure() -> None:
    gc.unfreeze()  # start from an unfrozen heap (an in-process API server app freezes it at start)
    before = gc.get_threshold()
    with _fewer_gc_passes(threshold=12_345):
        assert gc.get_threshold()[0] == 12_345 and gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), _fewer_gc_passes():
        raise RuntimeError("plan failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_left_in_place() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with _fewer_gc_passes():
            pass
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()
