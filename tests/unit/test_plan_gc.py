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


def test_a_callers_own_freeze_is_left_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan never unfreezes a heap it did not freeze. (Not by comparing freeze counts: frozen objects that die
    meanwhile, e.g. in another test's leftover thread, leave the permanent generation and lower the count.)"""
    gc.freeze()
    try:
        unfrozen: list[bool] = []
        monkeypatch.setattr(gc, "unfreeze", lambda: unfrozen.append(True))
        with _fewer_gc_passes():
            pass
        assert unfrozen == []
        assert gc.get_freeze_count() > 0
    finally:
        monkeypatch.undo()
        gc.unfreeze()
