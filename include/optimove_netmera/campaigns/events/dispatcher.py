"""Dispatch off the request path: a background thread that acts on stored events as they arrive.

The event endpoint stores an event (13, 4, 3) under its dedup key, answers 200 and hands the row's id to
an :class:`EventDispatcher`; its thread calls the dispatch function (:func:`~.dispatch.dispatch_event`) in
arrival order. A dispatch that fails transiently (the row stays ``received``) is tried again after
``retry_delays`` (0.5, 1, 2, 4, 8 s), then left to the sweep. The queue is bounded: when it is full,
:meth:`EventDispatcher.submit` returns False at once and the row waits for the sweep (never lost: it is
stored). Given ``dispatch_many`` (:func:`~.dispatch.dispatch_events`), the thread takes everything queued up to
``max_batch`` (32) at once and dispatches it in one call, which creates the 13s' runs together. Repeating a
dispatch is harmless (deterministic run ids, "insert unless exists"), so the same
event submitted twice, by two processes, or by the dispatcher and a sweep, still makes one run.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from optimove_netmera.campaigns.events.dispatch import DispatchResult
from optimove_netmera.store import EventStatus

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 10_000
DEFAULT_MAX_BATCH = 32
DEFAULT_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


class EventDispatcher:
    """One thread dispatching event ids in arrival order, with retries; ``submit`` never blocks."""

    def __init__(
        self,
        dispatch: Callable[[int], DispatchResult],
        *,
        dispatch_many: Callable[[list[int]], Sequence[DispatchResult]] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        name: str = "optimove-event-dispatcher",
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._dispatch = dispatch
        self._dispatch_many = dispatch_many
        self._max_batch = max_batch
        self._queue: queue.Queue[int] = queue.Queue(maxsize=max_queue)
        self._retries: list[tuple[float, int, int]] = []  # (due, event id, attempts so far): the thread's own
        self._held: set[int] = set()  # queued, waiting for a retry or being dispatched
        self._lock = threading.Lock()
        self._delays = tuple(float(d) for d in retry_delays)
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.dispatched = 0  # events this dispatcher moved out of ``received`` (dispatched or failed)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def backlog(self) -> int:
        """Events queued, waiting for a retry or being dispatched."""
        with self._lock:
            return len(self._held)

    def holds(self, event_id: int) -> bool:
        """Whether this dispatcher already has ``event_id`` (a sweep need not submit it again)."""
        with self._lock:
            return int(event_id) in self._held

    def start(self) -> None:
        """Start the thread (again after :meth:`stop`); a no-op while it runs."""
        with self._lock:
            if self.running:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, event_id: int) -> bool:
        """Queue ``event_id`` (starting the thread if needed); False if the queue is full or it is stopping."""
        event_id = int(event_id)
        if self._stopping.is_set():
            return False
        self.start()
        with self._lock:
            if event_id in self._held:
                return True
            try:
                self._queue.put_nowait(event_id)
            except queue.Full:
                return False
            self._held.add(event_id)
        return True

    def stop(self, timeout: float = 10.0) -> int:
        """Dispatch what is queued (retries waiting are left to the sweep), within ``timeout`` s; return the rest."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        left = self.backlog()
        if left:
            log.warning("event dispatcher stopped with %d event(s) not dispatched: the sweep will pick them up", left)
        return left

    # ------------------------------------------------------------------------------------------
    # the thread
    # ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._stopping.is_set() and self._queue.empty():
                with self._lock:
                    self._held.difference_update(event_id for _, event_id, _ in self._retries)
                    self._retries.clear()
                return
            wait = 0.2
            if self._retries:
                wait = min(wait, max(0.0, self._retries[0][0] - time.monotonic()))
            batch: list[tuple[int, int]] = []  # (event id, attempts so far)
            with contextlib.suppress(queue.Empty):
                batch.append((self._queue.get(timeout=wait), 0))
            while batch and len(batch) < self._max_batch:  # whatever queued up meanwhile goes along
                try:
                    batch.append((self._queue.get_nowait(), 0))
                except queue.Empty:
                    break
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now and not self._stopping.is_set():
                _, event_id, attempts = heapq.heappop(self._retries)
                batch.append((event_id, attempts))
            for start in range(0, len(batch), self._max_batch):
                self._handle_many(batch[start : start + self._max_batch])

    def _handle_many(self, batch: list[tuple[int, int]]) -> None:
        if self._dispatch_many is None or len(batch) == 1:
            for event_id, attempts in batch:
                self._handle(event_id, attempts)
            return
        try:
            results = list(self._dispatch_many([event_id for event_id, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} dispatch results for {len(batch)} events")
        except Exception as exc:  # the state database: the rows are stored, so try again like any transient failure
            log.error("dispatch of %d Optimove events failed: %s", len(batch), type(exc).__name__)
            results = [DispatchResult(i, EventStatus.RECEIVED.value, error=type(exc).__name__) for i, _ in batch]
        for (event_id, attempts), result in zip(batch, results, strict=True):
            self._settle(event_id, attempts, result)

    def _handle(self, event_id: int, attempts: int) -> None:
        try:
            result = self._dispatch(event_id)
        except Exception as exc:  # the state database: the row is stored, so try again like any transient failure
            log.error("dispatch of Optimove event %s failed: %s", event_id, type(exc).__name__)
            result = DispatchResult(event_id, EventStatus.RECEIVED.value, error=type(exc).__name__)
        self._settle(event_id, attempts, result)

    def _settle(self, event_id: int, attempts: int, result: DispatchResult) -> None:
        if result.status == EventStatus.RECEIVED.value and result.error:
            if attempts < len(self._delays) and not self._stopping.is_set():
                heapq.heappush(self._retries, (time.monotonic() + self._delays[attempts], event_id, attempts + 1))
                return
            log.warning(
                "Optimove event %s not dispatched after %d attempt(s): left to the re-dispatch sweep",
                event_id,
                attempts + 1,
            )
        elif result.status != EventStatus.RECEIVED.value:
            self.dispatched += 1
        with self._lock:
            self._held.discard(event_id)
