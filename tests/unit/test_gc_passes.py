"""``fewer_gc_passes``: the heap alive at entry is frozen and the youngest generation collected less often for the
block; the last block out restores both, even when it fails, and never unfreezes a freeze made before it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from optimove_netmera.gc_passes import fewer_gc_passes


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()  # start from an unfrozen heap (an in-process API server app freezes it at start)
    yield
    gc.unfreeze()


def test_the_heap_is_frozen_and_everything_restored_after_success_and_failure() -> None:
    before = gc.get_threshold()
    alive = len(gc.get_objects())  # every tracked object (frozen ones are no longer listed)
    with fewer_gc_passes(threshold=12_345):
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() >= 0.9 * alive  # (objects that die meanwhile leave the count)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), fewer_gc_passes():
        raise RuntimeError("plan failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_nested_and_concurrent_blocks_restore_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with fewer_gc_passes(threshold=23_456):
            entered.set()
            release.wait(60)

    thread = threading.Thread(target=other)
    with fewer_gc_passes(threshold=12_345):
        thread.start()
        assert entered.wait(60)
        with fewer_gc_passes():
            pass
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == 12_345  # the first block in set the tuning
    assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == 12_345  # the other thread's block is still open
    release.set()
    thread.join(60)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_left_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never unfreezes a heap it did not freeze. (Not by comparing freeze counts: frozen objects that die meanwhile,
    e.g. in another test's leftover thread, leave the permanent generation and lower the count.)"""
    gc.freeze()  # as Airflow's executors do before they fork
    unfrozen: list[bool] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: unfrozen.append(True))
    with fewer_gc_passes():
        pass
    assert unfrozen == []
    monkeypatch.undo()
    assert gc.get_freeze_count() > 0
