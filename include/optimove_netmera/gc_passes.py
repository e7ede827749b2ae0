"""Fewer garbage-collector passes while a bulk loop makes millions of short-lived objects."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["fewer_gc_passes"]

_lock = threading.Lock()
_depth = 0  # blocks open now, nested or in other threads
_restore: tuple[tuple[int, int, int], bool] | None = None  # the thresholds before; whether to unfreeze at the end


@contextmanager
def fewer_gc_passes(threshold: int = 50_000) -> Iterator[None]:
    """Freeze the objects alive now (``gc.freeze``) and collect the youngest generation every ``threshold``
    allocations instead of every 700, for the block.

    A task process holds a few hundred thousand long-lived objects (Airflow, SQLAlchemy, pandas), and every full
    pass of the collector walks them all; a bulk loop (the sync's plan chunks, staging's recipient pages) triggers
    such a pass every few thousand objects it keeps alive for a while. Frozen, they are skipped.

    Measured: staging a 300k-recipient campaign took 7.7 s with the collector as it is, 5.3-6.3 s frozen, and
    5.1-5.2 s with this tuning; the in-memory plan this streamed one replaced went from 10.4 s to 8.7 s at 1M.

    Blocks nest and may run in several threads: the first one in sets the tuning, the last one out restores the
    thresholds and unfreezes, unless the process had frozen objects before (Airflow freezes before it forks
    workers, so that their collections do not copy the parent's pages): that freeze stays.
    """
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = (gc.get_threshold(), gc.get_freeze_count() == 0)
            gc.set_threshold(threshold, 20, 100)
        gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore is not None:
                thresholds, unfreeze = _restore
                gc.set_threshold(*thresholds)
                if unfreeze:
                    gc.unfreeze()
                _restore = None
